"""``ppp doctor``: compare the catalog, the shards and the veneer; report every difference.

Per shard one connection and a few queries (schemas, revisions, tables and columns, a schema
fingerprint per tenant); the veneer's foreign tables in one query. Kinds of finding:

``unreachable``        a shard (or the veneer) cannot be read
``missing_schema``     a catalog tenant whose schema is not on its shard
``provisioning``       a tenant created at runtime whose creation did not finish
``orphan_schema``      a schema on a shard that no catalog entry claims (not ``ppp``,
                       ``public``, a system schema, or a schema on every shard: the shared
                       chain's schemas exist in every shard database)
``veneer_missing``     a table of an active tenant without its foreign table in the veneer
``veneer_stale``       a foreign table whose columns differ from the shard's table
``veneer_extra``       a foreign table whose shard table is gone
``behind_head``        a tenant not at the tenant chain's head
``interrupted_outside_transaction``
                       a tenant left inside a revision that runs outside a transaction
                       (``autocommit_block``) by a killed run: which revision, since when,
                       the indexes it built (valid or INVALID); ``ppp tenant repair``
``move``               a move left in ``ppp.moves``
``removed_wired``      a removed tenant whose veneer schema exists again (a refresh of
                       every tenant wires removed ones too)
``drift``              tenants at the same revision whose tables, columns, types, indexes or
                       constraints differ (the outliers against the most common fingerprint)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import text

from ppp_env import db
from ppp_env.errors import PPPError
from ppp_env.outside_record import OutsideRecord, read_records
from ppp_env.settings import Settings
from ppp_env.tenant_state import read_states
from ppp_env.veneer import catalog
from ppp_env.veneer.env import find_alembic_ini

SYSTEM = ("ppp", "public", "information_schema")
EXCLUDED_TABLES = ("alembic_version",)

SCHEMAS_SQL = """
SELECT nspname FROM pg_namespace
WHERE nspname NOT LIKE 'pg\\_%%' AND nspname <> ALL(%s)
"""

#: (schema, table, md5 of its columns' names and types) of every table a tenant's veneer
#: schema imports: one row per table, compared as a string (the columns themselves are read
#: only for the tables whose signatures differ, :data:`COLUMNS_SQL`).
SIGNATURES_SQL = """
SELECT n.nspname, c.relname, md5(coalesce(string_agg(
           a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ',' ORDER BY a.attname),
       ''))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ({kinds})
  AND c.relname <> ALL(%(excluded)s)
