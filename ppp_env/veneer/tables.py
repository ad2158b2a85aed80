"""Tenants' foreign tables in the veneer, kept in step with their shards.

Everything here runs as ``veneer_admin`` (never a superuser) on a SQLAlchemy connection whose
transaction the caller owns: Alembic's in ``veneer_migrations/env.py``, or :func:`refresh`'s.

- :func:`reconcile` makes one foreign server per shard in the settings (named after the
  shard; host, port and database from the settings, never from a revision file) and user
  mappings from ``veneer_admin`` and ``veneer_app`` to the shard's app role.
- :func:`refresh` / :func:`refresh_in` bring tenants' foreign tables in step with their
  shards. Per shard, one catalog query (the one IMPORT FOREIGN SCHEMA runs, with the same
  ``search_path = pg_catalog``) gives every table's foreign-table column list and its
  signature; the tenant's enums, domains and composite types come along. Only tables whose
  signature differs from PPP's record (``ppp.wired_objects``) are re-created, each with a
  local ``CREATE FOREIGN TABLE`` (no round trip to the shard per tenant). Tenants are
  changed in batches whose locks stay under :data:`LOCK_BUDGET`, each tenant atomically: the
  old foreign table is dropped and the new one created in one transaction, so a reader
  waits for it at most and then sees the new table (PostgreSQL looks a name up again after
  waiting for a lock that a DDL change released), never a missing one.

User mapping passwords never appear in SQL text (the veneer may log every statement): they
travel through ``COPY ... FROM STDIN`` into a temporary table, and a ``DO`` block, which
``log_statement`` does not expand, creates the mappings from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError

from ppp_env.db import connect, first_line
from ppp_env.errors import PPPError
from ppp_env.identifiers import quote_ident, quote_literal
from ppp_env.settings import Instance, Settings
from ppp_env.tenant_state import group_by_shard, read_states
from ppp_env.veneer import catalog, views
from ppp_env.veneer.wiring import VENEER_LOCK_KEY, _ddl, lock

log = logging.getLogger("ppp.veneer")
#: Remote tables never imported: the shard's per-tenant Alembic version table.
EXCLUDED_TABLES = ("alembic_version",)
#: How many tenants one query on a shard covers.
_CHUNK = 2000

# -- tenants' foreign tables --------------------------------------------------------------------
#: PPP's record of what it wired, in the veneer's catalog schema (admin-only, created by the
#: first refresh): per tenant schema, every foreign table and type PPP created there, the
#: signature of the definition it was created from, and the object's oid (an object dropped
#: or replaced by hand has another oid, or none, and is wired again).
WIRED = "ppp.wired_objects"
#: Locks one refresh transaction may take, estimated. PostgreSQL's lock table has
#: max_locks_per_transaction (64) x max_connections slots for the whole server, shared by
#: every session: a refresh batches tenants into transactions that stay under this.
LOCK_BUDGET = 1000
#: Locks taken per foreign table created; per foreign table or type dropped (it also locks
#: its row and array types, plus one per column default: counted from the new definition,
#: or :data:`_LOCKS_GONE` for a table gone from the shard); per tenant (schema, catalog rows).
_LOCKS_CREATE, _LOCKS_DROP, _LOCKS_GONE, _LOCKS_TENANT = 1, 3, 6, 4
#: Lock timeout (seconds) of a batch of tenants: a tenant whose foreign table a long query
#: holds fails the batch quickly (then it waits ``settings.lock_timeout`` on its own).
BATCH_LOCK_TIMEOUT = 1.0
#: Rows of the record written by one refresh after which it analyzes the record.
_ANALYZE_AFTER = 1000
#: Privileges ``veneer_app`` gets on every foreign table.
_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"
#: The wired record's kinds.
_TABLE, _TYPE = "table", "type"
#: Type kinds the veneer creates (pg_type.typtype): enum, domain, composite.
CREATABLE_TYPES = {"e": "enum", "d": "domain", "c": "composite"}
_OTHER_TYPES = {"r": "range", "b": "base", "p": "pseudo"}

_CREATE_WIRED = f"""
CREATE TABLE IF NOT EXISTS {WIRED} (
    schema      text NOT NULL,
    name        text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('{_TABLE}', '{_TYPE}')),
    signature   text NOT NULL,
    local_oid   oid NOT NULL,
    wired_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema, name)
)
"""


@dataclass
class RefreshReport:
    """What a refresh did: tenants wired, pending (no schema on the shard yet), failed."""

    refreshed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    #: The revision recorded for each refreshed tenant (None: no alembic_version yet).
    revisions: dict[str, str | None] = field(default_factory=dict)
    seconds: float = 0.0
    #: Refreshed tenants that needed no DDL (their foreign tables were already in step).
    unchanged: list[str] = field(default_factory=list)
    #: Foreign tables created (new or changed on the shard) and dropped (changed or gone).
    tables_created: int = 0
    tables_dropped: int = 0
    #: Types created, altered (an enum's new labels) or dropped.
    types_changed: int = 0
    #: The cross-tenant views rebuilt at the end (:mod:`ppp_env.veneer.views`), and why
    #: they could not be (None: rebuilt, or nothing opted in).
    cross_tenant: views.ViewReport = field(default_factory=views.ViewReport)
    views_error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class RemoteType:
    """A type in a tenant's schema on its shard."""

    name: str
    #: pg_type.typtype: 'e' enum, 'd' domain, 'c' composite (the veneer creates these),
    #: 'r' range, 'b' base, 'p' pseudo (it cannot).
    kind: str
    signature: str
    #: What follows ``CREATE TYPE x AS`` / ``CREATE DOMAIN x AS`` (None: not creatable).
    body: str | None
    labels: tuple[str, ...] = ()
    #: Other types of the same schema this one is built from (created first).
    depends: tuple[str, ...] = ()

    @property
    def creatable(self) -> bool:
        return self.kind in CREATABLE_TYPES and self.body is not None


@dataclass(frozen=True)
class RemoteTenant:
    """A tenant schema as its shard has it."""

    exists: bool
    revision: str | None
    #: Table (view, foreign table, materialized view, partitioned table) -> signature of its
    #: foreign table's column list.
    tables: Mapping[str, str] = field(default_factory=dict)
    types: Mapping[str, RemoteType] = field(default_factory=dict)
    #: Signature -> column list (one read per signature, shared by the shard's tenants).
    definitions: Mapping[str, str] = field(default_factory=dict)


