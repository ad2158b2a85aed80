"""Tenants as their shards have them, read for the veneer's refresh.

Per shard, one connection (as its admin role, with ``search_path = pg_catalog`` like the
remote sessions of postgres_fdw) and two phases: every table's signature and the tenant's
types (phase 1, a few queries per 2,000 tenants), then the foreign-table column list of one
table per signature the veneer needs (phase 2): the same catalog query IMPORT FOREIGN SCHEMA
runs, so the veneer creates its foreign tables locally, with no round trip per tenant.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ppp_env.db import connect
from ppp_env.settings import Instance
from ppp_env.tenant_state import read_states, revision_heads

#: Remote tables never imported: the shard's per-tenant Alembic version table.
EXCLUDED_TABLES = ("alembic_version",)
#: How many tenants one query on a shard covers.
_CHUNK = 2000
#: Type kinds the veneer creates (pg_type.typtype): enum, domain, composite.
CREATABLE_TYPES = {"e": "enum", "d": "domain", "c": "composite"}
#: The others, named in errors only.
OTHER_TYPES = {"r": "range", "b": "base", "p": "pseudo"}


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
class Tracking:
    """A tenant's row of ``ppp.tenant_versions`` with what its version changes changed (see
    :mod:`ppp_env.tenant_state`), as phase 1 read it."""

    heads: tuple[str, ...]
    updated_at: datetime
    #: Oids of relations changed since ``since`` (None: unknown).
    changed: frozenset[int] | None
    since: tuple[str, ...] | None
    #: The last transaction that added to ``changed`` (text of an xid8), None: none yet.
    xact: str | None


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
    #: Table -> its oid on the shard.
    oids: Mapping[str, int] = field(default_factory=dict)
    #: The tenant's change tracking row, when its shard keeps one.
    tracking: Tracking | None = None
    #: Set when only the relations changed since the veneer wired the tenant were read
    #: (``tables`` holds those still in its schema): their oids.
    changed: frozenset[int] | None = None


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
_SIGNATURES = f"""SELECT r.nspname, r.relname, r.oid::bigint, x.sig FROM r CROSS JOIN LATERAL (
    SELECT {_SIGNATURE} AS sig {_ATTRIBUTES.format(joins="")}) x"""
#: Phase 1, every table: its oid and signature.
_REMOTE_SIGNATURES = f"WITH r AS ({_RELATIONS}) {_SIGNATURES}"
#: Phase 1, the relations (schema, oid) a tenant's version changes changed that are still in
#: its schema: their current names, oids and signatures.
_CHANGED_SIGNATURES = f"""
WITH r AS (
    SELECT c.oid, c.relnamespace, n.nspname, c.relname
    FROM unnest(%(schemas)s::text[], %(oids)s::oid[]) AS w(nspname, oid)
    JOIN pg_class c ON c.oid = w.oid
    JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = w.nspname
    WHERE c.relkind IN ('r', 'v', 'f', 'm', 'p') AND NOT c.relispartition
      AND c.relname <> ALL(%(excluded)s))
{_SIGNATURES}"""
#: The tracking rows of tenants (shards whose index has the columns).
_TRACKING = """
SELECT schema_name, heads, updated_at, changed, changed_since, changed_xact::text
FROM ppp.tenant_versions WHERE schema_name = ANY(%s)
"""
_HAS_TRACKING = """SELECT EXISTS (SELECT 1 FROM pg_attribute
    WHERE attrelid = to_regclass('ppp.tenant_versions') AND attname = 'changed_xact')"""
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
        #: Whether the shard's index keeps change tracking rows (read once).
        self.has_tracking: bool | None = None
        #: Table signatures phase 1 read.
        self.tables_read = 0

    def close(self) -> None:
        self.conn.close()

    def tenants(
        self,
        schemas: Sequence[str],
        revisions: Mapping[str, str | None] | None = None,
        follow: Mapping[str, str | None] | None = None,
    ) -> dict[str, RemoteTenant]:
        """Phase 1: whether each schema exists, its revision, its tables' oids and
        signatures, its types and its change tracking row; a few queries per 2,000 tenants,
        whatever their number of tables. The column lists come in phase 2
        (:meth:`definitions`).

        ``follow``: tenant -> the revision the veneer wired it at, for tenants whose tables
        may be read partially: only the relations its version changes changed since then,
        when its shard's tracking row names them (see :meth:`_followed`)."""
        known = dict(revisions or {})
        out: dict[str, RemoteTenant] = {}
        for i in range(0, len(schemas), _CHUNK):
            chunk = list(schemas[i : i + _CHUNK])
            exists, revision, tracked = self._states(chunk, known)
            tracking = self._tracking(chunk)
            partial = self._followed(chunk, follow or {}, revision, tracked, tracking)
            tables, oids = self._signatures([s for s in chunk if s not in partial], partial)
            types = self._types(chunk)
            for schema in chunk:
                out[schema] = RemoteTenant(
                    schema in exists,
                    revision.get(schema),
                    tables.get(schema, {}),
                    types.get(schema, {}),
                    oids=oids.get(schema, {}),
                    tracking=tracking.get(schema),
                    changed=partial.get(schema),
                )
        self.conn.rollback()
        return out

    def _states(
        self, chunk: Sequence[str], known: Mapping[str, str | None]
    ) -> tuple[set[str], dict[str, str | None], set[str]]:
        """The schemas that exist, their revisions, and those whose index row is exact."""
        cur = self.cur
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
        return exists, revision, {s for s, st in states.items() if st.tracked}

    def _tracking(self, chunk: Sequence[str]) -> dict[str, Tracking]:
        """The tenants' tracking rows (none on a shard whose index predates them)."""
        if self.has_tracking is None:
            self.cur.execute(_HAS_TRACKING)
            self.has_tracking = bool(self.cur.fetchone()[0])
        if not self.has_tracking:
            return {}
        self.cur.execute(_TRACKING, (list(chunk),))
        return {
            schema: Tracking(
                tuple(sorted(heads)),
                updated,
                None if changed is None else frozenset(int(o) for o in changed),
                None if since is None else tuple(sorted(since)),
                xact,
            )
            for schema, heads, updated, changed, since, xact in self.cur.fetchall()
        }

    @staticmethod
    def _followed(
        chunk: Sequence[str],
        follow: Mapping[str, str | None],
        revision: Mapping[str, str | None],
        tracked: set[str],
        tracking: Mapping[str, Tracking],
    ) -> dict[str, frozenset[int]]:
        """Tenants read partially -> the oids to read: those of ``follow`` whose tracking row
        is exact (the version table's trigger is there), at the revision just read, knows
        what changed (not NULL), and started at the revision the veneer wired."""
        out: dict[str, frozenset[int]] = {}
        for schema in chunk:
            row = tracking.get(schema)
            if schema not in follow or schema not in tracked or row is None:
                continue
            if row.changed is None or row.since is None:
                continue
            if row.heads != revision_heads(revision.get(schema)) or row.since != revision_heads(
                follow[schema]
            ):
                continue
            out[schema] = row.changed
        return out

    def _signatures(
        self, full: Sequence[str], partial: Mapping[str, frozenset[int]]
    ) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, int]]]:
        """schema -> table -> signature, and -> oid: every table of ``full``, the changed
        relations of ``partial``."""
        tables: dict[str, dict[str, str]] = {}
        oids: dict[str, dict[str, int]] = {}
        excluded = list(EXCLUDED_TABLES)
        rows: list[tuple[str, str, int, str]] = []
        if full:
            self.cur.execute(_REMOTE_SIGNATURES, {"schemas": list(full), "excluded": excluded})
            rows += self.cur.fetchall()
        pairs = [(s, o) for s, changed in partial.items() for o in sorted(changed)]
        if pairs:
            self.cur.execute(
                _CHANGED_SIGNATURES,
                {
                    "schemas": [p[0] for p in pairs],
                    "oids": [p[1] for p in pairs],
                    "excluded": excluded,
                },
            )
            rows += self.cur.fetchall()
        for schema, table, oid, sig in rows:
            tables.setdefault(schema, {})[table] = sig
            oids.setdefault(schema, {})[table] = int(oid)
        self.tables_read += len(rows)
        return tables, oids

    def _types(self, chunk: Sequence[str]) -> dict[str, dict[str, RemoteType]]:
        self.cur.execute(_REMOTE_TYPES, {"schemas": list(chunk)})
        types: dict[str, dict[str, RemoteType]] = {}
        for schema, name, kind, body, labels, depends in self.cur.fetchall():
            sig = hashlib.md5(f"{kind} {body}".encode()).hexdigest()
            types.setdefault(schema, {})[name] = RemoteType(
                name, kind, sig, body, tuple(labels or ()), tuple(depends or ())
            )
        return types

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
