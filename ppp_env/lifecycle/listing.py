"""``ppp tenant list``: the catalog's tenants with their revision and size on their shard.

One catalog query, then per shard one connection: the tenants' revisions (the shard's
version index, :func:`ppp_env.tenant_state.read_states`) and their sizes
(``pg_total_relation_size`` summed per schema) in one query each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ppp_env import db
from ppp_env.errors import PPPError
from ppp_env.settings import Settings
from ppp_env.tenant_state import group_by_shard, read_states
from ppp_env.veneer import catalog

SIZES_SQL = """
SELECT n.nspname, coalesce(sum(pg_total_relation_size(c.oid))
       FILTER (WHERE c.relkind IN ('r', 'm', 'p')), 0)::bigint
FROM pg_namespace n LEFT JOIN pg_class c ON c.relnamespace = n.oid
WHERE n.nspname = ANY(%s) GROUP BY n.nspname
"""


@dataclass
class TenantRow:
    schema: str
    shard: str
    state: str
    origin: str
    wired_revision: str | None
    #: The tenant's revision on its shard (None: base or no schema).
    revision: str | None = None
    #: Whether its schema exists on its shard (None: the shard could not be read).
    exists: bool | None = None
    #: Bytes of its tables, indexes and TOAST on its shard (None: unknown).
    size: int | None = None
    #: Why the shard could not be read.
    error: str | None = None
    #: Its tags (``ppp tenant tag``).
    tags: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def tenant_rows(
    settings: Settings,
    *,
    shards: Sequence[str] | None = None,
    tenants: Sequence[str] | None = None,
) -> list[TenantRow]:
    """The catalog's tenants (by shard, then schema), with what their shards say."""
    with catalog.admin_connection(settings) as conn:
        found = catalog.find_tenants(conn, shards=shards, tenants=tenants)
        origins = catalog.origins(conn, [t.schema for t in found])
    rows = [
        TenantRow(
            t.schema,
            t.shard,
            t.state,
            origins.get(t.schema, "revision"),
            t.wired_revision,
            tags=dict(t.tags),
        )
        for t in found
    ]
    by_schema = {r.schema: r for r in rows}
    for shard, schemas in group_by_shard(found).items():
        try:
            inst = settings.shard(shard)
            with db.connection(
                inst, "admin", autocommit=True, connect_timeout=settings.connect_timeout
            ) as sc:
                cur = sc.cursor()
                states = read_states(cur, schemas)
                cur.execute(SIZES_SQL, (list(schemas),))
                sizes = {name: int(size) for name, size in cur.fetchall()}
        except PPPError as exc:
            for s in schemas:
                by_schema[s].error = str(exc)
            continue
        for s in schemas:
            st = states.get(s)
            row = by_schema[s]
            row.exists = bool(st and st.exists)
            row.revision = st.revision if st else None
            row.size = sizes.get(s)
    return rows


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def format_tags(tags: dict[str, str]) -> str:
    """Tags as ``key=value`` pairs, by key (``-`` when none)."""
    return " ".join(f"{k}={v}" for k, v in sorted(tags.items())) or "-"