# The relations of tenant schemas that IMPORT FOREIGN SCHEMA takes (tables, views, foreign
# tables, materialized views, partitioned tables; partitions come through their parent), but
# the shard's alembic_version.
_RELATIONS = """
    SELECT c.oid, c.relnamespace, n.nspname, c.relname
    FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid
    WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'v', 'f', 'm', 'p')
      AND NOT c.relispartition AND c.relname <> ALL(%(excluded)s)
"""
# A column default the veneer cannot have: it uses an object other than built-ins, the table
# itself and the tenant schema's types (a sequence, a function of the tenant or of an
# extension). Its foreign table column gets no default (INSERTs through the veneer give it).
_LOCAL_DEFAULT = """EXISTS (
    SELECT 1 FROM pg_depend d
    WHERE d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid AND d.refobjid >= 16384
      AND NOT (d.refclassid = 'pg_class'::regclass AND d.refobjid = r.oid)
      AND NOT (d.refclassid = 'pg_type'::regclass AND EXISTS (
          SELECT 1 FROM pg_type ty
          WHERE ty.oid = d.refobjid AND ty.typnamespace = r.relnamespace)))"""
# A table's signature: md5 of the catalog values its foreign table is made of (names, type
# oids and modifiers, not-null, collations, generated, the defaults' stored expression
# trees). Cheap: no text is formatted, no dependency looked up (about 14 us per table).
# Equal definitions of different tenants have equal signatures unless a tenant type, a
# sequence or the DDL's text layout (parse locations) differs: then the column lists are
# just read once per tenant instead of once for all.
_SIGNATURE = """md5(coalesce(string_agg(concat_ws(',', a.attname, a.atttypid, a.atttypmod,
        a.attnotnull, a.attcollation, a.attgenerated, a.attidentity, ad.adbin::text), ';'
        ORDER BY a.attnum), ''))"""
# The shard sequence a column takes its default from: an identity column's (GENERATED BY
# DEFAULT), or a default that is exactly `nextval('seq'::regclass)` (serial and the like).
_SEQUENCE = """LEFT JOIN LATERAL (SELECT CASE WHEN a.attidentity = 'd'
            THEN pg_get_serial_sequence(r.oid::regclass::text, a.attname)
            ELSE (SELECT s.oid::regclass::text FROM pg_depend d
                  JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S'
                  WHERE d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
                    AND d.refclassid = 'pg_class'::regclass
                    AND pg_get_expr(ad.adbin, ad.adrelid)
                        = format('nextval(%%L::regclass)', s.oid::regclass::text)
                  LIMIT 1) END AS seq) sq ON true"""
# One column of the foreign table, as postgres_fdw's IMPORT FOREIGN SCHEMA writes it (with
# search_path = pg_catalog, so types, defaults and collations come schema-qualified):
# `name type OPTIONS (column_name 'name') [COLLATE c] [DEFAULT e | GENERATED ALWAYS AS (e)
# STORED] [NOT NULL]`. Where IMPORT leaves a sequence out, PPP makes inserts behave as on the
# shard: a GENERATED ALWAYS identity column becomes `GENERATED ALWAYS AS (NULL::type) STORED`
# (postgres_fdw sends DEFAULT for generated columns, so the shard's identity fills it and
# RETURNING gives it back; explicit values are refused, as on the shard), and a column whose
# default is a shard sequence (serial, BY DEFAULT identity) gets
# `DEFAULT ppp_remote.nextval('<server>', '<sequence>')` when the veneer has that function
# (%(nextval)s): the shard's sequence through dblink, one round trip per row; explicit values
# still go through.
_COLUMN = f"""format('%%I %%s OPTIONS (column_name %%L)', a.attname,
            format_type(a.atttypid, a.atttypmod), a.attname)
        || CASE WHEN co.oid IS NULL THEN ''
                ELSE format(' COLLATE %%I.%%I', cn.nspname, co.collname) END
        || CASE WHEN a.attgenerated = 's' THEN
                    format(' GENERATED ALWAYS AS (%%s) STORED', pg_get_expr(ad.adbin, ad.adrelid))
                WHEN a.attidentity = 'a' THEN format(' GENERATED ALWAYS AS (NULL::%%s) STORED',
                    format_type(a.atttypid, a.atttypmod))
                WHEN %(nextval)s AND sq.seq IS NOT NULL THEN
                    format(' DEFAULT ppp_remote.nextval(%%L, %%L)', %(server)s::text, sq.seq)
                WHEN ad.oid IS NOT NULL AND NOT {_LOCAL_DEFAULT}
                    THEN ' DEFAULT ' || pg_get_expr(ad.adbin, ad.adrelid)
                ELSE '' END
        || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END"""
_ATTRIBUTES = """FROM pg_attribute a
        LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
        {joins}
        WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped"""
#: Phase 1, every table: its signature.
_REMOTE_SIGNATURES = f"""
WITH r AS ({_RELATIONS})
SELECT r.nspname, r.relname, x.sig FROM r CROSS JOIN LATERAL (
    SELECT {_SIGNATURE} AS sig {_ATTRIBUTES.format(joins="")}) x
"""
#: Phase 2, one table per signature the veneer needs: its column list (and its signature
#: again: a table changed in between is noticed).
_REMOTE_DEFINITIONS = f"""
WITH r AS (
    SELECT c.oid, c.relnamespace, n.nspname, c.relname
    FROM unnest(%(schemas)s::text[], %(tables)s::text[]) AS w(nspname, relname)
    JOIN pg_namespace n ON n.nspname = w.nspname
    JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.relname)
SELECT r.nspname, r.relname, x.sig, x.cols FROM r CROSS JOIN LATERAL (
    SELECT {_SIGNATURE} AS sig,
           coalesce(string_agg({_COLUMN}, ', ' ORDER BY a.attnum), '') AS cols
    {
    _ATTRIBUTES.format(
        joins='''LEFT JOIN pg_collation co ON co.oid = a.attcollation
        LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
        '''
        + _SEQUENCE
    )
}) x
"""

