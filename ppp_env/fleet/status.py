"""Where the fleet stands: every tenant's state on its shard, grouped and compared with the
heads and the veneer (``alembic current``, ``ppp status``, the refresh)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ppp_env.outside_record import OutsideRecord, read_records
from ppp_env.tenant_state import TenantState, group_by_shard, read_states
from ppp_env.veneer.catalog import WIRED_STATES


@dataclass(frozen=True)
class TenantStatus:
    """One line of ``ppp status``."""

    shard: str
    tenant: str
    revision: str | None
    migrations: str  # head | behind | no schema | unreachable
    veneer: str  # in step | stale | unknown | not wired (PPP_VENEER_WIRING=on-demand)
    #: Inside a revision that runs outside a transaction: interrupted (a killed run) or
    #: running now (``OutsideRecord.to_json``, with its one-line ``description``).
    outside: dict[str, Any] | None = None


def outside_line(row: Mapping[str, Any]) -> str | None:
    """``interrupted shard/tenant: ...`` (with the repair command) for a row of ``ppp status``
    (a :class:`TenantStatus` as a dict), or None."""
    outside = row.get("outside")
    if not outside:
        return None
    where = f"{row['shard']}/{row['tenant']}"
    if outside["running"]:
        return f"outside {where}: {outside['description']}"
    return f"interrupted {where}: {outside['description']}: `ppp tenant repair {row['tenant']}`"


def shard_states(
    settings: Any,
    tenants: Sequence[Any],
    outside: dict[str, OutsideRecord] | None = None,
) -> tuple[dict[str, TenantState], dict[str, str]]:
    """Every tenant's state, one connection and query per shard, the shards read at once
    (a thread each); errors by shard name.

    An unreachable shard does not stop the others: its tenants are missing from the
    states and its error (URL masked) is in the second mapping. With ``outside``, the
    tenants found inside a revision outside a transaction go there (two small queries more).
    """
    from ppp_env import db

    by_shard = group_by_shard(tenants)

    def read(shard: str) -> tuple[dict[str, TenantState], Any]:
        with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
            cur = conn.cursor()
            found = read_states(cur, by_shard[shard])
            records = read_records(cur, shard, found) if outside is not None else {}
            return found, records

    read_by_shard, failed = db.each_at_once(by_shard, read)
    states: dict[str, TenantState] = {}
    for found, records in read_by_shard.values():
        states.update(found)
        if outside is not None:
            outside.update(records)
    return states, {shard: str(exc) for shard, exc in failed.items()}


def fleet_status(
    settings: Any, tenants: Sequence[Any], heads: Sequence[str]
) -> tuple[list[TenantStatus], dict[str, str]]:
    """Where each catalog tenant stands on its shard and in the veneer; errors by shard."""
    records: dict[str, OutsideRecord] = {}
    states, errors = shard_states(settings, tenants, records)
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
        if settings.wires_on_demand and t.state not in WIRED_STATES:
            veneer = "not wired"
        rec = records.get(t.schema)
        out.append(
            TenantStatus(
                t.shard, t.schema, st.revision, where, veneer, rec.to_json() if rec else None
            )
        )
    return out, errors
