"""The veneer: the catalog (which shard homes which tenant), the postgres_fdw wiring (a foreign
server and user mappings per shard), each tenant's foreign tables, the veneer's Alembic
environment and the tenant onboarding revisions.

The refresh and the wiring calls most callers need are importable from here.
"""

from __future__ import annotations

from ppp_env.veneer.tables import (
    RefreshReport,
    read_remote,
    refresh,
    refresh_in,
    unwire,
    unwire_tenants,
)
from ppp_env.veneer.wiring import drop_all_wiring, lock, lock_down_catalog, reconcile

__all__ = [
    "RefreshReport",
    "drop_all_wiring",
    "lock",
    "lock_down_catalog",
    "read_remote",
    "reconcile",
    "refresh",
    "refresh_in",
    "unwire",
    "unwire_tenants",
]
