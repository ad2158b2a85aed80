# PPP, the PostgreSQL Partition Proxy: the example's targets, plus test, lint and demo.
# Every target that needs Python depends on the virtual environment being installed
# (a stamp file), so `make demo` or `make test` work on a fresh clone.

VENV ?= .venv
PYTHON ?= python3
PYTEST_ARGS ?=

BIN := $(VENV)/bin
PPP := $(BIN)/ppp
STAMP := $(VENV)/.ppp-installed

.DEFAULT_GOAL := help
.PHONY: help venv install start-containers stop-containers initialize-databases \
	teardown-databases migrations psql-veneer psql-bluth-co psql-cyberdyne psql-initech \
	show-logs-veneer show-logs-bluth-co show-logs-cyberdyne show-logs-initech \
	lint test demo clean

##@ General
help: ## Show this list of targets (the default)
	@echo "Makefile for PPP, the PostgreSQL Partition Proxy"
	@echo
	@echo "Usage: make <target>   (variables: VENV=$(VENV) PYTHON=$(PYTHON) PYTEST_ARGS=...)"
	@awk 'BEGIN {FS = ":.*## "} \
		/^##@ / {printf "\n%s:\n", substr($$0, 5)} \
		/^[a-zA-Z0-9_-]+:.*## / {printf "   make %-24s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: $(STAMP) ## Create the virtual environment (VENV, default .venv) with PPP installed
install: $(STAMP) ## Same as venv: PPP (editable) and its test extra in the venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
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
test: lint ## lint, then pytest against real PostgreSQL servers
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean: ## Remove the venv and caches (servers, their data and .env stay)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