GROUP BY n.nspname, c.relname
"""
#: (schema, table, column, type) of the tables named by (schema, table) pairs.
COLUMNS_SQL = """
SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
FROM unnest(%(schemas)s::text[], %(tables)s::text[]) AS w(nspname, relname)
JOIN pg_namespace n ON n.nspname = w.nspname
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.relname
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
"""
#: Memory for the sorts of the fingerprint query (4 MB, the default, spills them to disk).
_WORK_MEM = "64MB"

#: One md5 per schema over its tables, columns, types, indexes and constraints, with the
#: schema's own name taken out (tenant types and references are qualified by it). Set-based:
#: each catalog is joined once with the tenants' namespaces (a lateral subquery per schema
#: would scan pg_class, which has no index on relnamespace, once per tenant).
FINGERPRINT_SQL = """
WITH ns AS (SELECT oid, nspname FROM pg_namespace WHERE nspname = ANY(%s)),
lines AS (
    SELECT c.relnamespace AS ns, 'T ' || c.relname || ' ' || c.relkind::text AS line
    FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
    UNION ALL
    SELECT c.relnamespace, 'C ' || c.relname || '.' || a.attname || ' '
           || format_type(a.atttypid, a.atttypmod)
           || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
           || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
    FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
    UNION ALL
    SELECT c.relnamespace, 'I ' || c.relname || ' ON ' || t.relname || ' USING ' || am.amname
           || CASE WHEN i.indisunique THEN ' unique' ELSE '' END
           || CASE WHEN i.indisprimary THEN ' primary' ELSE '' END || ' ('
           || coalesce((SELECT string_agg(a.attname, ','
                                          ORDER BY array_position(i.indkey::int2[], a.attnum))
               FROM pg_attribute a
               WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[])), '') || ') '
           -- operator classes and options by oid and flags: built-in ones keep their oids
           || i.indclass::text || ' ' || i.indoption::text
           -- deparsed only where there is something to deparse (rare, and 45 us each)
           || CASE WHEN i.indexprs IS NULL THEN '' ELSE ' ' || pg_get_indexdef(i.indexrelid) END
           || coalesce(' WHERE ' || pg_get_expr(i.indpred, i.indrelid), '')
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN ns ON ns.oid = c.relnamespace
    JOIN pg_class t ON t.oid = i.indrelid JOIN pg_am am ON am.oid = c.relam
    UNION ALL
    SELECT k.connamespace, 'K ' || r.relname || ' ' || k.conname || ' ' || k.contype::text || ' '
           || CASE WHEN k.contype IN ('p', 'u', 'f') THEN
                  coalesce((SELECT string_agg(a.attname, ','
                                              ORDER BY array_position(k.conkey, a.attnum))
                   FROM pg_attribute a
                   WHERE a.attrelid = k.conrelid AND a.attnum = ANY(k.conkey)), '')
                  || CASE WHEN k.contype = 'f' THEN ' -> ' || k.confrelid::regclass::text || ' ('
                      || coalesce((SELECT string_agg(a.attname, ','
                                                     ORDER BY array_position(k.confkey, a.attnum))
                          FROM pg_attribute a
                          WHERE a.attrelid = k.confrelid AND a.attnum = ANY(k.confkey)), '')
                      || ') ' || k.confupdtype::text || k.confdeltype::text
                      || k.confmatchtype::text ELSE '' END
                  || CASE WHEN k.condeferrable THEN ' deferrable' ELSE '' END
                  || CASE WHEN k.condeferred THEN ' deferred' ELSE '' END
              -- checks and exclusions: deparsed
              ELSE pg_get_constraintdef(k.oid) END
    FROM pg_constraint k JOIN ns ON ns.oid = k.connamespace JOIN pg_class r ON r.oid = k.conrelid
    UNION ALL
    SELECT t.typnamespace, 'Y ' || t.typname || ' ' || t.typtype::text || coalesce(' ' || (
        SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
        FROM pg_enum e WHERE e.enumtypid = t.oid), '')
    FROM pg_type t JOIN ns ON ns.oid = t.typnamespace WHERE t.typtype IN ('e', 'd', 'r')
)
SELECT ns.nspname, md5(coalesce(string_agg(
         replace(l.line, quote_ident(ns.nspname) || '.', ''), E'\\n' ORDER BY l.line), ''))
