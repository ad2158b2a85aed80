# PPP, the PostgreSQL Partition Proxy: the example's targets, plus test, lint and demo.
# Every target that needs Python depends on the virtual environment being installed
# (a stamp file), so `make demo` or `make test` work on a fresh clone.

VENV ?= .venv
PYTHON ?= python3
PYTEST_ARGS ?=
LOWEST_PYTEST_ARGS ?=
# Pins of a working environment: every install here and in CI uses them (`pip -c`).
CONSTRAINTS ?= constraints.txt
# From the environment (.ci/run sets it): `make test` then also runs test-lowest and
# scaffold-check. Not passed on to the commands make runs (the suite runs `make -n test`).
CI_CHECKS ?=
unexport CI_CHECKS
# The lowest versions pyproject.toml declares, for `make test-lowest`.
VENV_LOWEST ?= .venv-lowest
LOWEST := alembic==1.13.0 sqlalchemy==2.0.0 psycopg2-binary==2.9.5 click==8.2.0 \
	rich==13.0.0 python-dotenv==1.0.0
LOWEST_TESTS := tests/test_migrations.py tests/test_runner_paths.py \
	tests/test_live_migrations.py tests/test_shared.py tests/test_onboarding.py \
	tests/test_alembic_adapter.py tests/test_fleet_rendering.py tests/test_library_logging.py
# The container stage (`make test-docker`): the tests of the servers, the fleet, the veneer
# and the lifecycle on containers of PPP_POSTGRES_IMAGE (testcontainers; the veneer's image:
# PPP_TEST_VENEER_IMAGE). `make test-docker-mixed` runs the fleet and the moves with the
# veneer on PPP_TEST_VENEER_IMAGE and the shards on PPP_POSTGRES_IMAGE.
DOCKER_TESTS := tests/test_provision.py tests/test_migrations.py tests/test_runner_paths.py \
	tests/test_shared.py tests/test_veneer.py tests/test_veneer_refresh.py \
	tests/test_onboarding.py tests/test_lifecycle.py tests/test_move.py tests/test_clients.py
MIXED_TESTS := tests/test_migrations.py tests/test_runner_paths.py tests/test_move.py
DIST ?= build/dist
TEMPLATE := ppp_env/templates/project

BIN := $(VENV)/bin
PPP := $(BIN)/ppp
STAMP := $(VENV)/.ppp-installed

.DEFAULT_GOAL := help
.PHONY: help venv install start-containers stop-containers initialize-databases \
	teardown-databases migrations psql-veneer psql-bluth-co psql-cyberdyne psql-initech \
	show-logs-veneer show-logs-bluth-co show-logs-cyberdyne show-logs-initech \
	lint test test-lowest test-matrix test-docker test-docker-mixed docs wheel scaffold-check ci templates clean \
	bench-smoke

##@ General
help: ## Show this list of targets (the default)
	@echo "Makefile for PPP, the PostgreSQL Partition Proxy"
	@echo
	@echo "Usage: make <target>   (variables: VENV=$(VENV) PYTHON=$(PYTHON) PYTEST_ARGS=... CONSTRAINTS=$(CONSTRAINTS))"
	@awk 'BEGIN {FS = ":.*## "} \
		/^##@ / {printf "\n%s:\n", substr($$0, 5)} \
		/^[a-zA-Z0-9_-]+:.*## / {printf "   make %-24s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: $(STAMP) ## Create the virtual environment (VENV, default .venv) with PPP installed
install: $(STAMP) ## Same as venv: PPP (editable) with its test, dev and async extras, pinned by constraints.txt

# Every pip that make runs installs the pinned versions (PIP_CONSTRAINT is pip's `-c`);
# test-lowest clears it for the lowest versions.
export PIP_CONSTRAINT := $(abspath $(CONSTRAINTS))

# The test extra runs the suite; the dev extra (ruff, mypy, stubs) and the async extra (the
# asyncio router's drivers and the example web application, which the suite tests) come in
# the same venv.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet -e '.[test,dev,async]'
	touch $@

