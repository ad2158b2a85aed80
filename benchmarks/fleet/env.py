"""The benchmark's tenant environment: the same PPP runner as migrations/env.py."""

from ppp_env.fleet.env import run_migrations

run_migrations()
