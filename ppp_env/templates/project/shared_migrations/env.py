"""Shared migrations: `alembic -n shared upgrade head`, once per shard database.

Objects every tenant of a shard database uses (a shared schema that tenant tables
reference, shared functions, extensions), applied as the shard's {db}_admin role, each
shard in one transaction, version table ppp.shared_version. The logic lives in
ppp_env.shared.env (see shared_migrations/README.md).
"""

from ppp_env.shared.env import run_migrations

run_migrations()
