"""Direct tenant routing: a connection on the tenant's shard, the tenant's schema selected.

One SQLAlchemy engine (QueuePool) per shard, as the shard's app role, shared by every
tenant of that shard; in strict isolation one small pool per tenant, logged in as the
tenant's own role (:mod:`ppp_env.routing.isolation`). Placement is read from the catalog
once and cached; a listener on the veneer drops what changed. The driver is psycopg2 (the
default) or psycopg 3 (``driver="psycopg"``, ``pip install 'ppp-env[async]'``); the
asyncio router is :class:`ppp_env.routing.aio.AsyncTenantRouter`. What both share (the
cache, the errors, the selecting statement) is :class:`ppp_env.routing.core.RoutingCore`.

Selecting the schema costs no round trip: the first statement of every transaction on a
routed connection carries, in the same query string, ``set_config('search_path', <tenant>,
true)`` (transaction-local); with psycopg 3, which sends ``BEGIN`` on its own, the
``set_config`` goes in front of the transaction's first statement, bound client-side
(``ppp_env.routing._psycopg``). The setting ends with the
transaction, so a connection back in the pool holds no tenant; new connections start with
an empty ``search_path`` (not ``public``), and a statement on a connection that did not
come through the router is refused (by the DBAPI cursor): no statement runs with an unset
or another tenant's schema. A tenant whose schema is not on the shard (a finished move the
router has not heard of, a tenant not created yet) makes its first table access fail
(undefined table: nothing resolves, nothing is written); the router then re-reads the
placement and raises :class:`TenantMoved` (retry: it goes to the new shard) or a clear
error.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import psycopg2.extensions
from sqlalchemy import create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool

from ppp_env.db import first_line
from ppp_env.errors import PPPError
from ppp_env.routing.core import APPLICATION_NAME, ROUTABLE, RoutingCore, guard
from ppp_env.routing.errors import (
    UNROUTED,
    PoolExhausted,
    RoutingError,
    ShardUnavailable,
    TenantMoved,
    TenantMoving,
    UnknownTenant,
    connection_lost,
    missing_async_extra,
    moving_at_checkout,
    pool_exhausted,
)
from ppp_env.routing.placement import Placement, PlacementListener, PlacementSource
from ppp_env.settings import Settings

__all__ = [
    "APPLICATION_NAME",
    "PoolExhausted",
    "RoutingError",
    "ShardUnavailable",
    "TenantMoved",
    "TenantMoving",
    "TenantRouter",
    "UnknownTenant",
]

_IDLE = psycopg2.extensions.STATUS_READY
SyncDriver = Literal["psycopg2", "psycopg"]


class TenantRouter(RoutingCore):
    """Connections and ORM sessions routed straight to each tenant's shard.

    ``shared_schemas`` follow the tenant in ``search_path``. ``strict=True`` logs in as the
    tenant's own role (see :func:`ppp_env.routing.isolation.enable`), one pool per tenant.
    ``listen=False`` skips the LISTEN thread: a stale placement is then found by the first
    statement of a transaction (the tenant's schema is missing on the old shard).
    ``move_wait`` bounds how long a checkout waits for a tenant in state ``moving``.
    ``driver``: ``psycopg2`` (SQLAlchemy's ``postgresql+psycopg2``) or ``psycopg``
    (psycopg 3, ``postgresql+psycopg``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        shared_schemas: Iterable[str] = (),
        pool_size: int = 5,
        max_overflow: int = 5,
        pool_timeout: float = 5.0,
        pool_recycle: int = -1,
        strict: bool = False,
        listen: bool = True,
        move_wait: float = 0.0,
        placement: PlacementSource | None = None,
        driver: SyncDriver = "psycopg2",
    ) -> None:
        if driver not in ("psycopg2", "psycopg"):
            raise RoutingError(f"unknown driver {driver!r}: expected psycopg2 or psycopg")
        super().__init__(
            settings,
            shared_schemas=shared_schemas,
            strict=strict,
            move_wait=move_wait,
            placement=placement,
        )
        self.driver = driver
        self._psycopg: Any = None
        if driver == "psycopg":
            try:
                from ppp_env.routing import _psycopg
            except ImportError as exc:
                raise missing_async_extra("TenantRouter(driver='psycopg')", exc) from None
            self._psycopg = _psycopg
        self.pool_size, self.max_overflow = pool_size, max_overflow
        self.pool_timeout, self.pool_recycle = pool_timeout, pool_recycle
        self._engines: dict[tuple[str, str], Engine] = {}
        self._engines_lock = threading.Lock()
        self._prefixes: dict[str, str] = {}
        self.listener: PlacementListener | None = None
        if listen:
            self.listener = PlacementListener(settings, self._on_change)
            self.listener.start()

    # -- placement ---------------------------------------------------------------------------
    def placement(self, tenant: str) -> Placement:
        """The tenant's placement (cached; read from the catalog on a miss)."""
        return self._lookup(tenant)

    def _routable(self, tenant: str, read_only: bool) -> Placement:
        p = self._cache.get(tenant)
        if p is not None and p.state in ROUTABLE:
            return p  # the hot path: no clock, no validation again
        deadline = time.monotonic() + self.move_wait
        while True:
            p = self._lookup(tenant)
            if self._usable(p, tenant, read_only):
                return p
            left = deadline - time.monotonic()
            if left <= 0:
                raise moving_at_checkout(tenant, p.shard)
            with self._changed:
                if self._cache.get(tenant) == p:
                    self._changed.wait(min(left, 0.5))

    # -- pools -------------------------------------------------------------------------------
    def engine(self, p: Placement) -> Engine:
        """The pool a tenant's connections come from (the shard's; the tenant's if strict)."""
        key = self._pool_key(p)
        eng = self._engines.get(key)
        if eng is not None:
            return eng
        with self._engines_lock:
            eng = self._engines.get(key)
            if eng is None:
                eng = self._create_engine(p)
                # After SQLAlchemy's own connect handlers: from here on, a tenant is required.
                event.listen(eng.pool, "connect", guard)
                self._engines[key] = eng
        return eng

    def _create_engine(self, p: Placement) -> Engine:
        pool = {
            "poolclass": QueuePool,
            "pool_size": self.pool_size,
            "max_overflow": self.max_overflow,
            "pool_timeout": self.pool_timeout,
            "pool_recycle": self.pool_recycle,
        }
        timeout = self.settings.connect_timeout
        if self._psycopg is None:
            return create_engine(
                self._url(p, "postgresql+psycopg2"),
                connect_args={
                    "connect_timeout": timeout,
                    "application_name": APPLICATION_NAME,
                    # Until a tenant is selected: nothing but pg_catalog, never public.
                    "options": "-c search_path=",
                    "connection_factory": _RoutedConnection,
                },
                **pool,
            )
        url = self._url(p, "postgresql+psycopg")
        return create_engine(
            url, **self._psycopg.engine_args(url, timeout, APPLICATION_NAME), **pool
        )

    def _prefix(self, tenant: str, read_only: bool) -> str:
        """What selects the tenant: psycopg2 puts it in front of the first statement."""
        key = f"{tenant}/{int(read_only)}"
        prefix = self._prefixes.get(key)
        if prefix is None:
            prefix = self._select(tenant, read_only)
            if self._psycopg is None:
                prefix += "; "
            self._prefixes[key] = prefix
        return prefix

    def _schema_here(self, p: Placement) -> bool | None:
        """Whether the tenant's schema exists on the shard of ``p`` (None: cannot tell)."""
        try:
            with self.engine(p).connect() as conn:
                raw: Any = conn.connection.dbapi_connection
                raw.ppp_prefix = ""
                try:
                    return bool(conn.exec_driver_sql(self._schema_here_sql(p)).scalar())
                finally:
                    raw.ppp_prefix = None
        except (sa_exc.SQLAlchemyError, PPPError):
            return None

    def _checkout(self, tenant: str, read_only: bool) -> tuple[Connection, Placement]:
        p = self._routable(tenant, read_only)
        eng = self.engine(p)
        try:
            conn = eng.connect()
        except sa_exc.TimeoutError:
            raise pool_exhausted(
                tenant, p.shard, self.pool_timeout, self.pool_size, self.max_overflow
            ) from None
        except (sa_exc.DBAPIError, OSError) as exc:
            raise self._connect_error(p, exc) from None
        raw: Any = conn.connection.dbapi_connection
        raw.ppp_prefix = self._prefix(tenant, read_only)
        return conn, p

    def _translate(self, exc: sa_exc.DBAPIError, tenant: str, p: Placement) -> None:
        """Raise TenantMoved / TenantMoving / a clear error when a statement failed because
        the tenant's schema is not (or no longer writable) on this shard."""
        if not self._may_be_moved(exc):
            return
        try:
            fresh = self._read([tenant]).get(tenant)
        except PPPError:
            return  # the veneer cannot say: the database's own error stands
        error = self._after_failure(exc, tenant, p, fresh)
        if error is not None:
            raise error from exc
        if fresh is not None and self._may_lack_schema(exc) and self._schema_here(p) is False:
            raise self._no_schema(tenant, fresh) from exc

    # -- the public API ----------------------------------------------------------------------
    @contextlib.contextmanager
    def connect(self, tenant: str, *, read_only: bool = False) -> Iterator[Connection]:
        """A SQLAlchemy Connection on the tenant's shard, ``search_path`` = the tenant
        (plus the shared schemas); returned to the pool when the block ends."""
        conn, p = self._checkout(tenant, read_only)
        try:
            yield conn
        except sa_exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise connection_lost(tenant, p.shard, first_line(exc)) from exc
            self._translate(exc, tenant, p)
            raise
        finally:
            if not conn.closed and not conn.invalidated:
                raw: Any = conn.connection.dbapi_connection
                raw.ppp_prefix = None
            conn.close()

    @contextlib.contextmanager
    def begin(self, tenant: str, *, read_only: bool = False) -> Iterator[Connection]:
        """:meth:`connect` inside one transaction, committed when the block succeeds."""
        with self.connect(tenant, read_only=read_only) as conn, conn.begin():
            yield conn

    @contextlib.contextmanager
    def session(self, tenant: str, *, read_only: bool = False, **kw: Any) -> Iterator[Session]:
        """An ORM Session on the tenant's connection; call ``commit()`` yourself."""
        with self.connect(tenant, read_only=read_only) as conn, Session(bind=conn, **kw) as s:
            yield s

    def close(self) -> None:
        """Stop the listener and close every pool."""
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
        with self._engines_lock:
            for eng in self._engines.values():
                eng.dispose()
            self._engines.clear()
        self.source.close()

    def __enter__(self) -> TenantRouter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _RoutedCursor(psycopg2.extensions.cursor):  # type: ignore[misc]
    """Puts the routed tenant's prefix in front of a transaction's first statement.

    psycopg2 sends its BEGIN with the first statement of a transaction: while the connection
    is still idle (``status`` READY), this statement is that first one. Done at the DBAPI
    level, not with a SQLAlchemy event: engine events put every connection of the engine on
    SQLAlchemy's slower, event-dispatching execution path (measured: most of the router's
    overhead).
    """

    def _select(self) -> str | None:
        conn = self.connection
        if conn.status != _IDLE:
            return None
        prefix: str | None = conn.ppp_prefix
        if prefix is None:
            if conn.ppp_guard:
                raise RoutingError(UNROUTED)
            return None
        if self.name is not None or not prefix:
            if prefix:  # a server-side cursor cannot DECLARE it: its own round trip
                with conn.cursor(cursor_factory=psycopg2.extensions.cursor) as cur:
                    cur.execute(prefix)
            return None
        return prefix

    def execute(self, query: Any, vars: Any = None) -> Any:
        prefix = self._select()
        if prefix is not None:
            query = prefix + query if isinstance(query, str) else prefix.encode() + query
        return super().execute(query, vars)

    def executemany(self, query: Any, vars_list: Any) -> Any:
        conn = self.connection
        if conn.status == _IDLE and conn.ppp_prefix:  # once, not once per parameter set
            with conn.cursor(cursor_factory=psycopg2.extensions.cursor) as cur:
                cur.execute(conn.ppp_prefix)
        elif conn.status == _IDLE and conn.ppp_prefix is None and conn.ppp_guard:
            raise RoutingError(UNROUTED)
        return super().executemany(query, vars_list)


class _RoutedConnection(psycopg2.extensions.connection):  # type: ignore[misc]
    """A psycopg2 connection that knows which tenant it is routed to (None: none)."""

    ppp_prefix: str | None = None
    #: Set once SQLAlchemy has set the new connection up: from then on a statement needs a
    #: tenant.
    ppp_guard = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cursor_factory = _RoutedCursor