FROM ns LEFT JOIN lines l ON l.ns = ns.oid GROUP BY ns.nspname
"""


@dataclass(frozen=True)
class Finding:
    kind: str
    shard: str | None
    schema: str | None
    detail: str

    def line(self) -> str:
        where = "/".join(p for p in (self.shard, self.schema) if p)
        return f"{self.kind:<15} {where}: {self.detail}"


@dataclass
class DoctorReport:
    findings: list[Finding] = field(default_factory=list)
    tenants: int = 0
    shards: int = 0

    @property
    def ok(self) -> bool:
        return not self.findings

    def kinds(self) -> Counter[str]:
        return Counter(f.kind for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "tenants": self.tenants,
            "shards": self.shards,
            "findings": [asdict(f) for f in self.findings],
        }


def tenant_heads(ini: Path) -> tuple[str, ...]:
    try:
        script = ScriptDirectory.from_config(Config(str(ini), ini_section="alembic"))
        return tuple(sorted(script.get_heads()))
    except CommandError as exc:
        raise PPPError(f"cannot read the tenant chain: {exc}") from None


def _kinds(kinds: str) -> str:
    return ", ".join(f"'{k}'" for k in kinds)


#: The signature of a table's columns (:data:`SIGNATURES_SQL`), by table, by schema.
Signatures = dict[str, dict[str, str]]


@dataclass
class _ShardView:
    """What one shard holds, read in one connection."""

    schemas: set[str]
    states: dict[str, Any]
    columns: Signatures
    prints: dict[str, str]
    outside: dict[str, OutsideRecord] = field(default_factory=dict)


def _signatures(rows: Sequence[Sequence[Any]]) -> Signatures:
    found: Signatures = {}
    for schema, table, sig in rows:
        found.setdefault(schema, {})[table] = sig
    return found


def _pairs(pairs: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    return {"schemas": [p[0] for p in pairs], "tables": [p[1] for p in pairs]}


def _columns(
    rows: Sequence[Sequence[Any]], pairs: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], set[Any]]:
    """(schema, table) -> its columns as (name, type), from :data:`COLUMNS_SQL`'s rows."""
    found: dict[tuple[str, str], set[Any]] = {p: set() for p in pairs}
    for schema, table, column, typ in rows:
        found[(schema, table)].add((column, typ))
    return found


def doctor(
    settings: Settings,
    config: str | Path | None = None,
    *,
    tenants: Sequence[str] | None = None,
) -> DoctorReport:
    """Every difference between the catalog, the shards and the veneer. ``tenants`` narrows
    the per-tenant checks (orphan schemas are then only looked for among those names)."""
    heads = tenant_heads(find_alembic_ini(config))
    with catalog.admin_connection(settings) as conn:
        catalog.require_catalog(conn)
        every = catalog.find_tenants(conn)
        moves = catalog.list_moves(conn)
        shard_names = [s.name for s in catalog.list_shards(conn)]
    wanted = set(tenants) if tenants is not None else None
    if wanted is not None:
        unknown = sorted(wanted - {t.schema for t in every})
        if unknown:
            raise PPPError(f"unknown tenant(s) {', '.join(unknown)}: not in the catalog")
    chosen = [t for t in every if wanted is None or t.schema in wanted]
    report = DoctorReport(tenants=len(chosen), shards=len(shard_names))
    add = report.findings.extend
    add(_move_findings(moves, wanted))
    add(_provisioning_findings(chosen))
    views, failed = db.each_at_once(  # the shards read at once, a thread each
        shard_names, lambda s: _read_shard(settings, s, [t for t in chosen if t.shard == s])
    )
    add([Finding("unreachable", shard, None, str(exc)) for shard, exc in failed.items()])
    add(_schema_findings(chosen, views, heads))
    add(_outside_findings(views))
    add(_orphan_findings(views, {t.schema for t in every}, len(shard_names), wanted))
    add(_removed_wired_findings(settings, chosen))
    add(_veneer_findings(settings, [t for t in chosen if t.state == "active"], views))
    add(_drift_findings(_by_revision(chosen, views)))
    report.findings.sort(key=lambda f: (f.kind, f.shard or "", f.schema or ""))
    return report


def _move_findings(moves: Sequence[Any], wanted: set[str] | None) -> list[Finding]:
    return [
        Finding(
            "move",
            m.source,
            m.schema,
            f"move {m.source} -> {m.target} ({m.mode}) stopped at step {m.step!r}"
            + (f": {m.error}" if m.error else "")
            + f" since {m.updated_at:%Y-%m-%d %H:%M:%S}",
        )
        for m in moves
        if wanted is None or m.schema in wanted
    ]


def _provisioning_findings(chosen: Sequence[Any]) -> list[Finding]:
    return [
        Finding(
            "provisioning",
            t.shard,
            t.schema,
            "created at runtime but not finished: run `ppp tenant create` again",
        )
        for t in chosen
        if t.state == "provisioning"
    ]


