"""A test-only tenant script directory whose tables reference the shared_example objects."""

from ppp_env.fleet.env import run_migrations

run_migrations(target_metadata=None)
