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
WHERE n.nspname = ANY(%s) AND c.relkind IN ({kinds}) AND c.relname <> ALL(%s)
"""

#: One md5 per schema over its tables, columns, types, indexes and constraints, with the
#: schema's own name taken out (tenant types and references are qualified by it).
FINGERPRINT_SQL = """
SELECT n.nspname, md5(coalesce(string_agg(
         replace(x.line, quote_ident(n.nspname) || '.', ''), E'\\n' ORDER BY x.line), ''))
FROM pg_namespace n
LEFT JOIN LATERAL (
    SELECT 'T ' || c.relname || ' ' || c.relkind::text AS line
    FROM pg_class c WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
    UNION ALL
    SELECT 'C ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
           || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
           || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
    FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
         AND NOT a.attisdropped
    LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
    WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
    UNION ALL
    SELECT 'I ' || pg_get_indexdef(i.indexrelid)
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace = n.oid
    UNION ALL
    SELECT 'K ' || r.relname || ' ' || k.conname || ' ' || pg_get_constraintdef(k.oid)
    FROM pg_constraint k JOIN pg_class r ON r.oid = k.conrelid WHERE k.connamespace = n.oid
    UNION ALL
    SELECT 'Y ' || t.typname || ' ' || t.typtype::text || coalesce(' ' || (
        SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
        FROM pg_enum e WHERE e.enumtypid = t.oid), '')
    FROM pg_type t WHERE t.typnamespace = n.oid AND t.typtype IN ('e', 'd', 'r')
) x ON true
WHERE n.nspname = ANY(%s) GROUP BY n.nspname
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


