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

#: (schema, table, column, type) of every table a tenant's veneer schema imports.
COLUMNS_SQL = """
SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ({kinds})
  AND c.relname <> ALL(%(excluded)s)
"""

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
    SELECT c.relnamespace, 'I ' || pg_get_indexdef(i.indexrelid)
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN ns ON ns.oid = c.relnamespace
    UNION ALL
    SELECT k.connamespace, 'K ' || r.relname || ' ' || k.conname || ' '
           || pg_get_constraintdef(k.oid)
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


#: A table's columns as (name, type), by table, by schema.
Columns = dict[str, dict[str, set[tuple[str, str]]]]


@dataclass
class _ShardView:
    """What one shard holds, read in one connection."""

    schemas: set[str]
    states: dict[str, Any]
    columns: Columns
    prints: dict[str, str]


def _columns(rows: Sequence[Sequence[Any]]) -> Columns:
    found: Columns = {}
    for schema, table, column, typ in rows:
        cols = found.setdefault(schema, {}).setdefault(table, set())
        if column is not None:
            cols.add((column, typ))
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
    views: dict[str, _ShardView] = {}
    for shard in shard_names:
        try:
            views[shard] = _read_shard(settings, shard, [t for t in chosen if t.shard == shard])
        except PPPError as exc:
            add([Finding("unreachable", shard, None, str(exc))])
    add(_schema_findings(chosen, views, heads))
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
        cur.execute("SET search_path = pg_catalog")
        cur.execute(SCHEMAS_SQL, (list(SYSTEM),))
        schemas = {r[0] for r in cur.fetchall()}
        states = read_states(cur, names)
        cur.execute(
            COLUMNS_SQL.format(kinds=_kinds("rvfmp")),
            {"schemas": names, "excluded": list(EXCLUDED_TABLES)},
        )
        columns = _columns(cur.fetchall())
        cur.execute(FINGERPRINT_SQL, (names,))
        prints = dict(cur.fetchall())
    return _ShardView(schemas, states, columns, prints)


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
    """Foreign tables missing, extra or stale against the tables on the tenants' shards."""
    active = [t for t in active if t.shard in views]
    if not active:
        return []
    with catalog.admin_connection(settings) as conn:
        conn.exec_driver_sql("SET LOCAL search_path = pg_catalog")
        veneer = _columns(
            conn.exec_driver_sql(
                COLUMNS_SQL.format(kinds="'f'"),
                {"schemas": [t.schema for t in active], "excluded": list(EXCLUDED_TABLES)},
            ).all()
        )
    found = []
    for t in active:
        remote = views[t.shard].columns.get(t.schema, {})
        local = veneer.get(t.schema, {})
        for table in sorted(set(remote) - set(local)):
            found.append(Finding("veneer_missing", t.shard, t.schema, f"no foreign table {table}"))
        for table in sorted(set(local) - set(remote)):
            detail = f"foreign table {table}: gone on shard"
            found.append(Finding("veneer_extra", t.shard, t.schema, detail))
        for table in sorted(set(local) & set(remote)):
            if local[table] != remote[table]:
                found.append(_stale(t, table, local[table], remote[table]))
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
