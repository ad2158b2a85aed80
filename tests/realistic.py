"""Helpers for tests/test_realistic_chain.py: the realistic chains, their config, the checks.

The chains live in tests/scripts/realistic/: ``tenant/`` (19 tenant revisions, 56 tables per
tenant at head: an enum type and a label added later, foreign keys into the shard-wide
``shared_rt.users``, triggers calling ``shared_rt.set_updated_at()``, a branch and its
merge, four revisions that read the database (a query, the Inspector's table names, an ORM
``Session.query``, ``Inspector.get_columns``), renderable data migrations, a column added,
a column dropped, a table renamed, two revisions with an effect outside the database that
the tests count) and ``shared/`` (the shard-wide chain: schema
``shared_rt``, its users, the trigger function, the app role's grants).
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config

from ppp_env import db
from ppp_env.fleet.options import RunOptions
from ppp_env.identifiers import quote_ident
from ppp_env.settings import Settings
from ppp_env.tenant_state import TenantState, read_states
from ppp_env.veneer.catalog import admin_connection, register_tenant, unregister_tenant
from tests.conftest import ROOT

SCRIPTS = ROOT / "tests" / "scripts" / "realistic"
TENANT_SCRIPTS = SCRIPTS / "tenant"
SHARED_SCRIPTS = SCRIPTS / "shared"
VENEER_SCRIPTS = ROOT / "veneer_migrations"

HEAD = "rc18"
#: ``downgrade -6`` from head lands on rc12 (rc18 ... rc13 undone).
STEPS_BACK, BACK = "-6", "rc12"
SHARED_REVISIONS = ("rcs01", "rcs02", "rcs03")
SHARED_SCHEMA = "shared_rt"
#: The revisions that read the database (they run online); each logs the default schema it
#: saw, but rc17.
READING_REVISIONS = ("rc10", "rc11", "rc16", "rc17")
#: The variable naming the file rc16 (online) and rc18 (rendered) append a line to.
EFFECTS_VARIABLE = "PPP_RC_EFFECTS"
CATALOG_TABLES = [f"catalog_{n}" for n in range(10)]
#: The label rc09 adds to the tenant enum type ``mood``.
NEW_MOOD = "ecstatic"


def tenant_names(settings: Settings, per_shard: int = 10) -> dict[str, str]:
    """``rc_<shard>_<nn>`` -> shard: ``per_shard`` test tenants on every shard."""
    return {f"rc_{shard[:3]}_{i:02d}": shard for shard in settings.shards for i in range(per_shard)}


def write_ini(directory: Path) -> Path:
    """An alembic.ini in ``directory`` (never the source tree): a copy of the realistic
    tenant chain (so what PPP keeps beside its env.py stays with the test), the shared chain,
    and the repository's veneer migrations."""
    tenant_scripts = directory / "tenant"
    shutil.copytree(TENANT_SCRIPTS, tenant_scripts, ignore=shutil.ignore_patterns("__pycache__"))

    def section(name: str, location: Path) -> str:
        return (
            f"[{name}]\nscript_location = {location}\nprepend_sys_path = {ROOT}\n"
            "path_separator = os\n"
        )

    ini = directory / "realistic.ini"
    ini.write_text(
        "\n".join(
            [
                section("alembic", tenant_scripts),
                section("shared", SHARED_SCRIPTS),
                section("veneer", VENEER_SCRIPTS),
            ]
        )
    )
    return ini


def tenant_config(ini: Path, tenants: Iterable[str], **options: Any) -> Config:
    """``alembic -c <ini>`` in-process, narrowed to ``tenants``, output captured."""
    cfg = Config(str(ini), ini_section="alembic", stdout=io.StringIO())
    cfg.attributes["ppp.options"] = RunOptions(output="quiet", tenants=sorted(tenants), **options)
    return cfg


def shared_config(ini: Path) -> Config:
    """``alembic -c <ini> -n shared`` in-process, output captured."""
    return Config(str(ini), ini_section="shared", stdout=io.StringIO())