_COLLATE = """coalesce((SELECT format(' COLLATE %%I.%%I', cn.nspname, co.collname)
    FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace
    WHERE co.oid = {coll} AND {coll} <> 0 AND {coll} IS DISTINCT FROM {base}), '')"""

# The types of tenant schemas: enums, domains and standalone composite types (with what the
# veneer needs to create them), ranges and base types (only named, in errors). Array types
# and tables' row types come with their owners.
_REMOTE_TYPES = f"""
SELECT n.nspname, t.typname, t.typtype,
    CASE t.typtype
    WHEN 'e' THEN 'ENUM (' || coalesce((SELECT string_agg(quote_literal(e.enumlabel), ', '
        ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid), '') || ')'
    WHEN 'd' THEN format_type(t.typbasetype, t.typtypmod)
        || {_COLLATE.format(coll="t.typcollation", base="bt.typcollation")}
        || coalesce(' DEFAULT ' || pg_get_expr(t.typdefaultbin, 0), '')
        || CASE WHEN t.typnotnull THEN ' NOT NULL' ELSE '' END
        || coalesce((SELECT string_agg(format(' CONSTRAINT %%I %%s', k.conname,
               pg_get_constraintdef(k.oid)), '' ORDER BY k.conname)
           FROM pg_constraint k WHERE k.contypid = t.oid AND k.contype = 'c'), '')
    WHEN 'c' THEN '(' || coalesce((SELECT string_agg(format('%%I %%s', a.attname,
            format_type(a.atttypid, a.atttypmod))
            || {_COLLATE.format(coll="a.attcollation", base="at.typcollation")},
            ', ' ORDER BY a.attnum)
        FROM pg_attribute a JOIN pg_type at ON at.oid = a.atttypid
        WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped), '') || ')'
    END AS body,
    ARRAY(SELECT e.enumlabel FROM pg_enum e WHERE e.enumtypid = t.oid
          ORDER BY e.enumsortorder) AS labels,
    ARRAY(SELECT DISTINCT rt.typname
          FROM pg_type xt
          JOIN pg_type rt ON rt.oid = CASE WHEN xt.typcategory = 'A' AND xt.typelem <> 0
                                           THEN xt.typelem ELSE xt.oid END
          WHERE rt.typnamespace = t.typnamespace AND rt.oid <> t.oid
            AND xt.oid IN (SELECT t.typbasetype UNION ALL
                           SELECT a.atttypid FROM pg_attribute a
                           WHERE t.typrelid <> 0 AND a.attrelid = t.typrelid AND a.attnum > 0
                             AND NOT a.attisdropped)) AS depends
FROM pg_type t
JOIN pg_namespace n ON n.oid = t.typnamespace
LEFT JOIN pg_type bt ON bt.oid = t.typbasetype
LEFT JOIN pg_class rc ON rc.oid = t.typrelid
WHERE n.nspname = ANY(%(schemas)s) AND t.typtype IN ('e', 'd', 'c', 'r', 'b', 'p')
  AND (t.typrelid = 0 OR rc.relkind = 'c')
  AND NOT (t.typcategory = 'A' AND t.typelem <> 0)
"""


class ShardReader:
    """One connection to a shard (as its admin role, ``search_path = pg_catalog`` like
    postgres_fdw's remote sessions) for both phases of reading tenants; close it after."""

    def __init__(self, inst: Instance, connect_timeout: int = 5) -> None:
        self.inst = inst
        self.conn = connect(inst, "admin", connect_timeout=connect_timeout)
        self.cur = self.conn.cursor()
        # jit off: these catalog queries are estimated costly enough for JIT compilation,
        # which took longer (0.6 s per query on a 2-core machine) than running them.
        self.cur.execute("SET search_path = pg_catalog; SET jit = off")
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()

    def tenants(
        self, schemas: Sequence[str], revisions: Mapping[str, str | None] | None = None
    ) -> dict[str, RemoteTenant]:
        """Phase 1: whether each schema exists, its revision, its tables' signatures and its
        types; a few queries per 2,000 tenants, whatever their number of tables. The column
        lists come in phase 2 (:meth:`definitions`)."""
        known = dict(revisions or {})
        cur = self.cur
        out: dict[str, RemoteTenant] = {}
        for i in range(0, len(schemas), _CHUNK):
            chunk = list(schemas[i : i + _CHUNK])
            unknown = [s for s in chunk if s not in known]
            # The revision first: a migration that lands after it leaves the veneer marked
            # stale (the next refresh catches up), never falsely in step.
            states = read_states(cur, unknown) if unknown else {}
            exists = {s for s, st in states.items() if st.exists}
            revision = {s: st.revision for s, st in states.items()}
            if len(unknown) < len(chunk):
                cur.execute(
                    "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)",
                    ([s for s in chunk if s in known],),
                )
                exists.update(r[0] for r in cur.fetchall())
                revision.update({s: known[s] for s in chunk if s in known})
            args = {"schemas": chunk, "excluded": list(EXCLUDED_TABLES)}
            cur.execute(_REMOTE_SIGNATURES, args)
            tables: dict[str, dict[str, str]] = {}
            for schema, table, sig in cur.fetchall():
                tables.setdefault(schema, {})[table] = sig
            cur.execute(_REMOTE_TYPES, args)
            types: dict[str, dict[str, RemoteType]] = {}
            for schema, name, kind, body, labels, depends in cur.fetchall():
                sig = hashlib.md5(f"{kind} {body}".encode()).hexdigest()
                types.setdefault(schema, {})[name] = RemoteType(
                    name, kind, sig, body, tuple(labels or ()), tuple(depends or ())
                )
            for schema in chunk:
                out[schema] = RemoteTenant(
                    schema in exists,
                    revision.get(schema),
                    tables.get(schema, {}),
                    types.get(schema, {}),
                )
        self.conn.rollback()
        return out

    def definitions(
        self, wanted: Mapping[str, tuple[str, str]], server: str | None = None
    ) -> dict[str, str]:
        """Phase 2: signature -> column list, read from one table (schema, table) each.
        A signature whose table changed since phase 1 is left out. ``server``: the veneer's
        foreign server of this shard when the veneer has ``ppp_remote.nextval`` (sequence
        defaults call it); None: those defaults are left out."""
        out: dict[str, str] = {}
        items = list(wanted.items())
        for i in range(0, len(items), _CHUNK * 10):
            chunk = items[i : i + _CHUNK * 10]
            self.cur.execute(
                _REMOTE_DEFINITIONS,
                {
                    "schemas": [w[1][0] for w in chunk],
                    "tables": [w[1][1] for w in chunk],
                    "nextval": server is not None,
                    "server": server,
                },
            )
            found = {(s, t): (sig, cols) for s, t, sig, cols in self.cur.fetchall()}
            for sig, where in chunk:
                got = found.get(where)
                if got is not None and got[0] == sig:
                    out[sig] = got[1]
        self.conn.rollback()
        return out


