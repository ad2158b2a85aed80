#!/usr/bin/env bash
# The fleet, veneer and shared tests on every Alembic minor from the lowest pyproject.toml
# declares to the newest published, each with SQLAlchemy 2.0 and 2.1 (the newest patch of
# each), one virtual environment per combination (kept in MATRIX_DIR and reused).
#
#   ci/alembic_matrix.sh                 # MODE=auto: the adapter's contract tests on every
#                                        # combination, TESTS on the oldest and newest Alembic
#   MODE=full ci/alembic_matrix.sh       # TESTS on every combination
#   MODE=contract ci/alembic_matrix.sh   # the contract tests only, every combination
#   ALEMBIC="1.13 1.20" SQLALCHEMY="2.1" ci/alembic_matrix.sh   # a chosen part
#
# Every other dependency is pinned by constraints.txt. Each combination's pytest run is
# bounded (RUN_TIMEOUT seconds); the script ends with a table (combination, versions, what
# ran, result, seconds) and fails when any combination failed. Tests start their own
# PostgreSQL servers (the suite's default `local` backend), so runs go one after another.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
MATRIX_DIR="${MATRIX_DIR:-.venv-matrix}"
MODE="${MODE:-auto}"
LOWEST_ALEMBIC="${LOWEST_ALEMBIC:-1.13}"
SQLALCHEMY="${SQLALCHEMY:-2.0 2.1}"
RUN_TIMEOUT="${RUN_TIMEOUT:-600}"
CONTRACT_TESTS="tests/test_alembic_adapter.py tests/test_fleet_rendering.py tests/test_alembic_integration.py"
TESTS="${TESTS:-tests/test_migrations.py tests/test_runner_paths.py tests/test_shared.py \
tests/test_veneer.py tests/test_onboarding.py tests/test_alembic_adapter.py}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
unset PIP_CONSTRAINT  # the Makefile's pins: this script pins everything but the two itself

say() { printf '\n==== %s ====\n' "$*"; }

# The published minors of a package from $1 on ("1.13 1.14 ..."), newest last.
minors_from() {
    local package="$1" lowest="$2"
    "$PYTHON" -m pip index versions "$package" 2>/dev/null |
        sed -n 's/^Available versions: //p' | tr ',' '\n' | tr -d ' ' |
        grep -E '^[0-9]+\.[0-9]+\.[0-9]+$' | cut -d. -f1,2 | sort -uV |
        awk -v low="$lowest" 'BEGIN { split(low, l, ".") }
            { split($0, v, "."); if (v[1] > l[1] || (v[1] == l[1] && v[2] >= l[2])) print }' |
        tr '\n' ' '
}

# The newest minor pyproject.toml allows (its `alembic>=...,<X.Y` bound): what this matrix
# proves; a newer release is tried by raising the bound after a green run (ALEMBIC=... here).
below_bound() {
    local bound
    bound="$(sed -n 's/.*"alembic>=[0-9.]*,<\([0-9.]*\)".*/\1/p' pyproject.toml)"
    if [ -z "$bound" ]; then cat; return; fi
    tr ' ' '\n' | awk -v b="$bound" 'BEGIN { split(b, u, ".") } NF {
        split($0, v, "."); if (v[1] < u[1] || (v[1] == u[1] && v[2] < u[2])) print }' | tr '\n' ' '
}

if [ -z "${ALEMBIC:-}" ]; then
    ALEMBIC="$(minors_from alembic "$LOWEST_ALEMBIC" | below_bound)"
    [ -n "$ALEMBIC" ] || { echo "error: cannot list Alembic's versions (pip index)" >&2; exit 1; }
fi
read -r -a alembic_minors <<<"$ALEMBIC"
oldest="${alembic_minors[0]}"
newest="${alembic_minors[${#alembic_minors[@]}-1]}"

mkdir -p "$MATRIX_DIR"
pins="$MATRIX_DIR/constraints.txt"
grep -viE '^(alembic|sqlalchemy)==' constraints.txt >"$pins"

venv_for() {
    local alembic="$1" sqlalchemy="$2" dir="$MATRIX_DIR/alembic-$1-sqlalchemy-$2"
    if [ ! -x "$dir/bin/python" ] || [ ! -f "$dir/.installed" ]; then
        rm -rf "$dir"
        "$PYTHON" -m venv "$dir"
        "$dir/bin/python" -m pip install --quiet -c "$pins" -e '.[test]' \
            "alembic==$alembic.*" "sqlalchemy==$sqlalchemy.*"
        touch "$dir/.installed"
    else
        # A cached venv (MATRIX_DIR may outlive the checkout): PPP from this checkout.
        "$dir/bin/python" -m pip install --quiet --no-deps -e . >/dev/null
    fi
    echo "$dir"
}

results=()
failed=0
for alembic in "${alembic_minors[@]}"; do
    for sqlalchemy in $SQLALCHEMY; do
        tests="$CONTRACT_TESTS"
        what="contract"
        if [ "$MODE" = full ] || { [ "$MODE" = auto ] &&
            { [ "$alembic" = "$oldest" ] || [ "$alembic" = "$newest" ]; }; }; then
            tests="$TESTS $CONTRACT_TESTS"
            what="full"
        fi
        say "Alembic $alembic, SQLAlchemy $sqlalchemy: $what"
        started=$SECONDS
        if ! dir="$(venv_for "$alembic" "$sqlalchemy")"; then
            results+=("$alembic/$sqlalchemy install-failed - $((SECONDS - started))")
            failed=1
            continue
        fi
        versions="$("$dir/bin/python" -c \
            'import alembic, sqlalchemy; print(alembic.__version__ + "/" + sqlalchemy.__version__)')"
        # shellcheck disable=SC2086 # word splitting of the test list is wanted
        if timeout "$RUN_TIMEOUT" "$dir/bin/python" -m pytest -q -p no:randomly \
            -p no:cacheprovider $(printf '%s\n' $tests | sort -u); then
            outcome=passed
        else
            outcome=FAILED
            failed=1
        fi
        results+=("$alembic/$sqlalchemy $versions $what $outcome $((SECONDS - started))")
    done
done

say "summary (minors alembic/sqlalchemy, installed versions, tests, result, seconds)"
printf '%s\n' "${results[@]}" | column -t
exit "$failed"