# -- shards and the catalog ---------------------------------------------------------------------
def shard_rows(settings: Settings, shard: str, sql: str, params: Any = None) -> list[tuple]:
    with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def by_shard(tenants: Mapping[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for tenant, shard in sorted(tenants.items()):
        out.setdefault(shard, []).append(tenant)
    return out


def states(settings: Settings, tenants: Mapping[str, str]) -> dict[str, TenantState]:
    out: dict[str, TenantState] = {}
    for shard, schemas in by_shard(tenants).items():
        with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
            out.update(read_states(conn.cursor(), schemas))
    return out


def register(settings: Settings, tenants: Mapping[str, str]) -> None:
    with admin_connection(settings) as conn:
        for schema, shard in tenants.items():
            register_tenant(conn, schema, shard)


def cleanup(settings: Settings, ini: Path, tenants: Mapping[str, str]) -> None:
    """Remove everything the test made, whatever state it left: the tenants from the catalog
    and the veneer, their schemas on the shards, then the shared chain on every shard.

    Every step runs even when an earlier one failed; the first error is raised at the end.
    """
    errors: list[BaseException] = []

    def attempt(fn: Any, *args: Any) -> bool:
        try:
            fn(*args)
            return True
        except Exception as exc:
            errors.append(exc)
            return False

    def unregister_all() -> None:
        with admin_connection(settings) as conn:
            for schema in tenants:
                unregister_tenant(conn, schema)

    attempt(unregister_all)
    for shard, schemas in by_shard(tenants).items():
        attempt(
            shard_rows,
            settings,
            shard,
            "DROP SCHEMA IF EXISTS " + ", ".join(quote_ident(s) for s in schemas) + " CASCADE",
        )
    # The shared chain: its own downgrade first; if that cannot run (a failed test may have
    # left a shard half-way), drop its schema and its version rows directly.
    shared_errors = len(errors)
    downgraded = attempt(command.downgrade, shared_config(ini), "base")
    if downgraded:
        del errors[shared_errors:]
    for shard in settings.shards:
        if downgraded and not _shared_leftovers(settings, shard):
            continue
        attempt(drop_shared, settings, shard)
    if errors:
        raise errors[0]


def _shared_leftovers(settings: Settings, shard: str) -> bool:
    rows = shard_rows(
        settings, shard, "SELECT 1 FROM pg_namespace WHERE nspname = %s", (SHARED_SCHEMA,)
    )
    return bool(rows)


def drop_shared(settings: Settings, shard: str) -> None:
    """Drop ``shared_rt`` and this chain's rows from any version table in schema ppp."""
    shard_rows(settings, shard, f"DROP SCHEMA IF EXISTS {quote_ident(SHARED_SCHEMA)} CASCADE")
    tables = shard_rows(
        settings,
        shard,
        "SELECT c.relname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
        "WHERE c.relnamespace = to_regnamespace('ppp') AND c.relkind = 'r' "
        "AND a.attname = 'version_num'",
    )
    for (table,) in tables:
        shard_rows(
            settings,
            shard,
            f"DELETE FROM ppp.{quote_ident(table)} WHERE version_num = ANY(%s)",
            (list(SHARED_REVISIONS),),
        )


# -- the veneer checks --------------------------------------------------------------------------
#: Per table, its columns in order: (name, type, not null); an enum's type is its labels.
Columns = list[tuple[str, Any, bool]]

_COLUMNS_SQL = (
    "SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), "
    "a.attnotnull, CASE WHEN t.typtype = 'e' THEN ARRAY(SELECT e.enumlabel FROM pg_enum e "
    "WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder)::text[] END "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
    "JOIN pg_type t ON t.oid = a.atttypid "
    "WHERE n.nspname = ANY(%s) AND c.relkind = ANY(%s) AND c.relname <> 'alembic_version' "
    "ORDER BY n.nspname, c.relname, a.attnum"
)


def _columns(cur: Any, schemas: list[str], kinds: list[str]) -> dict[str, dict[str, Columns]]:
    cur.execute(_COLUMNS_SQL, (schemas, kinds))
    out: dict[str, dict[str, Columns]] = {s: {} for s in schemas}
    for schema, table, column, type_, notnull, labels in cur.fetchall():
        shown = ("enum", tuple(labels)) if labels is not None else type_
        out[schema].setdefault(table, []).append((column, shown, notnull))
    return out


def _tables(cur: Any, schemas: list[str], kinds: list[str]) -> dict[str, set[str]]:
    cur.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = ANY(%s) AND c.relkind = ANY(%s) "
        "AND c.relname <> 'alembic_version'",
        (schemas, kinds),
    )
    out: dict[str, set[str]] = {s: set() for s in schemas}
    for schema, table in cur.fetchall():
        out[schema].add(table)
    return out


def _accept_enum_as_text(shard: Columns, veneer: Columns) -> Columns:
    """A veneer may carry an enum column as the same enum (same labels) or as text."""
    out: Columns = []
    for (name, type_, notnull), remote in zip(veneer, shard, strict=False):
        if type_ == "text" and isinstance(remote[1], tuple) and remote[0] == name:
            type_ = remote[1]
        out.append((name, type_, notnull))
    return out


def shard_tables(settings: Settings, tenants: Mapping[str, str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for shard, schemas in by_shard(tenants).items():
        with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
            out.update(_tables(conn.cursor(), schemas, ["r", "p", "v", "m", "f"]))
    return out


def check_veneer_matches_shards(settings: Settings, tenants: Mapping[str, str]) -> None:
    """For every tenant: the veneer's foreign tables are exactly its shard tables (minus
    alembic_version), with the same columns in the same order, types and NOT NULLs."""
    remote: dict[str, dict[str, Columns]] = {}
    for shard, schemas in by_shard(tenants).items():
        with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
            remote.update(_columns(conn.cursor(), schemas, ["r", "p", "v", "m", "f"]))
    with db.connection(settings.veneer, "admin", autocommit=True) as conn:
        cur = conn.cursor()
        local_tables = _tables(cur, sorted(tenants), ["f"])
        local = _columns(cur, sorted(tenants), ["f"])
    for tenant in sorted(tenants):
        expected = set(remote[tenant])
        assert local_tables[tenant] == expected, (
            f"{tenant}: veneer foreign tables differ from the shard's tables: "
            f"missing {sorted(expected - local_tables[tenant])}, "
            f"extra {sorted(local_tables[tenant] - expected)}"
        )
        for table, columns in remote[tenant].items():
            seen = _accept_enum_as_text(columns, local[tenant].get(table, []))
            assert seen == columns, f"{tenant}.{table}: veneer columns {seen} != shard {columns}"


def check_through_veneer(settings: Settings, tenants: Mapping[str, str], probe: int) -> None:
    """As veneer_app, for every tenant: read the enum column; INSERT an account with the
    label rc09 added (owned by a shared user: the shard checks the foreign key) and a note
    on it; UPDATE the account (the shard's trigger calls shared_rt.set_updated_at()); join
    the two; join accounts with a ledger. ``probe`` is a fresh id for the new rows."""
    with db.connection(settings.veneer, "app") as conn, conn.cursor() as cur:
        for tenant in sorted(tenants):
            t = quote_ident(tenant)
            cur.execute(f"SELECT id, mood::text FROM {t}.accounts WHERE id <= 3 ORDER BY id")
            assert cur.fetchall() == [(1, "happy"), (2, "sad"), (3, "neutral")], tenant
            cur.execute(
                f"INSERT INTO {t}.accounts (id, name, owner_id, mood, balance, updated_at) "
                "VALUES (%s, %s, 4, %s, 0, '2000-01-01')",
                (probe, f"probe {probe}", NEW_MOOD),
            )
            cur.execute(
                f"INSERT INTO {t}.notes_0 (id, account_id, author_id, body) "
                "VALUES (%s, %s, 5, 'hello')",
                (probe, probe),
            )
            cur.execute(f"UPDATE {t}.accounts SET name = 'renamed' WHERE id = %s", (probe,))
            cur.execute(
                f"SELECT a.name, a.mood::text, a.updated_at > '2000-01-02', n.body, n.author_id "
                f"FROM {t}.accounts a JOIN {t}.notes_0 n ON n.account_id = a.id "
                "WHERE a.id = %s",
                (probe,),
            )
            assert cur.fetchall() == [("renamed", NEW_MOOD, True, "hello", 5)], tenant
            cur.execute(
                f"SELECT a.name, count(l.id) FROM {t}.accounts a "
                f"LEFT JOIN {t}.ledger_0 l ON l.account_id = a.id WHERE a.id <= 3 "
                "GROUP BY a.name ORDER BY a.name"
            )
            assert cur.fetchall() == [("Alpha", 0), ("Beta", 0), ("Gamma", 0)], tenant
        conn.commit()
