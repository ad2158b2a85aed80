"""The realistic tenant chain's environment: the same runner as migrations/env.py."""

from ppp_env.fleet.env import run_migrations

run_migrations(target_metadata=None)
