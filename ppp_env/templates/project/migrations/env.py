"""Tenant migrations for every tenant on every shard; the logic lives in ppp_env.fleet.env."""

from migrations.models import metadata
from ppp_env.fleet.env import run_migrations

run_migrations(target_metadata=metadata)