def _read_shard(settings: Settings, shard: str, mine: Sequence[Any]) -> _ShardView:
    """The shard's schemas, its tenants' revisions, tables, columns and fingerprints."""
    names = [t.schema for t in mine]
    inst = settings.shard(shard)
    with db.connection(
        inst, "admin", autocommit=True, connect_timeout=settings.connect_timeout
    ) as sc:
        cur = sc.cursor()
        cur.execute(f"SET search_path = pg_catalog; SET work_mem = '{_WORK_MEM}'; SET jit = off")
        cur.execute(SCHEMAS_SQL, (list(SYSTEM),))
        schemas = {r[0] for r in cur.fetchall()}
        states = read_states(cur, names)
        cur.execute(
            SIGNATURES_SQL.format(kinds=_kinds("rvfmp")),
            {"schemas": names, "excluded": list(EXCLUDED_TABLES)},
        )
        columns = _signatures(cur.fetchall())
        cur.execute(FINGERPRINT_SQL, (names,))
        prints = dict(cur.fetchall())
        outside = read_records(cur, shard, states)
    return _ShardView(schemas, states, columns, prints, outside)


def _schema_findings(
    chosen: Sequence[Any], views: dict[str, _ShardView], heads: tuple[str, ...]
) -> list[Finding]:
    """Tenants without their schema, and tenants behind the chain's head."""
    found = []
    for t in chosen:
        if t.shard not in views:
            continue
        st = views[t.shard].states.get(t.schema)
        if st is None or not st.exists:
            if t.state != "provisioning":
                detail = f"in the catalog (state {t.state}) but no schema on its shard"
                found.append(Finding("missing_schema", t.shard, t.schema, detail))
        elif st.heads != heads and t.state != "removed":
            detail = f"at {st.revision or 'base'}, the tenant head is {' '.join(heads)}"
            found.append(Finding("behind_head", t.shard, t.schema, detail))
    return found


def _outside_findings(views: dict[str, _ShardView]) -> list[Finding]:
    """Tenants a killed run left inside a revision outside a transaction (not one running)."""
    return [
        Finding(
            "interrupted_outside_transaction",
            shard,
            schema,
            f"{rec.describe()}: run `ppp tenant repair {schema}`",
        )
        for shard, view in views.items()
        for schema, rec in sorted(view.outside.items())
        if not rec.running
    ]


def _orphan_findings(
    views: dict[str, _ShardView], claimed: set[str], shards: int, wanted: set[str] | None
) -> list[Finding]:
    """Schemas no catalog entry claims (a schema on every shard is the shared chain's)."""
    if not views:
        return []
    present = [v.schemas for v in views.values()]
    everywhere = set.intersection(*present) if len(views) == shards else set()
    return [
        Finding("orphan_schema", shard, schema, "no catalog entry claims it")
        for shard, view in views.items()
        for schema in sorted(view.schemas - claimed - everywhere)
        if wanted is None or schema in wanted
    ]


def _removed_wired_findings(settings: Settings, chosen: Sequence[Any]) -> list[Finding]:
    removed = {t.schema: t.shard for t in chosen if t.state == "removed"}
    if not removed:
        return []
    with catalog.admin_connection(settings) as conn:
        wired = conn.execute(
            text(
                "SELECT nspname::text FROM pg_namespace "
                "WHERE nspname::text = ANY(CAST(:s AS text[])) ORDER BY 1"
            ),
            {"s": list(removed)},
        ).scalars()
        return [
            Finding(
                "removed_wired",
                removed[schema],
                schema,
                "removed, but its veneer schema is back (a refresh wired it again): "
                f"run `ppp tenant remove {schema}` again",
            )
            for schema in wired
        ]


