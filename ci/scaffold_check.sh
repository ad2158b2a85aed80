#!/usr/bin/env bash
# The wheel as another project uses it: installed into a fresh virtual environment in an
# unrelated folder, `ppp new proj`, then servers, provisioning, a tenant, migrations and
# plain `alembic` in that project, with no file of this repository. The servers are
# stopped and their data deleted whatever happens (trap).
#
#   bash ci/scaffold_check.sh [DIST (default build/dist)] [CONSTRAINTS (default constraints.txt)]
#
# `make scaffold-check` builds the wheel first. As root, PostgreSQL runs as `postgres`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIST="$(cd "$ROOT" && cd "${1:-build/dist}" && pwd)"
CONSTRAINTS="$(cd "$ROOT" && readlink -f "${2:-constraints.txt}")"
PYTHON="${PYTHON:-python3}"

wheels=("$DIST"/*.whl)
if [ "${#wheels[@]}" -ne 1 ] || [ ! -f "${wheels[0]}" ]; then
    echo "error: expected exactly one wheel in $DIST (make wheel), found: ${wheels[*]}" >&2
    exit 1
fi

WORK="$(mktemp -d /tmp/ppp-scaffold-XXXXXX)"
chmod 755 "$WORK"  # the servers' folder lives here; as root they run as `postgres`
PROJECT="$WORK/proj"

step() { printf '\n---- %s\n' "$*"; }
cleanup() {
    local rc=$?
    if [ -f "$PROJECT/.env" ]; then
        step "ppp local down --purge"
        (cd "$PROJECT" && "$WORK/venv/bin/ppp" local down --purge) || rc=1
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "fresh venv in $WORK/venv, pip install $(basename "${wheels[0]}") -c $(basename "$CONSTRAINTS")"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install --quiet -c "$CONSTRAINTS" --upgrade pip
"$WORK/venv/bin/python" -m pip install --quiet -c "$CONSTRAINTS" "${wheels[0]}"

# Nothing of this checkout may leak in: no PYTHONPATH, no project or alembic settings.
unset PYTHONPATH PPP_ENV PPP_PROJECT_DIR ALEMBIC_CONFIG VIRTUAL_ENV
while IFS= read -r var; do
    case "$var" in PPP_PG_BINDIR) ;; PPP_*) unset "$var" ;; esac
done < <(compgen -e)
export PATH="$WORK/venv/bin:$PATH"
export PPP_LOCAL_DIR="$WORK/servers"
cd "$WORK"

where="$(python -c 'import ppp_env, sys; print(ppp_env.__file__)')"
case "$where" in
    "$WORK/venv/"*) echo "ppp_env imported from the wheel: $where" ;;
    *) echo "error: ppp_env imported from $where, not from the installed wheel" >&2; exit 1 ;;
esac
ppp --version

step "ppp new proj"
ppp new proj
cd "$PROJECT"
step "ppp local up --backend local"
ppp local up --backend local
step "ppp init"
ppp init
step "ppp tenant add acme --shard bluth_co"
ppp tenant add acme --shard bluth_co
step "ppp migrate --report"
ppp migrate --report "$WORK/run.html"
grep -q "PPP upgrade to head" "$WORK/run.html"  # the report's page, CSS and script are in the wheel
step "alembic upgrade head"
alembic upgrade head
step "alembic -n veneer current"
alembic -n veneer current | tee "$WORK/veneer-current.txt"
grep -q "$(basename veneer_migrations/versions/t*_acme.py | cut -d_ -f1)" "$WORK/veneer-current.txt"
step "ppp status"
ppp status
ppp status --json | python -c '
import json, sys
report = json.load(sys.stdin)
text = json.dumps(report)
assert "acme" in text and "0001" in text, text
'
step "the scaffolded project works"
