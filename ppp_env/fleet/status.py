"""Where the fleet stands: every tenant's state on its shard, grouped and compared with the
heads and the veneer (``alembic current``, ``ppp status``, the refresh)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ppp_env.tenant_state import TenantState, group_by_shard, read_states


@dataclass(frozen=True)
class TenantStatus:
    """One line of ``ppp status``."""

    shard: str
    tenant: str
    revision: str | None
    migrations: str  # head | behind | no schema | unreachable
    veneer: str  # in step | stale | unknown


def shard_states(
    settings: Any, tenants: Sequence[Any]
) -> tuple[dict[str, TenantState], dict[str, str]]:
    """Every tenant's state, one connection and query per shard; errors by shard name.

    An unreachable shard does not stop the others: its tenants are missing from the
    states and its error (URL masked) is in the second mapping.
    """
    from ppp_env import db
    from ppp_env.errors import PPPError

    states: dict[str, TenantState] = {}
    errors: dict[str, str] = {}
    for shard, schemas in group_by_shard(tenants).items():
        try:
            with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
                states.update(read_states(conn.cursor(), schemas))
        except PPPError as exc:
            errors[shard] = str(exc)
    return states, errors


def fleet_status(
    settings: Any, tenants: Sequence[Any], heads: Sequence[str]
) -> tuple[list[TenantStatus], dict[str, str]]:
    """Where each catalog tenant stands on its shard and in the veneer; errors by shard."""
    states, errors = shard_states(settings, tenants)
    head_set = set(heads)
    out: list[TenantStatus] = []
    for t in tenants:
        st = states.get(t.schema)
        if st is None:
            out.append(TenantStatus(t.shard, t.schema, None, "unreachable", "unknown"))
            continue
        if not st.exists:
            where = "no schema"
        elif set(st.heads) == head_set:
            where = "head"
        else:
            where = "behind"
        veneer = "in step" if t.wired_revision == st.revision else "stale"
        out.append(TenantStatus(t.shard, t.schema, st.revision, where, veneer))
    return out, errors
