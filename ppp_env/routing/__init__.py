"""The application's hot path: connections straight to a tenant's shard.

``TenantRouter(settings).connect(tenant)`` gives a SQLAlchemy connection on the tenant's
shard with its schema selected (psycopg2, or psycopg 3 with ``driver="psycopg"``);
``AsyncTenantRouter(settings, driver="asyncpg" | "psycopg")`` does the same for SQLAlchemy's
asyncio engine (``pip install 'ppp-env[async]'``); ``isolation.enable`` prepares strict
isolation.
"""

from ppp_env.routing.aio import AsyncPlacementListener, AsyncTenantRouter
from ppp_env.routing.errors import (
    PoolExhausted,
    RoutingError,
    ShardUnavailable,
    TenantMoved,
    TenantMoving,
    UnknownTenant,
)
from ppp_env.routing.placement import CatalogPlacement, Placement, PlacementListener
from ppp_env.routing.router import TenantRouter

__all__ = [
    "AsyncPlacementListener",
    "AsyncTenantRouter",
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