def read_remote(
    inst: Instance,
    schemas: Sequence[str],
    connect_timeout: int = 5,
    revisions: Mapping[str, str | None] | None = None,
    server: str | None = None,
) -> dict[str, RemoteTenant]:
    """Each tenant schema as its shard has it (both phases of :class:`ShardReader`): whether
    it exists, its revision (:attr:`ppp_env.fleet.TenantState.revision`, or the one given in
    ``revisions``), its tables' signatures with their column lists, and its types."""
    reader = ShardReader(inst, connect_timeout)
    try:
        found = reader.tenants(schemas, revisions)
        wanted = {sig: (s, t) for s, r in found.items() for t, sig in r.tables.items()}
        definitions = reader.definitions(wanted, server)
    finally:
        reader.close()
    return {s: dataclasses.replace(r, definitions=definitions) for s, r in found.items()}


def _pgcode(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "pgcode", None)


def _names(schema: str, names: Sequence[str]) -> str:
    q = quote_ident(schema)
    return ", ".join(f"{q}.{quote_ident(n)}" for n in names)


# -- the veneer's side --------------------------------------------------------------------------
@dataclass
class _Live:
    """A tenant's veneer schema as it is now, and PPP's record of what it wired there."""

    exists: bool = False
    tables: dict[str, int] = field(default_factory=dict)  # foreign table -> oid
    types: dict[str, tuple[int, str]] = field(default_factory=dict)  # type -> (oid, typtype)
    wired: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # -> kind, sig, oid


def _ensure_wired(conn: Connection, settings: Settings) -> None:
    """Create PPP's record of the wiring if missing, closed to ``veneer_app``."""
    if conn.execute(text("SELECT to_regclass(:t)"), {"t": WIRED}).scalar() is not None:
        return
    _ddl(conn, _CREATE_WIRED)
    _ddl(conn, f"REVOKE ALL ON {WIRED} FROM PUBLIC, {quote_ident(settings.veneer.app_role)}")


def _read_live(conn: Connection, schemas: Sequence[str]) -> dict[str, _Live]:
    """The veneer schemas of ``schemas``: foreign tables, types, PPP's record of them. Three
    plain queries (compared here, not joined in SQL: a join with the record, which a refresh
    has just filled and nothing has analyzed, can get a plan quadratic in its size)."""
    live = {s: _Live() for s in schemas}
    args = {"schemas": list(schemas)}
    raw: Any = conn.connection.driver_connection
    with raw.cursor() as cur:
        cur.execute(
            "SELECT n.nspname, c.relname, c.oid::bigint FROM pg_namespace n "
            "LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind = 'f' "
            "WHERE n.nspname = ANY(%(schemas)s)",
            args,
        )
        for schema, table, oid in cur.fetchall():
            live[schema].exists = True
            if table is not None:
                live[schema].tables[table] = oid
        cur.execute(
            "SELECT n.nspname, t.typname, t.oid::bigint, t.typtype FROM pg_type t "
            "JOIN pg_namespace n ON n.oid = t.typnamespace "
            "LEFT JOIN pg_class rc ON rc.oid = t.typrelid "
            "WHERE n.nspname = ANY(%(schemas)s) AND t.typtype IN ('e', 'd', 'c', 'r', 'b') "
            "AND (t.typrelid = 0 OR rc.relkind = 'c') "
            "AND NOT (t.typcategory = 'A' AND t.typelem <> 0)",
            args,
        )
        for schema, name, oid, kind in cur.fetchall():
            live[schema].types[name] = (oid, kind)
        cur.execute(
            f"SELECT schema, name, kind, signature, local_oid::bigint FROM {WIRED} "
            "WHERE schema = ANY(%(schemas)s)",
            args,
        )
        for schema, name, kind, sig, oid in cur.fetchall():
            live[schema].wired[name] = (kind, sig, oid)
    return live


def _read_labels(
    conn: Connection, wanted: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], list[str]]:
    """The labels of these enums in the veneer, in order."""
    if not wanted:
        return {}
    rows = conn.execute(
        text(
            "SELECT n.nspname, t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder) "
            "FROM unnest(CAST(:s AS text[]), CAST(:n AS text[])) AS w(schema, name) "
            "JOIN pg_namespace n ON n.nspname = w.schema "
            "JOIN pg_type t ON t.typnamespace = n.oid AND t.typname = w.name "
            "JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY n.nspname, t.typname"
        ),
        {"s": [s for s, _n in wanted], "n": [n for _s, n in wanted]},
    ).all()
    return {(r[0], r[1]): list(r[2]) for r in rows}


def _enum_additions(
    schema: str, name: str, old: Sequence[str], new: Sequence[str]
) -> list[str] | None:
    """``ALTER TYPE ... ADD VALUE`` statements turning enum ``old`` into ``new``, or None when
    ``new`` is not ``old`` with labels added (a label renamed, removed or moved)."""
    if len(set(new)) != len(new):
        return None
    rest = iter(new)
    if not all(any(label == x for x in rest) for label in old):
        return None
    target = f"{quote_ident(schema)}.{quote_ident(name)}"
    present = set(old)
    out = []
    for i, label in enumerate(new):
        if label in present:
            continue
        if i > 0:
            where = f" AFTER {quote_literal(new[i - 1])}"
        elif old:
            where = f" BEFORE {quote_literal(old[0])}"
        else:
            where = ""
        out.append(f"ALTER TYPE {target} ADD VALUE {quote_literal(label)}{where}")
        present.add(label)
    return out


