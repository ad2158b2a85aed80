"""Helpers and the ``veneer_ready`` fixture shared by the veneer's test modules.

Registered as a pytest plugin by ``tests/conftest.py`` (``pytest_plugins``): test modules use
the fixture by name and import only the helper functions from here.

Tenant data lives on the shards; these helpers create it directly as ``{db}_admin`` (the
tenant migrations runner does it in real life). Every module that uses ``veneer_ready``
leaves the veneer at head with the example's three tenants registered, and drops on the
shards only the schemas it created itself.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.config import Config

from ppp_env import veneer
from ppp_env.db import connection
from ppp_env.identifiers import quote_ident
from ppp_env.settings import Instance, Settings
from ppp_env.veneer import catalog
from ppp_env.veneer import env as veneer_env

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ("bluth_co", "cyberdyne", "initech")


def alembic_config(settings: Settings | None = None, script_location: Path | None = None) -> Config:
    cfg = veneer_env.veneer_config(settings, ROOT / "alembic.ini")
    if script_location is not None:
        cfg.set_section_option("veneer", "script_location", str(script_location))
    return cfg


def shard_sql(inst: Instance, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run SQL on a shard as its admin role (autocommit); rows if it returns any."""
    with connection(inst, "admin", autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def schema_on_shard(inst: Instance, schema: str) -> bool:
    return bool(shard_sql(inst, "SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)))


def make_tenant_data(inst: Instance, schema: str, *, books: bool = False) -> None:
    """The example's tenant schema on its shard: authors (+ books), Ernest Hemingway."""
    q = quote_ident(schema)
    sql = (
        f"CREATE SCHEMA {q};"
        f"CREATE TABLE {q}.authors (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
        "first_name text NOT NULL, last_name text NOT NULL);"
        f"INSERT INTO {q}.authors (first_name, last_name) VALUES "
        "('Ernest', 'Hemingway'), ('Virginia', 'Woolf'), ('Toni', 'Morrison');"
    )
    if books:
        sql += (
            f"CREATE TABLE {q}.books (id serial PRIMARY KEY, "
            f"author_id uuid NOT NULL REFERENCES {q}.authors (id), title text NOT NULL);"
            f"INSERT INTO {q}.books (author_id, title) "
            f"SELECT id, 'The Old Man and the Sea' FROM {q}.authors WHERE first_name = 'Ernest';"
        )
    shard_sql(inst, sql)


def drop_tenant_data(inst: Instance, schema: str) -> None:
    shard_sql(inst, f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")


def app_conn(settings: Settings, autocommit: bool = True) -> Any:
    """psycopg2 connection to the veneer as veneer_app (close it yourself)."""
    from ppp_env.db import connect

    return connect(settings.veneer, "app", autocommit=autocommit)


def register(settings: Settings, schema: str, shard: str) -> None:
    with catalog.admin_connection(settings) as conn:
        catalog.register_tenant(conn, schema, shard)


def unregister(settings: Settings, schema: str) -> None:
    with catalog.admin_connection(settings) as conn:
        catalog.unregister_tenant(conn, schema)


def copy_script_dir(tmp: Path) -> Path:
    """A private copy of veneer_migrations (so tests never write into the repository's)."""
    dest = tmp / "veneer_migrations"
    shutil.copytree(ROOT / "veneer_migrations", dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.fixture(scope="module")
def veneer_ready(topology: Any) -> Iterator[Settings]:
    """The veneer at head, the example tenants' data on their shards, all three wired."""
    settings: Settings = topology.settings
    created: list[str] = []
    for name in EXAMPLE:
        inst = settings.shards[name]
        if not schema_on_shard(inst, name):
            make_tenant_data(inst, name)
            created.append(name)
    veneer_env.upgrade(settings, "head")
    report = veneer.refresh(settings, list(EXAMPLE))
    assert report.ok, report.errors
    try:
        yield settings
    finally:
        veneer_env.upgrade(settings, "head")
        for name in created:
            drop_tenant_data(settings.shards[name], name)