demo: $(STAMP) ## The example end to end: servers up, init, migrate, then `ppp demo`
	$(PPP) local up
	$(PPP) init
	$(PPP) migrate
	$(PPP) demo

##@ Servers and databases (Docker Compose when an engine answers, local servers otherwise)
start-containers: $(STAMP) ## Start the veneer and the shards (`ppp local up`), settings to .env
	$(PPP) local up

stop-containers: $(STAMP) ## Stop the veneer and the shards (`ppp local down`), data kept
	$(PPP) local down

initialize-databases: $(STAMP) ## Create databases, {db}_admin/{db}_app roles and grants (`ppp init`)
	$(PPP) init

teardown-databases: $(STAMP) ## Drop what initialize-databases made (`ppp teardown --yes`)
	$(PPP) teardown --yes

migrations: $(STAMP) ## Run the veneer's and every tenant's migrations (`ppp migrate`)
	$(PPP) migrate

##@ Development databases
psql-veneer: $(STAMP) ## psql on the veneer as veneer_app
	$(PPP) psql veneer

psql-bluth-co: $(STAMP) ## psql on shard bluth_co as bluth_co_app, search_path bluth_co
	$(PPP) psql bluth_co

psql-cyberdyne: $(STAMP) ## psql on shard cyberdyne as cyberdyne_app, search_path cyberdyne
	$(PPP) psql cyberdyne

psql-initech: $(STAMP) ## psql on shard initech as initech_app, search_path initech
	$(PPP) psql initech

show-logs-veneer: $(STAMP) ## Show every statement the veneer ran since it started
	$(PPP) logs veneer

show-logs-bluth-co: $(STAMP) ## Show every statement shard bluth_co ran since it started
	$(PPP) logs bluth_co

show-logs-cyberdyne: $(STAMP) ## Show every statement shard cyberdyne ran since it started
	$(PPP) logs cyberdyne

show-logs-initech: $(STAMP) ## Show every statement shard initech ran since it started
	$(PPP) logs initech

##@ Quality
lint: $(STAMP) ## ruff check, ruff format --check and mypy (strict on ppp_env)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# `python -m pytest` puts the project root on sys.path (tests import tests.conftest).
# pytest-randomly shuffles the tests; the header says `Using --randomly-seed=N`, and
# `make test PYTEST_ARGS=--randomly-seed=N` replays that order
# (`PYTEST_ARGS="-p no:randomly"` runs them in file order).
# With CI_CHECKS set (.ci/run sets it), test-lowest, test-matrix, scaffold-check and
# bench-smoke follow.
test: lint ## lint, then pytest (random order, seed printed) against real PostgreSQL servers
	$(BIN)/python -m pytest $(PYTEST_ARGS)
ifneq ($(CI_CHECKS),)
	$(MAKE) --no-print-directory test-lowest test-matrix scaffold-check bench-smoke \
		VENV=$(VENV) PYTHON=$(PYTHON)
endif

# The fleet tests on the lowest versions of the dependencies pyproject.toml allows: the
# lower bounds there are what this target proves.
test-lowest: $(STAMP) ## The fleet tests in VENV_LOWEST, on the lowest declared dependency versions
	test -x $(VENV_LOWEST)/bin/python || $(PYTHON) -m venv $(VENV_LOWEST)
	$(VENV_LOWEST)/bin/python -m pip install --quiet --upgrade pip
	PIP_CONSTRAINT= $(VENV_LOWEST)/bin/python -m pip install --quiet $(LOWEST)
	PIP_CONSTRAINT= $(VENV_LOWEST)/bin/python -m pip install --quiet --no-deps -e .
	$(VENV_LOWEST)/bin/python -m pip install --quiet pytest pyyaml
	$(VENV_LOWEST)/bin/python -m pip check
	$(VENV_LOWEST)/bin/python -m pip freeze --exclude-editable | grep -iE \
		'^(alembic|sqlalchemy|psycopg2-binary|click|rich|python-dotenv)=='
	$(VENV_LOWEST)/bin/python -m pytest -p no:randomly $(LOWEST_TESTS) $(LOWEST_PYTEST_ARGS)

