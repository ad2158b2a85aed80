"""A test-only tenant script directory: the same runner as migrations/env.py."""

import sqlalchemy as sa

from ppp_env.fleet.env import run_migrations

metadata = sa.MetaData()
sa.Table(
    "items",
    metadata,
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("price", sa.Integer),
    sa.Column("colour", sa.Text),  # not in any revision: autogenerate must add it
)
sa.Table("runs", metadata, sa.Column("n", sa.Integer))

run_migrations(target_metadata=metadata)
