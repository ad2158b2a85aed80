"""The naive baseline: Alembic's cookbook recipe "Rudimental Schema-Level Multi Tenancy for
PostgreSQL Databases", one ``alembic -x tenant=NAME upgrade head`` process per tenant.

It is the recipe's ``run_migrations_online()`` as the Alembic documentation gives it
(``SET search_path`` to the tenant, committed; ``connection.dialect.default_schema_name =
tenant``; Alembic's own version table, found in the tenant through the search path),
with two additions a real pipeline needs and that change nothing about its cost:

- the shard's URL comes from the environment variable ``NAIVE_DATABASE_URL`` (the
  benchmark knows which shard homes the tenant) instead of ``sqlalchemy.url`` in the ini,
  so no password is written to a file;
- the tenant's schema is created if missing (the recipe assumes it exists; PPP and the
  floor create it too).

The recipe's string formatting is kept as the documentation writes it; the benchmark's
tenant names are plain identifiers (t00000 ...).

Nothing of PPP is imported: this is what a team gets from the documentation alone.
Used by benchmarks/migrate_fleet.py with the revisions of benchmarks/fleet.
"""

import os

from alembic import context
from sqlalchemy import engine_from_config, pool, text

config = context.config
target_metadata = None


def run_migrations_online() -> None:
    section = config.get_section(config.config_ini_section, {})
    section["sqlalchemy.url"] = os.environ["NAIVE_DATABASE_URL"]
    connectable = engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)

    current_tenant = context.get_x_argument(as_dictionary=True).get("tenant")
    with connectable.connect() as connection:
        connection.execute(text('CREATE SCHEMA IF NOT EXISTS "%s"' % current_tenant))  # noqa: UP031
        # set search path on the connection, which ensures that
        # PostgreSQL will emit all CREATE / ALTER / DROP statements
        # in terms of this schema by default
        connection.execute(text('set search_path to "%s"' % current_tenant))  # noqa: UP031
        # in SQLAlchemy v2+ the search path change needs to be committed
        connection.commit()

        # make use of non-supported SQLAlchemy attribute to ensure
        # the dialect reflects tables in terms of the current tenant name
        connection.dialect.default_schema_name = current_tenant

        context.configure(connection=connection, target_metadata=target_metadata)

        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("the naive baseline runs online only")
run_migrations_online()