def _in_order(types: Sequence[RemoteType]) -> list[RemoteType]:
    """Types ordered so that each comes after the types it is built from."""
    pending = {t.name: t for t in types}
    out: list[RemoteType] = []
    while pending:
        ready = [t for t in pending.values() if not any(d in pending for d in t.depends)]
        for t in ready or list(pending.values()):  # a cycle: let PostgreSQL name it
            out.append(t)
            del pending[t.name]
    return out


@dataclass
class _Plan:
    """What one tenant's refresh does in the veneer."""

    tenant: catalog.Tenant
    revision: str | None
    create_schema: bool = False
    drop_tables: list[str] = field(default_factory=list)
    drop_types: list[str] = field(default_factory=list)
    create_types: list[RemoteType] = field(default_factory=list)
    alter: list[str] = field(default_factory=list)
    #: (table, signature) to create from the shard's column list of that signature.
    create_tables: list[tuple[str, str]] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)
    #: Wired records to write: (name, kind, signature); and names whose record goes.
    record: list[tuple[str, str, str]] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)
    #: Estimated locks (see :data:`LOCK_BUDGET`).
    locks: int = _LOCKS_TENANT
    #: Remote types this tenant's tables may need that the veneer cannot create.
    others: dict[str, str] = field(default_factory=dict)

    @property
    def schema(self) -> str:
        return self.tenant.schema

    @property
    def tables_created(self) -> int:
        return len(self.create_tables)

    @property
    def tables_dropped(self) -> int:
        return len(self.drop_tables)

    @property
    def types_changed(self) -> int:
        return (
            len(self.create_types)
            + len(self.drop_types)
            + len({a.split(" ADD VALUE")[0] for a in self.alter})
        )

    @property
    def changes(self) -> bool:
        return bool(self.statements or self.record or self.forget)


def _diff(
    tenant: catalog.Tenant,
    remote: RemoteTenant,
    live: _Live,
    labels: Mapping[tuple[str, str], list[str]],
    full: bool,
    nextval: bool = False,
) -> _Plan:
    """Compare a tenant's tables and types on its shard (their signatures) with its veneer
    schema and PPP's record: what to drop, create or alter (nothing when all match)."""
    schema, shard = tenant.schema, tenant.shard
    plan = _Plan(tenant, remote.revision, create_schema=not live.exists)
    wanted_types = {n: t for n, t in remote.types.items() if t.creatable}
    plan.others = {
        n: _OTHER_TYPES.get(t.kind, t.kind) for n, t in remote.types.items() if not t.creatable
    }

    def intact(name: str, kind: str, sig: str, oid: int | None) -> bool:
        return not full and oid is not None and live.wired.get(name) == (kind, sig, oid)

    # Types: kept when in step; an enum that only gained labels gets them; any other change
    # (or a type PPP did not record) means dropping and re-creating the tenant's types, and
    # so its foreign tables, which use them.
    keep: set[str] = set()
    rebuild = False
    for name, ty in wanted_types.items():
        have = live.types.get(name)
        if have is None:
            plan.create_types.append(ty)
        elif intact(name, _TYPE, ty.signature, have[0]):
            keep.add(name)
        else:
            old = labels.get((schema, name))
            adds = None
            if ty.kind == "e" and have[1] == "e" and old is not None and name in live.wired:
                adds = _enum_additions(schema, name, old, ty.labels)
            if adds is None:
                rebuild = True
            else:
                plan.alter.extend(adds)
                plan.record.append((name, _TYPE, ty.signature))
                keep.add(name)
    ours = {n for n, (kind, _s, _o) in live.wired.items() if kind == _TYPE}
    if rebuild:
        plan.drop_types = [n for n in live.types if n in wanted_types or n in ours]
        plan.create_types = list(wanted_types.values())
        plan.alter, plan.record, keep = [], [], set()
    else:
        plan.drop_types = [n for n in live.types if n in ours and n not in wanted_types]
    plan.create_types = _in_order(plan.create_types)
    plan.record.extend((ty.name, _TYPE, ty.signature) for ty in plan.create_types)

    for name, sig in remote.tables.items():
        # The server is part of the definition, and so is whether sequence defaults call
        # ppp_remote.nextval (the veneer gained or lost it: every table is made again).
        signature = f"{sig}@{shard}{'+nextval' if nextval else ''}"
        have_table = live.tables.get(name)
        if not rebuild and intact(name, _TABLE, signature, have_table):
            keep.add(name)
            continue
        if have_table is not None:
            plan.drop_tables.append(name)
        plan.create_tables.append((name, sig))
        plan.record.append((name, _TABLE, signature))
    gone = [n for n in live.tables if n not in remote.tables]
    plan.drop_tables.extend(gone)
    plan.locks += _LOCKS_GONE * len(gone) + _LOCKS_DROP * plan.types_changed
    written = {n for n, _k, _s in plan.record}
    plan.forget = [n for n in live.wired if n not in keep and n not in written]
    return plan


def _finish(plan: _Plan, definitions: Mapping[str, str], app: str) -> None:
    """The plan's statements, with the column lists read from the shard (KeyError: one is
    missing because its table changed while the refresh read it)."""
    schema = plan.schema
    q = quote_ident(schema)
    out = plan.statements
    if plan.create_schema:
        out += [f"CREATE SCHEMA {q}", f"GRANT USAGE ON SCHEMA {q} TO {app}"]
    if plan.drop_tables:
        out.append(f"DROP FOREIGN TABLE {_names(schema, sorted(plan.drop_tables))}")
    if plan.drop_types:
        out.append(f"DROP TYPE {_names(schema, sorted(plan.drop_types))}")
    for ty in plan.create_types:
        verb = "DOMAIN" if ty.kind == "d" else "TYPE"
        out.append(f"CREATE {verb} {q}.{quote_ident(ty.name)} AS {ty.body}")
    out.extend(plan.alter)
    server = quote_ident(plan.tenant.shard)
    dropped = set(plan.drop_tables)
    for name, sig in plan.create_tables:
        cols = definitions[sig]
        out.append(
            f"CREATE FOREIGN TABLE {q}.{quote_ident(name)} ({cols}) SERVER {server} "
            f"OPTIONS (schema_name {quote_literal(schema)}, table_name {quote_literal(name)})"
        )
        plan.locks += _LOCKS_CREATE
        if name in dropped:  # its row and array types, and one lock per default
            plan.locks += _LOCKS_DROP + cols.count(" DEFAULT ") + cols.count(" GENERATED ")
    if plan.create_tables:
        names = _names(schema, [n for n, _s in plan.create_tables])
        out.append(f"GRANT {_PRIVILEGES} ON {names} TO {app}")