def doctor(
    settings: Settings,
    config: str | Path | None = None,
    *,
    tenants: Sequence[str] | None = None,
) -> DoctorReport:
    """Every difference between the catalog, the shards and the veneer. ``tenants`` narrows
    the per-tenant checks (orphan schemas are then only looked for among those names)."""
    ini = find_alembic_ini(config)
    heads = tenant_heads(ini)
    report = DoctorReport()
    add = report.findings.append
    with catalog.admin_connection(settings) as conn:
        catalog.require_catalog(conn)
        every = catalog.find_tenants(conn)
        moves = catalog.list_moves(conn)
        shard_names = [s.name for s in catalog.list_shards(conn)]
    wanted = set(tenants) if tenants is not None else None
    chosen = [t for t in every if wanted is None or t.schema in wanted]
    if wanted is not None:
        unknown = sorted(wanted - {t.schema for t in every})
        if unknown:
            raise PPPError(f"unknown tenant(s) {', '.join(unknown)}: not in the catalog")
    report.tenants, report.shards = len(chosen), len(shard_names)
    claimed = {t.schema for t in every}
    for m in moves:
        if wanted is None or m.schema in wanted:
            add(
                Finding(
                    "move",
                    m.source,
                    m.schema,
                    f"move {m.source} -> {m.target} ({m.mode}) stopped at step {m.step!r}"
                    + (f": {m.error}" if m.error else "")
                    + f" since {m.updated_at:%Y-%m-%d %H:%M:%S}",
                )
            )
    for t in chosen:
        if t.state == "provisioning":
            add(
                Finding(
                    "provisioning",
                    t.shard,
                    t.schema,
                    "created at runtime but not finished: run `ppp tenant create` again",
                )
            )

    # -- the shards ---------------------------------------------------------------------------
    schemas_on: dict[str, set[str]] = {}
    shard_columns: dict[str, dict[str, set[tuple[str, str]]]] = {}
    by_revision: dict[str, list[tuple[str, str, str]]] = {}
    for shard in shard_names:
        mine = [t for t in chosen if t.shard == shard]
        try:
            inst = settings.shard(shard)
            with db.connection(
                inst, "admin", autocommit=True, connect_timeout=settings.connect_timeout
            ) as sc:
                cur = sc.cursor()
                cur.execute("SET search_path = pg_catalog")
                cur.execute(SCHEMAS_SQL, (list(SYSTEM),))
                schemas_on[shard] = {r[0] for r in cur.fetchall()}
                names = [t.schema for t in mine]
                states = read_states(cur, names)
                cur.execute(
                    COLUMNS_SQL.format(kinds=_kinds("rvfmp")), (names, list(EXCLUDED_TABLES))
                )
                for schema, table, column, typ in cur.fetchall():
                    cols = shard_columns.setdefault(schema, {}).setdefault(table, set())
                    if column is not None:
                        cols.add((column, typ))
                cur.execute(FINGERPRINT_SQL, (names,))
                prints = dict(cur.fetchall())
        except PPPError as exc:
            add(Finding("unreachable", shard, None, str(exc)))
            continue
        for t in mine:
            st = states.get(t.schema)
            if st is None or not st.exists:
                if t.state != "provisioning":
                    add(
                        Finding(
                            "missing_schema",
                            shard,
                            t.schema,
                            f"in the catalog (state {t.state}) but no schema on its shard",
                        )
                    )
                continue
            if st.heads != heads and t.state != "removed":
                add(
                    Finding(
                        "behind_head",
                        shard,
                        t.schema,
                        f"at {st.revision or 'base'}, the tenant head is {' '.join(heads)}",
                    )
                )
            by_revision.setdefault(st.revision or "base", []).append(
                (t.schema, shard, prints.get(t.schema, ""))
            )
    if schemas_on:
        everywhere = (
            set.intersection(*schemas_on.values()) if len(schemas_on) == len(shard_names) else set()
        )
        for shard, present in schemas_on.items():
            for schema in sorted(present - claimed - everywhere):
                if wanted is None or schema in wanted:
                    add(Finding("orphan_schema", shard, schema, "no catalog entry claims it"))

    # -- the veneer ---------------------------------------------------------------------------
    removed = [t.schema for t in chosen if t.state == "removed"]
    if removed:
        with catalog.admin_connection(settings) as conn:
            wired = conn.execute(
                text(
                    "SELECT nspname::text FROM pg_namespace "
                    "WHERE nspname::text = ANY(CAST(:s AS text[])) ORDER BY 1"
                ),
                {"s": removed},
            ).scalars()
            shard_of = {t.schema: t.shard for t in chosen}
            for schema in wired:
                add(
                    Finding(
                        "removed_wired",
                        shard_of[schema],
                        schema,
                        "removed, but its veneer schema is back (a refresh wired it again): "
                        f"run `ppp tenant remove {schema}` again",
                    )
                )
    active = [t for t in chosen if t.state == "active" and t.shard in schemas_on]
    if active:
        veneer_columns: dict[str, dict[str, set[tuple[str, str]]]] = {}
        with catalog.admin_connection(settings) as conn:
            conn.exec_driver_sql("SET LOCAL search_path = pg_catalog")
            rows = conn.exec_driver_sql(
                COLUMNS_SQL.format(kinds="'f'").replace("%s", "%(p)s", 1).replace("%s", "%(x)s"),
                {"p": [t.schema for t in active], "x": list(EXCLUDED_TABLES)},
            ).all()
        for schema, table, column, typ in rows:
            cols = veneer_columns.setdefault(schema, {}).setdefault(table, set())
            if column is not None:
                cols.add((column, typ))
        for t in active:
            remote = shard_columns.get(t.schema, {})
            local = veneer_columns.get(t.schema, {})
            for table in sorted(set(remote) - set(local)):
                add(Finding("veneer_missing", t.shard, t.schema, f"no foreign table {table}"))
            for table in sorted(set(local) - set(remote)):
                add(
                    Finding(
                        "veneer_extra", t.shard, t.schema, f"foreign table {table}: gone on shard"
                    )
                )
            for table in sorted(set(local) & set(remote)):
                if local[table] != remote[table]:
                    gone = sorted(c for c, _ in local[table] - remote[table])
                    new = sorted(c for c, _ in remote[table] - local[table])
                    add(
                        Finding(
                            "veneer_stale",
                            t.shard,
                            t.schema,
                            f"foreign table {table} differs from the shard's (shard has "
                            f"{', '.join(new) or 'nothing new'}; veneer has "
                            f"{', '.join(gone) or 'nothing more'}): run `ppp veneer refresh "
                            f"{t.schema}`",
                        )
                    )

    # -- drift --------------------------------------------------------------------------------
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
            if fp != reference:
                detail = (
                    f"at {revision} its tables, columns, types, indexes or constraints differ "
                    f"from {len(like)} other tenant(s) at the same revision "
                    f"(e.g. {', '.join(like[:3])})"
                    if reference is not None
                    else f"at {revision} the {len(members)} tenants have {len(counts)} "
                    "different shapes and none is the most common"
                )
                add(Finding("drift", shard, schema, detail))
    report.findings.sort(key=lambda f: (f.kind, f.shard or "", f.schema or ""))
    return report
