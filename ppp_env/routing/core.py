"""What the sync and the asyncio routers share, whatever the driver: the placement cache, the
tenant's login (the shard's app role, or its own role in strict isolation), the statement
that selects the tenant, and how a failure is read (moved, moving, unknown, shard down).

:class:`RoutingCore` does no I/O of its own except through its :class:`PlacementSource`
(``read``), which the sync router calls in its own thread and the asyncio router in a worker
thread; the drivers' work lives in ``router.py`` (psycopg2, psycopg 3) and ``aio.py``
(asyncpg, psycopg 3).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from sqlalchemy.engine import URL

from ppp_env.db import first_line
from ppp_env.identifiers import quote_ident, quote_literal, validate_identifier, validate_tenant
from ppp_env.routing.errors import (
    RoutingError,
    ShardUnavailable,
    TenantMoved,
    UnknownTenant,
    moving_mid_transaction,
    unknown,
)
from ppp_env.routing.placement import CatalogPlacement, Placement, PlacementSource
from ppp_env.settings import Instance, Settings

APPLICATION_NAME = "ppp-router"
#: Errors that may mean "the tenant's schema is not (or no longer writable) here": undefined
#: table, schema or function, read-only transaction, insufficient privilege.
MOVE_SIGNS = {"42P01", "3F000", "25006", "42501", "42883"}
#: Errors that mean the tenant's own role could not log in (strict isolation not enabled).
_LOGIN_REFUSED = {"28P01", "28000"}
#: States in which a tenant is routed without a second look.
ROUTABLE = ("active", "pending")


def sqlstate(exc: BaseException | None) -> str | None:
    """The SQLSTATE of a driver's error (psycopg2 and SQLAlchemy's asyncpg adapter: pgcode;
    psycopg 3 and asyncpg: sqlstate), of SQLAlchemy's wrapper's ``orig`` too."""
    orig = getattr(exc, "orig", None)
    err = orig if isinstance(orig, BaseException) else exc
    code = getattr(err, "pgcode", None) or getattr(err, "sqlstate", None)
    return code if isinstance(code, str) else None


class RoutingCore:
    """Placement cache and the driver-independent decisions of a tenant router."""

    def __init__(
        self,
        settings: Settings,
        *,
        shared_schemas: Iterable[str] = (),
        strict: bool = False,
        move_wait: float = 0.0,
        placement: PlacementSource | None = None,
    ) -> None:
        self.settings = settings
        self.shared_schemas = tuple(validate_identifier(s, "schema name") for s in shared_schemas)
        self.strict = strict
        self.move_wait = move_wait
        self.source: PlacementSource = placement or CatalogPlacement(settings)
        self._cache: dict[str, Placement] = {}
        self._loaded_all = False
        self._generation = 0
        self._changed = threading.Condition()
        self._selects: dict[tuple[str, bool, str], str] = {}

    # -- the cache ---------------------------------------------------------------------------
    def _on_change(self, schema: str | None) -> None:
        with self._changed:
            self._generation += 1
            if schema is None:
                self._cache.clear()
                self._loaded_all = False
            else:
                self._cache.pop(schema, None)
            self._changed.notify_all()

    def invalidate(self, tenant: str | None = None) -> None:
        """Forget one tenant's cached placement (None: every tenant's)."""
        self._on_change(tenant)

    def _read(self, schemas: list[str] | None) -> dict[str, Placement]:
        """Read placements from the source (blocking) and cache them, unless a change was
        notified meanwhile (then what was read may be older than the change)."""
        with self._changed:
            generation = self._generation
        found = self.source.read(schemas)
        with self._changed:
            if generation == self._generation:
                self._cache.update(found)
                if schemas is None:
                    self._loaded_all = True
        return found

    def _lookup(self, tenant: str) -> Placement:
        """The tenant's placement: cached, else every tenant's read at once (the first time),
        else this one's (blocking)."""
        found = self._cache.get(tenant)
        if found is not None:
            return found
        validate_tenant(tenant)
        if not self._loaded_all:
            found = self._read(None).get(tenant)
        if found is None:
            found = self._read([tenant]).get(tenant)
        if found is None:
            raise unknown(tenant)
        return found

    @staticmethod
    def _usable(p: Placement, tenant: str, read_only: bool) -> bool:
        """Whether a connection may be given now (False: a write to a moving tenant, which
        waits up to ``move_wait`` or fails); a clear error for states that never route."""
        if p.state in ("removing", "removed"):
            raise UnknownTenant(f"tenant {tenant!r} is {p.state}: it cannot be used")
        if p.state == "provisioning":
            raise RoutingError(f"tenant {tenant!r} is still being created: retry later")
        return p.state != "moving" or read_only

    # -- the tenant's login and selection ----------------------------------------------------
    def _shard(self, p: Placement) -> Instance:
        try:
            return self.settings.shards[p.shard]
        except KeyError:
            raise RoutingError(
                f"tenant {p.schema!r} lives on shard {p.shard!r}, which these settings do not "
                f"have (PPP_SHARDS: {', '.join(self.settings.shards)})"
            ) from None

    def _pool_key(self, p: Placement) -> tuple[str, str]:
        """One pool per shard; in strict isolation one per tenant."""
        return (p.shard, p.schema if self.strict else "")

    def _url(self, p: Placement, drivername: str) -> URL:
        """Where the tenant's pool connects: its shard, as the app role or the tenant's role."""
        inst = self._shard(p)
        url = inst.url("app").set(drivername=drivername)
        if self.strict:
            from ppp_env.routing.isolation import role_name, role_password

            role = role_name(inst, p.schema)
            url = url.set(username=role, password=role_password(inst, role))
        return url

    def _path(self, tenant: str) -> str:
        """The tenant's ``search_path``: the tenant, then the shared schemas (quoted)."""
        return ", ".join(quote_ident(s) for s in (tenant, *self.shared_schemas))

    def _select(self, tenant: str, read_only: bool) -> str:
        """``SELECT set_config('search_path', <tenant, shared>, true)`` (transaction-local),
        with the read-only setting when asked: one statement that selects the tenant, to put
        in front of the transaction's first statement."""
        key = (tenant, read_only, "select")
        sql = self._selects.get(key)
        if sql is None:
            path = quote_literal(self._path(tenant))
            sql = f"SELECT pg_catalog.set_config('search_path', {path}, true)" + (
                ", pg_catalog.set_config('transaction_read_only', 'on', true)" if read_only else ""
            )
            self._selects[key] = sql
        return sql

    def _set_local(self, tenant: str, read_only: bool) -> str:
        """The same as ``SET LOCAL`` commands, for a batch that already begins the
        transaction (no statement to plan, no row to send back)."""
        key = (tenant, read_only, "set")
        sql = self._selects.get(key)
        if sql is None:
            sql = f"SET LOCAL search_path = {self._path(tenant)}" + (
                "; SET LOCAL transaction_read_only = on" if read_only else ""
            )
            self._selects[key] = sql
        return sql

    # -- failures ----------------------------------------------------------------------------
    def _connect_error(self, p: Placement, exc: BaseException) -> RoutingError:
        """A connection to the tenant's shard failed: strict isolation not enabled, or the
        shard unavailable (its URL shown with the password masked)."""
        inst = self._shard(p)
        text = first_line(exc)
        if self.strict and (
            sqlstate(exc) in _LOGIN_REFUSED or "authentication failed" in text.lower()
        ):
            return RoutingError(
                f"strict isolation is not enabled for tenant {p.schema!r} on shard "
                f"{p.shard!r}: run ppp_env.routing.isolation.enable(settings, {p.schema!r}) "
                f"({text})"
            )
        return ShardUnavailable(
            p.shard,
            f"shard {p.shard!r} is unavailable for tenant {p.schema!r} "
            f"({inst.masked_url('app')}): {text}",
        )

    def _after_failure(
        self, exc: BaseException, tenant: str, p: Placement, fresh: Placement | None
    ) -> RoutingError | None:
        """What a failed statement means, given the tenant's placement read again: moved,
        moving, removed, or (None) nothing the router can add to the database's error."""
        if fresh is None:
            self.invalidate(tenant)
            return UnknownTenant(
                f"tenant {tenant!r} was removed from the catalog during this connection"
            )
        if fresh.shard != p.shard:
            return TenantMoved(tenant, p.shard, fresh.shard)
        if fresh.state == "moving":
            return moving_mid_transaction(tenant, p.shard)
        return None

    @staticmethod
    def _may_be_moved(exc: BaseException) -> bool:
        return sqlstate(exc) in MOVE_SIGNS

    @staticmethod
    def _may_lack_schema(exc: BaseException) -> bool:
        return sqlstate(exc) in ("42P01", "3F000")

    @staticmethod
    def _no_schema(tenant: str, fresh: Placement) -> RoutingError:
        return RoutingError(
            f"tenant {tenant!r} has no schema on shard {fresh.shard!r} yet (state "
            f"{fresh.state}): run `ppp migrate` to create it"
        )

    #: The statement that tells whether the tenant's schema exists on a shard.
    SCHEMA_HERE = "SELECT pg_catalog.to_regnamespace({}) IS NOT NULL"

    @classmethod
    def _schema_here_sql(cls, p: Placement) -> str:
        return cls.SCHEMA_HERE.format(quote_literal(quote_ident(p.schema)))


def guard(dbapi_connection: Any, record: Any) -> None:
    """Pool ``connect`` event: from now on the new connection refuses statements without a
    tenant (on the driver's connection: SQLAlchemy's asyncio adapters wrap it)."""
    record.driver_connection.ppp_guard = True