_RECORD = f"""
INSERT INTO {WIRED} (schema, name, kind, signature, local_oid)
SELECT w.schema, w.name, w.kind, w.signature,
       CASE w.kind WHEN '{_TABLE}' THEN to_regclass(format('%I.%I', w.schema, w.name))::oid
                   ELSE to_regtype(format('%I.%I', w.schema, w.name))::oid END
FROM unnest(CAST(:schemas AS text[]), CAST(:names AS text[]), CAST(:kinds AS text[]),
            CAST(:signatures AS text[])) AS w(schema, name, kind, signature)
ON CONFLICT (schema, name) DO UPDATE SET kind = excluded.kind,
    signature = excluded.signature, local_oid = excluded.local_oid, wired_at = now()
"""
_FORGET = f"""
DELETE FROM {WIRED} w USING unnest(CAST(:schemas AS text[]), CAST(:names AS text[]))
    AS g(schema, name) WHERE w.schema = g.schema AND w.name = g.name
"""


def _run(conn: Connection, plans: Sequence[_Plan]) -> None:
    """The DDL of ``plans`` in one round trip, then their records and revisions."""
    sql = ";\n".join(s for p in plans for s in p.statements)
    if sql:
        _ddl(conn, sql)
    rows = [(p.schema, *r) for p in plans for r in p.record]
    if rows:
        conn.execute(
            text(_RECORD),
            {
                "schemas": [r[0] for r in rows],
                "names": [r[1] for r in rows],
                "kinds": [r[2] for r in rows],
                "signatures": [r[3] for r in rows],
            },
        )
    gone = [(p.schema, n) for p in plans for n in p.forget]
    if gone:
        conn.execute(
            text(_FORGET), {"schemas": [g[0] for g in gone], "names": [g[1] for g in gone]}
        )
    catalog.mark_wired(conn, {p.schema: p.revision for p in plans})


def _batches(plans: Sequence[_Plan]) -> Iterator[list[_Plan]]:
    """Consecutive plans whose estimated locks stay under :data:`LOCK_BUDGET` together (a
    tenant above it alone goes in a batch of its own)."""
    batch: list[_Plan] = []
    locks = 0
    for plan in plans:
        if batch and locks + plan.locks > LOCK_BUDGET:
            yield batch
            batch, locks = [], 0
        batch.append(plan)
        locks += plan.locks
    if batch:
        yield batch


@contextmanager
def _unit(conn: Connection, own: bool, lock_timeout: float) -> Iterator[None]:
    """A transaction of the refresh's own (with a lock timeout), or a savepoint in the
    caller's transaction; undone if the block fails."""
    if own:
        with conn.begin():
            ms = max(1, round(lock_timeout * 1000))
            _ddl(conn, f"SET LOCAL lock_timeout = '{ms}ms'; SET LOCAL jit = off")
            yield
    else:
        with conn.begin_nested():
            yield


def _explain(plan: _Plan, exc: DBAPIError) -> str:
    """One line naming why a tenant's foreign tables could not be replaced."""
    code, msg = _pgcode(exc), first_line(exc)
    kept = "its foreign tables are unchanged"
    if code == "55P03":
        return f"a session held its foreign tables longer than the lock timeout ({msg}); {kept}"
    if code == "53200":
        return f"the veneer ran out of lock space ({msg}); {kept}"
    if code == "2BP01":
        return (
            f"cannot replace its foreign tables: {msg} (the veneer schema {plan.schema!r} must "
            f"hold nothing but PPP's foreign tables and types); {kept}"
        )
    if code in ("42704", "3F000"):
        named = [n for n in plan.others if f"{plan.schema}.{n}" in msg or f'"{n}"' in msg]
        hint = (
            f"{plan.schema}.{named[0]} is a {plan.others[named[0]]} type; the veneer creates a "
            "tenant's enum, domain and composite types only"
            if named
            else "a column type outside pg_catalog and the tenant schema must exist in the "
            "veneer under the same name"
        )
        return f"cannot create its foreign tables: {msg} ({hint}); {kept}"
    return f"cannot replace its foreign tables: {msg}; {kept}"


class _VeneerLost(Exception):
    pass


def _failed(conn: Connection, exc: DBAPIError) -> None:
    """Raise if the veneer itself is gone (not a tenant's problem)."""
    if exc.connection_invalidated or conn.invalidated or conn.closed:
        raise _VeneerLost(first_line(exc)) from exc


def _apply(
    conn: Connection, plans: Sequence[_Plan], settings: Settings, report: RefreshReport, own: bool
) -> None:
    """Run the plans in batches of bounded locks; a failed batch is run again tenant by
    tenant, each on its own, so that one tenant's failure leaves the others refreshed."""

    def done(batch: Sequence[_Plan]) -> None:
        for p in batch:
            report.revisions[p.schema] = p.revision
            if not p.statements:
                report.unchanged.append(p.schema)
            report.tables_created += p.tables_created
            report.tables_dropped += p.tables_dropped
            report.types_changed += p.types_changed

    for batch in _batches(plans):
        try:
            with _unit(conn, own, min(BATCH_LOCK_TIMEOUT, settings.lock_timeout)):
                _run(conn, batch)
        except DBAPIError as exc:
            _failed(conn, exc)
            log.info("refresh: a batch of %d tenant(s) failed (%s)", len(batch), first_line(exc))
            for plan in batch:
                try:
                    with _unit(conn, own, settings.lock_timeout):
                        _run(conn, [plan])
                except DBAPIError as exc2:
                    _failed(conn, exc2)
                    report.errors[plan.schema] = _explain(plan, exc2)
                    continue
                done([plan])
            continue
        done(batch)