# Alembic 1.13 ... the newest minor pyproject.toml allows, each with SQLAlchemy 2.0 and 2.1:
# the adapter's contract tests on every combination, the fleet tests on the oldest and newest
# (MODE=full: everything everywhere). Venvs are kept in MATRIX_DIR and reused.
MATRIX_DIR ?= $(HOME)/.cache/ppp-matrix
test-matrix: $(STAMP) ## The contract and fleet tests on every Alembic minor x SQLAlchemy 2.0/2.1
	MATRIX_DIR=$(MATRIX_DIR) PYTHON=$(PYTHON) bash ci/alembic_matrix.sh

test-docker: $(STAMP) ## The servers, fleet, veneer and lifecycle tests on containers (a Docker engine)
	PPP_TEST_BACKEND=docker $(BIN)/python -m pytest $(DOCKER_TESTS) $(PYTEST_ARGS)

test-docker-mixed: $(STAMP) ## The fleet and move tests, veneer on PPP_TEST_VENEER_IMAGE
	test -n "$$PPP_TEST_VENEER_IMAGE" || { echo "set PPP_TEST_VENEER_IMAGE"; exit 2; }
	PPP_TEST_BACKEND=docker $(BIN)/python -m pytest $(MIXED_TESTS) $(PYTEST_ARGS)

docs: $(STAMP) ## Regenerate docs/cli.md, the command reference, from the CLI itself
	$(BIN)/python -m ppp_env.cli.reference > docs/cli.md

wheel: $(STAMP) ## Build the wheel into DIST (default build/dist), templates included
	rm -rf $(DIST) build
	$(BIN)/python -m pip wheel --quiet --no-deps -w $(DIST) .
	$(BIN)/python -m zipfile -l $(DIST)/*.whl > $(DIST)/contents.txt
	for f in py.typed templates/project/alembic.ini templates/project/.env.example \
		templates/project/veneer_migrations/versions/fac2511dbcce_catalog.py \
		report/static/page.html report/static/report.css report/static/report.js; do \
		grep -q "ppp_env/$$f " $(DIST)/contents.txt || { echo "ppp_env/$$f missing from the wheel"; exit 1; }; \
	done
	rm $(DIST)/contents.txt

scaffold-check: wheel ## The wheel in a fresh venv elsewhere: ppp new, local up, init, migrate...
	bash ci/scaffold_check.sh $(DIST) $(CONSTRAINTS)

bench-smoke: $(STAMP) ## The scale benchmarks with a small N: they run (their figures come from real runs)
	$(BIN)/python benchmarks/scale.py --tenants 30
	$(BIN)/python benchmarks/veneer_limit.py --tenants 6 --tables 5 --workdir $${TMPDIR:-/tmp}
	$(BIN)/python benchmarks/migrate_fleet.py --tenants 9 --repeat 1 --naive-sample 1 --jobs-sweep 2

ci: $(STAMP) ## What .ci/run runs after installing: test, then test-lowest, test-matrix, scaffold-check, bench-smoke
	CI_CHECKS=1 $(MAKE) --no-print-directory test

templates: $(STAMP) ## Copy this repository's files into the `ppp new` templates (keep them identical)
	cd $(TEMPLATE) && find . -type f ! -name .gitignore ! -path '*/__pycache__/*' \
		-exec sh -c 'cp "../../../$$1" "$$1"' _ {} \;
	rm -f $(TEMPLATE)/veneer_migrations/versions/*.py
	for f in veneer_migrations/versions/*.py; do \
		basename "$$f" | grep -qE '^t[0-9a-f]{11}_' || cp "$$f" $(TEMPLATE)/veneer_migrations/versions/; \
	done

clean: ## Remove the venv and caches (servers, their data and .env stay)
	rm -rf $(VENV) $(VENV_LOWEST) .pytest_cache .mypy_cache .ruff_cache build $(DIST) *.egg-info
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
