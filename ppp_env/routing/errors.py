"""The router's errors, shared by the sync and the asyncio routers (one wording for both)."""

from __future__ import annotations

from ppp_env.errors import PPPError


class RoutingError(PPPError):
    """The router cannot give a connection for this tenant (the message says why)."""


class UnknownTenant(RoutingError):
    pass


class TenantMoved(RoutingError):
    """The tenant left the shard this connection is on; retry: the router knows its new home."""

    def __init__(self, tenant: str, old_shard: str, new_shard: str) -> None:
        super().__init__(
            f"tenant {tenant!r} moved from shard {old_shard!r} to {new_shard!r}; nothing was "
            "written on the old shard: retry the transaction (it goes to the new shard)"
        )
        self.tenant, self.old_shard, self.new_shard = tenant, old_shard, new_shard


class TenantMoving(RoutingError):
    """The tenant is being moved: writes are refused until the move finishes."""


class ShardUnavailable(RoutingError):
    def __init__(self, shard: str, message: str) -> None:
        super().__init__(message)
        self.shard = shard


class PoolExhausted(RoutingError):
    pass


def unknown(tenant: str) -> UnknownTenant:
    return UnknownTenant(f"unknown tenant {tenant!r}: not in the catalog (see `ppp tenant list`)")


def moving_at_checkout(tenant: str, shard: str) -> TenantMoving:
    return TenantMoving(
        f"tenant {tenant!r} is being moved off shard {shard!r}: writes are refused until the "
        "move finishes (retry later, or connect with read_only=True to read meanwhile)"
    )


def moving_mid_transaction(tenant: str, shard: str) -> TenantMoving:
    return TenantMoving(
        f"tenant {tenant!r} is being moved off shard {shard!r}: writes are refused until the "
        "move finishes; retry later"
    )


def pool_exhausted(
    tenant: str, shard: str, timeout: float, size: int, overflow: int
) -> PoolExhausted:
    return PoolExhausted(
        f"no free connection to shard {shard!r} for tenant {tenant!r} within {timeout:g} s "
        f"(pool_size {size}, max_overflow {overflow}): raise them, or return connections sooner"
    )


def connection_lost(tenant: str, shard: str, why: str) -> ShardUnavailable:
    return ShardUnavailable(
        shard, f"lost the connection to shard {shard!r} for tenant {tenant!r}: {why}"
    )


def missing_async_extra(what: str, exc: ImportError) -> RoutingError:
    return RoutingError(
        f"{what} needs the optional dependencies of PPP's async extra (missing: {exc.name}): "
        "pip install 'ppp-env[async]'"
    )


#: A statement on a pooled connection that did not come through the router's connect().
UNROUTED = (
    "a statement on a connection of the tenant router's pool without a tenant: use the "
    "router's connect(tenant), never the router's engines directly"
)
