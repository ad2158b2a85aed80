"""The application's hot path: connections straight to a tenant's shard.

``TenantRouter(settings).connect(tenant)`` gives a SQLAlchemy connection on the tenant's
shard with its schema selected; ``isolation.enable`` prepares strict isolation.
"""

from ppp_env.routing.placement import CatalogPlacement, Placement, PlacementListener
from ppp_env.routing.router import (
    PoolExhausted,
    RoutingError,
    ShardUnavailable,
    TenantMoved,
    TenantMoving,
    TenantRouter,
    UnknownTenant,
)

__all__ = [
    "CatalogPlacement",
    "Placement",
    "PlacementListener",
    "PoolExhausted",
    "RoutingError",
    "ShardUnavailable",
    "TenantMoved",
    "TenantMoving",
    "TenantRouter",
    "UnknownTenant",
]
