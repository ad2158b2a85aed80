"""The fleet: tenant migrations over every shard (``alembic upgrade head``).

Rooms: ``options`` (how a run behaves), ``results`` (what it did), ``status`` (where every
tenant stands, read through ``ppp_env.tenant_state``), ``hooks`` (what the worker needs from
Alembic, and what the renderer reports per revision), ``rendering`` (steps rendered once or
run online, through ``ppp_env.alembic_adapter``), ``segments`` (a tenant's path cut into
rendered and online pieces), ``tenant_sql`` (the SQL around a tenant's transaction),
``retry`` (when a blocked tenant comes back), ``worker`` (one shard on one connection),
``pool`` (the parent: a worker process per shard), ``env`` (what ``migrations/env.py``
runs), ``commands`` (the fleet as library calls), ``progress`` (output).

Revisions that must know the tenant they run for call :func:`current_tenant`.
"""

from __future__ import annotations

from ppp_env.fleet.hooks import current_tenant
from ppp_env.fleet.options import RunOptions
from ppp_env.fleet.results import FleetResult, TenantResult
from ppp_env.fleet.status import shard_states
from ppp_env.tenant_state import TenantState, group_by_shard, read_states

__all__ = [
    "FleetResult",
    "RunOptions",
    "TenantResult",
    "TenantState",
    "current_tenant",
    "group_by_shard",
    "read_states",
    "shard_states",
]