def _veneer_findings(
    settings: Settings, active: Sequence[Any], views: dict[str, _ShardView]
) -> list[Finding]:
    """Foreign tables missing, extra or stale against the tables on the tenants' shards (their
    column signatures compared; the columns read for the stale ones only, to name them)."""
    active = [t for t in active if t.shard in views]
    if not active:
        return []
    found = []
    stale: list[tuple[Any, str]] = []
    with catalog.admin_connection(settings) as conn:
        conn.exec_driver_sql("SET LOCAL search_path = pg_catalog")
        veneer = _signatures(
            conn.exec_driver_sql(
                SIGNATURES_SQL.format(kinds="'f'"),
                {"schemas": [t.schema for t in active], "excluded": list(EXCLUDED_TABLES)},
            ).all()
        )
        for t in active:
            remote = views[t.shard].columns.get(t.schema, {})
            local = veneer.get(t.schema, {})
            for table in sorted(set(remote) - set(local)):
                detail = f"no foreign table {table}"
                found.append(Finding("veneer_missing", t.shard, t.schema, detail))
            for table in sorted(set(local) - set(remote)):
                detail = f"foreign table {table}: gone on shard"
                found.append(Finding("veneer_extra", t.shard, t.schema, detail))
            stale += [(t, n) for n in sorted(set(local) & set(remote)) if local[n] != remote[n]]
        pairs = [(t.schema, n) for t, n in stale]
        mine = _columns(conn.exec_driver_sql(COLUMNS_SQL, _pairs(pairs)).all(), pairs)
    theirs: dict[tuple[str, str], set[Any]] = {}
    for shard in dict.fromkeys(t.shard for t, _n in stale):  # one connection per shard
        keys = [(t.schema, n) for t, n in stale if t.shard == shard]
        with db.connection(settings.shard(shard), "admin", autocommit=True) as sc:
            cur = sc.cursor()
            cur.execute(COLUMNS_SQL, _pairs(keys))
            theirs.update(_columns(cur.fetchall(), keys))
    found += [_stale(t, n, mine[(t.schema, n)], theirs[(t.schema, n)]) for t, n in stale]
    return found


def _stale(
    t: Any, table: str, local: set[tuple[str, str]], remote: set[tuple[str, str]]
) -> Finding:
    gone = sorted(c for c, _ in local - remote)
    new = sorted(c for c, _ in remote - local)
    return Finding(
        "veneer_stale",
        t.shard,
        t.schema,
        f"foreign table {table} differs from the shard's (shard has "
        f"{', '.join(new) or 'nothing new'}; veneer has "
        f"{', '.join(gone) or 'nothing more'}): run `ppp veneer refresh {t.schema}`",
    )


def _by_revision(
    chosen: Sequence[Any], views: dict[str, _ShardView]
) -> dict[str, list[tuple[str, str, str]]]:
    """(schema, shard, fingerprint) of every tenant whose schema exists, by revision."""
    groups: dict[str, list[tuple[str, str, str]]] = {}
    for t in chosen:
        view = views.get(t.shard)
        st = view.states.get(t.schema) if view else None
        if view is not None and st is not None and st.exists:
            groups.setdefault(st.revision or "base", []).append(
                (t.schema, t.shard, view.prints.get(t.schema, ""))
            )
    return groups


def _drift_findings(by_revision: dict[str, list[tuple[str, str, str]]]) -> list[Finding]:
    """Tenants at one revision whose shape differs from the most common one there."""
    found = []
    for revision, members in sorted(by_revision.items()):
        counts = Counter(fp for _s, _h, fp in members)
        if len(counts) < 2:
            continue
        top = max(counts.values())
        leaders = [fp for fp, n in counts.items() if n == top]
        # One most common shape: the others are the outliers. A tie: nobody is the norm.
        reference = leaders[0] if len(leaders) == 1 else None
        like = sorted(s for s, _h, fp in members if fp == reference)
        for schema, shard, fp in sorted(members):
            if fp == reference:
                continue
            detail = (
                f"at {revision} its tables, columns, types, indexes or constraints differ "
                f"from {len(like)} other tenant(s) at the same revision "
                f"(e.g. {', '.join(like[:3])})"
                if reference is not None
                else f"at {revision} the {len(members)} tenants have {len(counts)} "
                "different shapes and none is the most common"
            )
            found.append(Finding("drift", shard, schema, detail))
    return found