class _Shards:
    """The shards' side of a refresh: a :class:`ShardReader` per shard, used from a thread
    each; a shard that cannot be read is an error for each of its tenants."""

    def __init__(self, settings: Settings, report: RefreshReport, nextval: bool) -> None:
        self.settings = settings
        self.report = report
        self.readers: dict[str, ShardReader] = {}
        #: The veneer has ``ppp_remote.nextval``: sequence defaults call it.
        self.nextval = nextval

    def _each(self, work: Mapping[str, list[str]], job: Any) -> dict[str, Any]:
        """``job(shard)`` for every shard of ``work`` (shard -> its tenants) in parallel."""
        out: dict[str, Any] = {}
        if not work:
            return out
        workers = max(1, min(len(work), self.settings.jobs))
        with ThreadPoolExecutor(workers) as pool:
            futures = {shard: pool.submit(job, shard) for shard in work}
            for shard, future in futures.items():
                try:
                    out[shard] = future.result()
                except PPPError as exc:
                    for schema in work[shard]:
                        self.report.errors[schema] = str(exc)
                except Exception as exc:  # reported per tenant, the others go on
                    for schema in work[shard]:
                        self.report.errors[schema] = (
                            f"cannot read shard {shard!r}: {first_line(exc)}"
                        )
        return out

    def tenants(
        self, wanted: Sequence[catalog.Tenant], revisions: Mapping[str, str | None] | None
    ) -> dict[str, RemoteTenant]:
        """Phase 1 for every wanted tenant (see :meth:`ShardReader.tenants`)."""
        by_shard = group_by_shard(wanted)
        for shard, schemas in by_shard.items():
            if shard not in self.settings.shards:
                for schema in schemas:
                    self.report.errors[schema] = (
                        f"its shard {shard!r} is not in the settings (PPP_SHARDS lists "
                        f"{', '.join(self.settings.shards) or 'none'})"
                    )
        work = {s: names for s, names in by_shard.items() if s in self.settings.shards}

        def read(shard: str) -> dict[str, RemoteTenant]:
            reader = ShardReader(self.settings.shards[shard], self.settings.connect_timeout)
            self.readers[shard] = reader
            mine = {s: r for s, r in (revisions or {}).items() if s in set(work[shard])}
            return reader.tenants(work[shard], mine)

        remote: dict[str, RemoteTenant] = {}
        for found in self._each(work, read).values():
            remote.update(found)
        return remote

    def definitions(self, plans: Sequence[_Plan]) -> dict[str, dict[str, str]]:
        """Phase 2: shard -> signature -> column list, for the tables the plans create (one
        table read per signature)."""
        wanted: dict[str, dict[str, tuple[str, str]]] = {}
        tenants: dict[str, list[str]] = {}
        for plan in plans:
            if plan.create_tables:
                mine = wanted.setdefault(plan.tenant.shard, {})
                tenants.setdefault(plan.tenant.shard, []).append(plan.schema)
                for name, sig in plan.create_tables:
                    mine.setdefault(sig, (plan.schema, name))
        found = self._each(
            tenants,
            lambda shard: self.readers[shard].definitions(
                wanted[shard], shard if self.nextval else None
            ),
        )
        return {shard: found.get(shard, {}) for shard in wanted}

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()


@contextmanager
def _reading(conn: Connection, own: bool) -> Iterator[None]:
    if own:
        with conn.begin():
            yield
    else:
        yield


def _refresh(
    conn: Connection,
    settings: Settings,
    tenants: Sequence[str] | None,
    revisions: Mapping[str, str | None] | None,
    full: bool,
    own: bool,
) -> RefreshReport:
    started = time.monotonic()
    report = RefreshReport()
    app = quote_ident(settings.veneer.app_role)
    with _reading(conn, own):
        found = catalog.find_tenants(conn, tenants=tenants)
        wanted = catalog.in_service(found)
        for t in found:
            if t.state == "removed" and tenants is not None:
                report.errors[t.schema] = (
                    "it was removed (ppp tenant remove): not wired again; create it anew instead"
                )
        _ensure_wired(conn, settings)
        if tenants is None:  # records of tenants no longer in the catalog
            conn.execute(
                text(
                    f"DELETE FROM {WIRED} w WHERE NOT EXISTS "
                    "(SELECT 1 FROM ppp.tenants t WHERE t.schema = w.schema)"
                )
            )

    with _reading(conn, own):
        nextval = bool(
            conn.execute(
                text("SELECT to_regprocedure('ppp_remote.nextval(text,text)') IS NOT NULL")
            ).scalar()
        )
    shards = _Shards(settings, report, nextval)
    try:
        # 1. The shards: every table's signature, one connection per shard, in parallel.
        remote = shards.tenants(wanted, revisions)
        log.debug("refresh: phase 1 on the shards after %.2f s", time.monotonic() - started)
        ready: list[catalog.Tenant] = []
        for t in wanted:
            if t.schema in report.errors:
                continue
            if not remote[t.schema].exists:
                report.pending.append(t.schema)
                continue
            ready.append(t)

        # 2. The veneer as it is, and what to change, tenant by tenant.
        with _reading(conn, own):
            if own:  # hash joins whatever the (possibly stale) statistics of the catalogs
                _ddl(conn, "SET LOCAL enable_nestloop = off; SET LOCAL jit = off")
            live = _read_live(conn, [t.schema for t in ready])
            enums = [
                (t.schema, n)
                for t in ready
                for n, ty in remote[t.schema].types.items()
                if ty.kind == "e"
                and live[t.schema].types.get(n, (0, ""))[1] == "e"
                and live[t.schema].wired.get(n, ("", "", 0))[1] != ty.signature
            ]
            labels = _read_labels(conn, enums)
        plans = [_diff(t, remote[t.schema], live[t.schema], labels, full, nextval) for t in ready]
        log.debug("refresh: compared after %.2f s", time.monotonic() - started)

        # 3. The column lists of the tables to create, one table per signature.
        definitions = shards.definitions(plans)
    finally:
        shards.close()
    log.debug("refresh: phase 2 on the shards after %.2f s", time.monotonic() - started)
    for plan in plans:
        if plan.schema in report.errors:
            continue
        try:
            _finish(plan, definitions.get(plan.tenant.shard, {}), app)
        except KeyError:
            report.errors[plan.schema] = (
                f"its tables changed on shard {plan.tenant.shard!r} while the refresh read "
                "them; refresh it again"
            )

    # 4. Apply: tenants with changes in batches of bounded locks, each tenant atomically.
    ok = [p for p in plans if p.schema not in report.errors]
    replaced = {n for p in ok if p.changes for n in p.drop_tables}
    if replaced:  # a cross-tenant view over a table would block its replacement
        try:
            with _unit(conn, own, settings.lock_timeout):
                views.drop_views(conn, sorted(replaced))
        except DBAPIError as exc:  # then the tenants whose tables it holds fail, by name
            _failed(conn, exc)
            log.warning("refresh: cannot drop the cross-tenant views: %s", first_line(exc))
    _apply(conn, [p for p in ok if p.changes], settings, report, own)
    still = [p for p in ok if not p.changes]
    written = sum(len(p.record) + len(p.forget) for p in ok if p.schema in report.revisions)
    if still or written >= _ANALYZE_AFTER:
        with _reading(conn, own):
            if still:
                catalog.mark_wired(conn, {p.schema: p.revision for p in still})
            if written >= _ANALYZE_AFTER:  # the next refresh plans with true sizes
                _ddl(conn, f"ANALYZE {WIRED}")
        for p in still:
            report.revisions[p.schema] = p.revision
            report.unchanged.append(p.schema)
    _rebuild_views(conn, settings, report, own)
    order = {t.schema: i for i, t in enumerate(wanted)}
    report.refreshed = sorted(report.revisions, key=order.__getitem__)
    report.revisions = {s: report.revisions[s] for s in report.refreshed}
    report.unchanged.sort(key=order.__getitem__)
    report.seconds = time.monotonic() - started
    log.info(
        "refresh: %d tenant(s) in step (%d unchanged), %d pending, %d failed; %d foreign "
        "table(s) created, %d dropped, %d type change(s) in %.2f s",
        len(report.refreshed),
        len(report.unchanged),
        len(report.pending),
        len(report.errors),
        report.tables_created,
        report.tables_dropped,
        report.types_changed,
        report.seconds,
    )
    return report


