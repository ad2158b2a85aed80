"""The veneer's Alembic environment: `alembic -n veneer upgrade head`.

Runs as veneer_admin on the veneer of the selected environment (PPP_ENV or -x env=NAME):
the catalog (schema ppp), one postgres_fdw server per shard with its user mappings
(reconciled with the settings on every run), and the tenant onboarding revisions.
The logic lives in ppp_env.veneer.env.
"""

from ppp_env.veneer.env import run_migrations

run_migrations()
