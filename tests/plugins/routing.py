"""Helpers and the ``tenants`` fixture shared by the router's test modules (sync and asyncio).

Registered as a pytest plugin by ``tests/conftest.py`` (``pytest_plugins``): test modules use
the fixture by name and import only the helper functions from here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from ppp_env.routing import isolation
from ppp_env.settings import Settings
from ppp_env.veneer.catalog import admin_connection
from tests.conftest import drop_schemas, register, shard_sql, unregister


def make_tenant(settings: Settings, schema: str, shard: str, note: str) -> None:
    """A tenant schema with one table and one row, as its shard's admin would create it."""
    shard_sql(
        settings,
        shard,
        f'CREATE SCHEMA "{schema}"; '
        f'CREATE TABLE "{schema}".items (id int PRIMARY KEY, note text NOT NULL); '
        f"INSERT INTO \"{schema}\".items VALUES (1, '{note}')",
    )


def catalog(settings: Settings, sql: str, **params: object) -> None:
    with admin_connection(settings) as conn:
        conn.execute(text(sql), params)


def notify(settings: Settings, schema: str) -> None:
    catalog(settings, "SELECT pg_notify('ppp_placement', :s)", s=schema)


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def move_by_hand(settings: Settings, schema: str, source: str, target: str) -> None:
    """What `ppp tenant move` does, by hand: copy, switch the catalog, retire the source."""
    rows = shard_sql(settings, source, f'SELECT id, note FROM "{schema}".items ORDER BY id')
    shard_sql(
        settings,
        target,
        f'CREATE SCHEMA "{schema}"; '
        f'CREATE TABLE "{schema}".items (id int PRIMARY KEY, note text NOT NULL)',
    )
    for row in rows:
        shard_sql(settings, target, f'INSERT INTO "{schema}".items VALUES (%s, %s)', row)
    catalog(settings, "UPDATE ppp.tenants SET shard = :t WHERE schema = :s", t=target, s=schema)
    shard_sql(settings, source, f'ALTER SCHEMA "{schema}" RENAME TO "ppp_moved_{schema}"')
    shard_sql(
        settings,
        source,
        f'REVOKE ALL ON ALL TABLES IN SCHEMA "ppp_moved_{schema}" FROM '
        f"{settings.shard(source).app_role}",
    )


@pytest.fixture
def tenants(veneer_head) -> Iterator[dict[str, str]]:
    """Three fresh tenants: two on bluth_co, one on cyberdyne, each note = its own name."""
    settings = veneer_head.settings
    tag = uuid.uuid4().hex[:6]
    made = {f"rt_{tag}_a": "bluth_co", f"rt_{tag}_b": "bluth_co", f"rt_{tag}_c": "cyberdyne"}
    for schema, shard in made.items():
        make_tenant(settings, schema, shard, schema)
    register(settings, made)
    yield made
    for schema, shard in made.items():
        isolation.disable(settings, schema, shard=shard)
    unregister(settings, made)
    drop_schemas(settings, made)
    for schema in made:  # a move copies the schema to another shard
        for shard in settings.shards:
            shard_sql(settings, shard, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            shard_sql(settings, shard, f'DROP SCHEMA IF EXISTS "ppp_moved_{schema}" CASCADE')
