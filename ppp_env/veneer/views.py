"""Cross-tenant views: for an opted-in table, a view in schema ``ppp_all`` of the veneer that
unions it over every live tenant, with a ``tenant`` column.

``ppp_all.<table>`` is ``SELECT '<tenant>'::text AS tenant, <columns> FROM <tenant>.<table>``
``UNION ALL`` ..., one branch per tenant of the catalog (``ppp.tenants``) in state ``active``
or ``moving`` whose veneer schema has that foreign table. The catalog gives each tenant one
shard and the veneer has one schema per tenant (wired to that shard's server), so a tenant in
the middle of a move is counted once, from wherever the catalog says it lives. With the
foreign servers' ``async_capable`` the Append runs the branches on every shard at once
(``Async Foreign Scan`` in ``EXPLAIN``).

Opt-in: the tables listed in ``ppp.cross_tenant`` (:func:`add_table`, :func:`remove_table`).
A tenant whose foreign table has other columns (names, types, order) than the most common
definition is left out and reported, and so is a table with a column named ``tenant``.

The views are rebuilt (:func:`rebuild`) at the end of every refresh and every unwire, so
creating, moving and removing tenants keep them right; a view whose definition would not
change is left alone. ``veneer_app`` (every role with USAGE on ``ppp_all``) gets SELECT.
Everything here runs as ``veneer_admin`` inside the caller's transaction.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ppp_env.identifiers import quote_ident, quote_literal, validate_identifier
from ppp_env.settings import Settings
from ppp_env.veneer import catalog

log = logging.getLogger("ppp.veneer")

#: The veneer schema holding the cross-tenant views.
SCHEMA = "ppp_all"
#: The opt-in list (admin-only, like the rest of schema ``ppp``).
TABLES = "ppp.cross_tenant"
#: Tenant states whose rows a cross-tenant view shows (wired and serving).
LIVE_STATES = ("active", "moving")
#: The column the views add; a table with a column of this name cannot have a view.
TENANT_COLUMN = "tenant"

_CREATE_TABLES = f"""
CREATE TABLE IF NOT EXISTS {TABLES} (
    table_name  text PRIMARY KEY,
    definition  text,
    added_at    timestamptz NOT NULL DEFAULT now(),
    built_at    timestamptz
)
"""


@dataclass
class ViewReport:
    """What a rebuild did: per table, the tenants in its view and those left out (why)."""

    built: dict[str, list[str]] = field(default_factory=dict)
    left_out: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Views dropped (the table has no tenant left, or was removed from the list).
    dropped: list[str] = field(default_factory=list)
    #: Views whose definition changed (created or re-created) in this rebuild.
    changed: list[str] = field(default_factory=list)


def ddl(conn: Connection, sql: str) -> None:
    conn.exec_driver_sql(sql, execution_options={"no_parameters": True})


def _exists(conn: Connection) -> bool:
    return conn.execute(text("SELECT to_regclass(:t)"), {"t": TABLES}).scalar() is not None


def _ensure(conn: Connection, settings: Settings) -> None:
    """The opt-in list and schema ``ppp_all`` (USAGE for ``veneer_app``)."""
    catalog.require_catalog(conn)
    if not _exists(conn):
        ddl(conn, _CREATE_TABLES)
        ddl(conn, f"REVOKE ALL ON {TABLES} FROM PUBLIC, {quote_ident(settings.veneer.app_role)}")
    ddl(conn, f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    ddl(conn, f"GRANT USAGE ON SCHEMA {SCHEMA} TO {quote_ident(settings.veneer.app_role)}")


def list_tables(conn: Connection) -> list[str]:
    """The tables that have (or should have) a cross-tenant view, in name order."""
    if not _exists(conn):
        return []
    return list(
        conn.execute(text(f'SELECT table_name FROM {TABLES} ORDER BY table_name COLLATE "C"'))
        .scalars()
        .all()
    )


def add_table(conn: Connection, settings: Settings, table: str) -> ViewReport:
    """Opt ``table`` in and build its view now (a no-op if it is listed already)."""
    validate_identifier(table, "table name")
    _ensure(conn, settings)
    conn.execute(
        text(f"INSERT INTO {TABLES} (table_name) VALUES (:t) ON CONFLICT DO NOTHING"),
        {"t": table},
    )
    return rebuild(conn, [table])


def remove_table(conn: Connection, settings: Settings, table: str) -> bool:
    """Opt ``table`` out and drop its view; False if it was not listed (nothing changed)."""
    validate_identifier(table, "table name")
    if table not in list_tables(conn):
        return False
    conn.execute(text(f"DELETE FROM {TABLES} WHERE table_name = :t"), {"t": table})
    ddl(conn, f"DROP VIEW IF EXISTS {SCHEMA}.{quote_ident(table)}")
    log.info("cross-tenant view %s.%s dropped (table no longer listed)", SCHEMA, table)
    return True


def drop_views(conn: Connection, tables: Sequence[str]) -> list[str]:
    """Drop the cross-tenant views of these tables if they exist (before their foreign
    tables are replaced: a view would block that); :func:`rebuild` makes them again."""
    listed = set(list_tables(conn)) & set(tables)
    if not listed:
        return []
    names = sorted(listed)
    ddl(conn, "DROP VIEW IF EXISTS " + ", ".join(f"{SCHEMA}.{quote_ident(n)}" for n in names))
    conn.execute(
        text(f"UPDATE {TABLES} SET definition = NULL WHERE table_name = ANY(:t)"), {"t": names}
    )
    return names


def _columns(
    conn: Connection, tables: Sequence[str], include: Sequence[str]
) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """table -> live tenant (or one of ``include`` being created) -> its foreign table's
    columns (name, type), in order."""
    rows = conn.execute(
        text(
            "SELECT c.relname, t.schema, a.attname, format_type(a.atttypid, a.atttypmod) "
            "FROM ppp.tenants t JOIN pg_namespace n ON n.nspname = t.schema "
            "JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind = 'f' "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
            "WHERE c.relname = ANY(:tables) AND (t.state = ANY(:states) "
            "OR (t.state = 'provisioning' AND t.schema = ANY(:include))) "
            'ORDER BY c.relname, t.schema COLLATE "C", a.attnum'
        ),
        {"tables": list(tables), "states": list(LIVE_STATES), "include": list(include)},
    ).all()
    out: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for table, schema, column, type_ in rows:
        out.setdefault(table, {}).setdefault(schema, []).append((column, type_))
    return out


def _why(mine: list[tuple[str, str]], common: list[tuple[str, str]], n: int) -> str:
    have, want = dict(mine), dict(common)
    parts = []
    missing = [c for c in want if c not in have]
    extra = [c for c in have if c not in want]
    retyped = [f"{c} is {have[c]}, not {want[c]}" for c in want if c in have and have[c] != want[c]]
    if missing:
        parts.append("lacks " + ", ".join(missing))
    if extra:
        parts.append("has " + ", ".join(extra) + " too")
    parts.extend(retyped)
    if not parts:
        parts.append("its columns are in another order")
    return f"its columns differ from the {n} other tenant(s)' ({'; '.join(parts)})"


def _definition(table: str, tenants: Sequence[str], columns: list[tuple[str, str]]) -> str:
    cols = ", ".join(quote_ident(c) for c, _t in columns)
    qt = quote_ident(table)
    branches = [
        f"SELECT {quote_literal(s)}::text AS {TENANT_COLUMN}, {cols} FROM {quote_ident(s)}.{qt}"
        for s in tenants
    ]
    return f"CREATE VIEW {SCHEMA}.{qt} AS\n" + "\nUNION ALL\n".join(branches)


def _readers(conn: Connection) -> list[str]:
    """Roles that may read the views: those with USAGE on schema ppp_all, but its owner."""
    return list(
        conn.execute(
            text(
                "SELECT DISTINCT pg_get_userbyid(x.grantee) FROM pg_namespace n, "
                "aclexplode(n.nspacl) x WHERE n.nspname = :s AND x.privilege_type = 'USAGE' "
                "AND x.grantee <> n.nspowner AND x.grantee <> 0"
            ),
            {"s": SCHEMA},
        )
        .scalars()
        .all()
    )


def rebuild(
    conn: Connection, tables: Sequence[str] | None = None, *, include: Sequence[str] = ()
) -> ViewReport:
    """Make the views of ``tables`` (None: every listed table) match the catalog and the
    tenants' foreign tables; a view whose definition is unchanged is left as it is.

    ``include``: tenants still ``provisioning`` that count as live, because the caller's
    transaction wired them and makes them ``active`` before it commits (``ppp tenant
    create`` wires with :func:`ppp_env.veneer.refresh_in`, then sets the state)."""
    report = ViewReport()
    listed = list_tables(conn)
    wanted = [t for t in listed if tables is None or t in tables]
    if not wanted:
        return report
    rows = conn.execute(
        text(f"SELECT table_name, definition FROM {TABLES} WHERE table_name = ANY(:t)"),
        {"t": wanted},
    ).all()
    stored: dict[str, str | None] = {r[0]: r[1] for r in rows}
    found = _columns(conn, wanted, include)
    readers = _readers(conn)
    for table in wanted:
        sql, members, left = _view_of(table, found.get(table, {}))
        if members:
            report.built[table] = members
        if left:
            report.left_out[table] = left
            qt = f"{SCHEMA}.{quote_ident(table)}"
            for s, why in left.items():
                log.warning("cross-tenant view %s leaves out tenant %s: %s", qt, s, why)
        _install(conn, table, sql, stored.get(table), readers, report)
    return report


def _view_of(
    table: str, per_tenant: dict[str, list[tuple[str, str]]]
) -> tuple[str | None, list[str], dict[str, str]]:
    """The view's SQL over the tenants whose ``table`` has the most common columns (on a
    tie, those of the first tenant by name), those tenants, and why the others are left out."""
    if any(c == TENANT_COLUMN for cols in per_tenant.values() for c, _t in cols):
        why = f"its {table} has a column named {TENANT_COLUMN!r}, which the view adds"
        return None, [], {s: why for s in per_tenant}
    if not per_tenant:
        return None, [], {}
    counts = Counter(tuple(cols) for cols in per_tenant.values())
    order = {tuple(cols): i for i, cols in reversed(list(enumerate(per_tenant.values())))}
    common = max(counts, key=lambda k: (counts[k], -order[k]))
    members = [s for s, cols in per_tenant.items() if tuple(cols) == common]
    left = {
        s: _why(cols, list(common), len(members))
        for s, cols in per_tenant.items()
        if tuple(cols) != common
    }
    return _definition(table, members, list(common)), members, left


def _install(
    conn: Connection,
    table: str,
    sql: str | None,
    stored: str | None,
    readers: Sequence[str],
    report: ViewReport,
) -> None:
    """Replace the view when its definition changed (or drop it: no tenant left)."""
    qt = f"{SCHEMA}.{quote_ident(table)}"
    digest = hashlib.md5(sql.encode()).hexdigest() if sql else None
    present = conn.execute(text("SELECT to_regclass(:v)"), {"v": qt}).scalar() is not None
    if digest is not None and digest == stored and present:
        return
    ddl(conn, f"DROP VIEW IF EXISTS {qt}")
    if sql is None:
        if present:
            report.dropped.append(table)
    else:
        ddl(conn, sql)
        if readers:
            ddl(conn, f"GRANT SELECT ON {qt} TO {', '.join(map(quote_ident, readers))}")
        report.changed.append(table)
    conn.execute(
        text(f"UPDATE {TABLES} SET definition = :d, built_at = now() WHERE table_name = :t"),
        {"d": digest, "t": table},
    )
