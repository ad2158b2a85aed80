"""The realistic shard-wide shared chain: run once per shard database, as its admin role."""

from ppp_env.shared.env import run_migrations

run_migrations()
