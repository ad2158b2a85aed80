"""Where every tenant of a shard stands, read in one round trip per shard.

The tenant migration runner, ``alembic current``, ``ppp status`` and the veneer refresh all
need the same fact: for each tenant schema on a shard, does the schema exist and which
revision(s) its ``alembic_version`` table holds. Reading it tenant by tenant costs a round
trip each; this reads a whole shard with one catalog query and one UNION ALL per chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ppp_env.identifiers import quote_ident, quote_literal

VERSION_TABLE = "alembic_version"
_CHUNK = 2000


@dataclass(frozen=True)
class TenantState:
    """A tenant schema on its shard: whether it exists, and its Alembic heads (sorted)."""

    schema: str
    exists: bool
    heads: tuple[str, ...] = ()

    @property
    def revision(self) -> str | None:
        return " ".join(self.heads) if self.heads else None


def read_states(cursor: Any, schemas: Sequence[str]) -> dict[str, TenantState]:
    """States of ``schemas`` on the shard behind a DB-API ``cursor`` (psycopg2)."""
    if not schemas:
        return {}
    cursor.execute(
        "SELECT n.nspname, c.oid IS NOT NULL FROM pg_namespace n "
        "LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = %s AND c.relkind = 'r' "
        "WHERE n.nspname = ANY(%s)",
        (VERSION_TABLE, list(schemas)),
    )
    found = dict(cursor.fetchall())
    with_table = [s for s in schemas if found.get(s)]
    heads: dict[str, list[str]] = {}
    for i in range(0, len(with_table), _CHUNK):
        chunk = with_table[i : i + _CHUNK]
        cursor.execute(
            " UNION ALL ".join(
                f"SELECT {quote_literal(s)}, version_num FROM {quote_ident(s)}.{VERSION_TABLE}"
                for s in chunk
            )
        )
        for schema, version in cursor.fetchall():
            heads.setdefault(schema, []).append(version)
    return {s: TenantState(s, s in found, tuple(sorted(heads.get(s, ())))) for s in schemas}


@dataclass(frozen=True)
class TenantStatus:
    """One line of ``ppp status``."""

    shard: str
    tenant: str
    revision: str | None
    migrations: str  # head | behind | no schema | unreachable
    veneer: str  # in step | stale | unknown


def fleet_status(
    settings: Any, tenants: Sequence[Any], heads: Sequence[str], connect: Any = None
) -> list[TenantStatus]:
    """Where each catalog tenant stands on its shard and in the veneer (one query per shard)."""
    from ppp_env import db

    connect = connect or db.connection
    by_shard: dict[str, list[Any]] = {}
    for t in tenants:
        by_shard.setdefault(t.shard, []).append(t)
    head_set = set(heads)
    out: list[TenantStatus] = []
    for shard, members in by_shard.items():
        try:
            with connect(settings.shard(shard), "admin", autocommit=True) as conn:
                states = read_states(conn.cursor(), [t.schema for t in members])
        except Exception:
            out.extend(
                TenantStatus(shard, t.schema, None, "unreachable", "unknown") for t in members
            )
            continue
        for t in members:
            st = states[t.schema]
            if not st.exists:
                where = "no schema"
            elif set(st.heads) == head_set:
                where = "head"
            else:
                where = "behind"
            veneer = "in step" if t.wired_revision == st.revision else "stale"
            out.append(TenantStatus(shard, t.schema, st.revision, where, veneer))
    return out