def _rebuild_views(conn: Connection, settings: Settings, report: RefreshReport, own: bool) -> None:
    """The cross-tenant views, after the tenants changed (a failure is reported, not raised:
    the tenants' own refresh stands)."""
    try:
        with _unit(conn, own, settings.lock_timeout):
            # In the caller's transaction (refresh_in), the tenants it wires count as live
            # even while still 'provisioning': the caller makes them active before it
            # commits, or rolls the views back with them.
            report.cross_tenant = views.rebuild(conn, include=() if own else list(report.revisions))
    except DBAPIError as exc:
        _failed(conn, exc)
        report.views_error = f"cannot rebuild the cross-tenant views: {first_line(exc)}"
        log.warning("refresh: %s", report.views_error)


def refresh_in(
    conn: Connection,
    settings: Settings,
    tenants: Sequence[str] | None = None,
    *,
    revisions: Mapping[str, str | None] | None = None,
    full: bool = False,
) -> RefreshReport:
    """:func:`refresh` inside the caller's transaction (e.g. a veneer migration's): every
    tenant in a savepoint of it, nothing committed here. Its locks last until the caller
    commits: meant for a few tenants."""
    lock(conn)
    try:
        return _refresh(conn, settings, tenants, revisions, full, own=False)
    except _VeneerLost as exc:
        raise PPPError(
            f"lost the connection to the veneer at {settings.veneer.masked_url('admin')}: {exc}"
        ) from None


def refresh(
    settings: Settings,
    tenants: Sequence[str] | None = None,
    *,
    revisions: Mapping[str, str | None] | None = None,
    full: bool = False,
) -> RefreshReport:
    """Bring the foreign tables of ``tenants`` (None: every tenant) in step with their shards.

    Reads every tenant's tables on its shard (one connection per shard, shards in parallel)
    and, per table, the signature of its foreign-table definition; compares it with PPP's
    record of what it wired (``ppp.wired_objects``) and re-creates only the foreign tables
    that are new or changed, drops those whose remote table is gone, and creates the
    tenant's enums, domains and composite types first (an enum's new labels are added). A
    tenant already in step costs no DDL. Tenants are changed in transactions of bounded
    locks (:data:`LOCK_BUDGET`), each tenant atomically: a reader sees its old or its new
    foreign tables, never none.

    ``veneer_app`` gets SELECT/INSERT/UPDATE/DELETE; the shard's ``alembic_version`` is left
    out. Each refreshed tenant's revision on its shard is recorded as ``wired_revision``
    (state pending -> active). A tenant whose schema is not on its shard yet is pending; a
    tenant that fails is in ``errors`` with the cause and keeps its old foreign tables, and
    the others are refreshed. Only an unreachable veneer or a missing catalog is a PPPError.

    ``revisions``: tenant -> revision the caller already knows (it just migrated them), so
    their version tables are not read again. ``full``: ignore the record, re-create every
    foreign table (after changing the veneer's wiring by hand).
    """
    with catalog.admin_connection(settings, begin=False) as conn:
        try:
            with conn.begin():
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": VENEER_LOCK_KEY})
            try:
                return _refresh(conn, settings, tenants, revisions, full, own=True)
            finally:
                if not (conn.invalidated or conn.closed):
                    with conn.begin():
                        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": VENEER_LOCK_KEY})
        except (_VeneerLost, OperationalError) as exc:
            raise PPPError(
                f"lost the connection to the veneer at {settings.veneer.masked_url('admin')}: "
                f"{exc if isinstance(exc, _VeneerLost) else first_line(exc)}"
            ) from None


def unwire(conn: Connection, schema: str) -> views.ViewReport:
    """Drop a tenant's foreign tables and types (its veneer schema) and PPP's record of
    them, then rebuild the cross-tenant views without it; its data on the shard stays."""
    _ddl(conn, f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    if conn.execute(text("SELECT to_regclass(:t)"), {"t": WIRED}).scalar() is not None:
        conn.execute(text(f"DELETE FROM {WIRED} WHERE schema = :s"), {"s": schema})
    return views.rebuild(conn)
