"""A test-only shared script directory: the same environment as shared_migrations/env.py."""

from ppp_env.shared.env import run_migrations

run_migrations()
