"""The tenant lifecycle while the system runs: create at runtime, remove, list, doctor.

``create_tenant`` is the application's sign-up call (no revision file: the tenant's origin is
``runtime``); ``remove_tenant`` unwires a tenant and marks it removed (its data stays on its
shard unless dropped, after an optional verified archive); ``tenant_rows`` lists tenants with
their revision and size on their shard; ``doctor`` compares the catalog, the shards and the
veneer and reports every difference.
"""

from __future__ import annotations

from ppp_env.lifecycle.create import CreateResult, create_tenant
from ppp_env.lifecycle.doctor import DoctorReport, Finding, doctor
from ppp_env.lifecycle.listing import TenantRow, tenant_rows
from ppp_env.lifecycle.placement import POLICIES, choose_shard, placement_policy
from ppp_env.lifecycle.remove import RemoveResult, remove_tenant

__all__ = [
    "POLICIES",
    "CreateResult",
    "DoctorReport",
    "Finding",
    "RemoveResult",
    "TenantRow",
    "choose_shard",
    "create_tenant",
    "doctor",
    "placement_policy",
    "remove_tenant",
    "tenant_rows",
]
