"""The asyncio tenant router: :class:`AsyncTenantRouter`, for SQLAlchemy's asyncio engine on
asyncpg (``postgresql+asyncpg``) or psycopg 3 (``postgresql+psycopg``).

The contract of the sync :class:`ppp_env.routing.TenantRouter`, shared through
:class:`ppp_env.routing.core.RoutingCore` (the placement cache, the errors and their
wording, the statement that selects the tenant): one pool per shard (per tenant in strict
isolation), the tenant selected transaction-locally in the round trip that begins the
transaction (asyncpg: appended to its ``BEGIN``; psycopg 3: in front of its first statement),
never ``public``, ``TenantMoved`` when a statement finds the tenant gone, ``TenantMoving``,
``UnknownTenant``, ``ShardUnavailable``, ``PoolExhausted``.

Placement: ``LISTEN ppp_placement`` on an asyncio connection to the veneer (a task of the
event loop, started by ``async with router`` or the first ``connect``); a cache miss reads
the catalog through the router's :class:`PlacementSource` in a worker thread (once for every
tenant at first, then once per change), so the event loop never waits on it. The optional
dependencies come with ``pip install 'ppp-env[async]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import event
from sqlalchemy import exc as sa_exc

from ppp_env.db import first_line
from ppp_env.errors import PPPError
from ppp_env.identifiers import validate_tenant
from ppp_env.routing.core import APPLICATION_NAME, ROUTABLE, RoutingCore, guard
from ppp_env.routing.errors import (
    RoutingError,
    connection_lost,
    missing_async_extra,
    moving_at_checkout,
    pool_exhausted,
)
from ppp_env.routing.placement import CHANNEL, Placement, PlacementSource
from ppp_env.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

log = logging.getLogger(__name__)
AsyncDriver = Literal["asyncpg", "psycopg"]
DRIVERS: dict[str, str] = {"asyncpg": "postgresql+asyncpg", "psycopg": "postgresql+psycopg"}


def _driver_module(driver: str) -> Any:
    """The driver's routed connection classes (lazily: the extra may be missing)."""
    if driver not in DRIVERS:
        raise RoutingError(f"unknown driver {driver!r}: expected asyncpg or psycopg")
    try:
        importlib.import_module("greenlet")  # SQLAlchemy's asyncio layer runs on it
        return importlib.import_module(f"ppp_env.routing._{driver}")
    except ImportError as exc:
        raise missing_async_extra(f"AsyncTenantRouter(driver={driver!r})", exc) from None


class AsyncPlacementListener:
    """``LISTEN ppp_placement`` on the veneer in a task of the event loop.

    ``on_change(schema)`` is called for each notification (``None``: forget everything,
    after a reconnect or an empty payload). :meth:`start` returns once the LISTEN is in
    place (its errors are the caller's), so a change committed after it is never missed.
    """

    def __init__(
        self,
        settings: Settings,
        on_change: Callable[[str | None], None],
        driver: str = "asyncpg",
        *,
        channel: str = CHANNEL,
        retry_seconds: float = 1.0,
    ) -> None:
        self.settings = settings
        self.on_change = on_change
        self.channel = channel
        self.retry_seconds = retry_seconds
        self._driver = _driver_module(driver)
        self._handle: Any = None
        self._task: asyncio.Task[None] | None = None
        self.error: str | None = None

    async def _listen(self) -> Any:
        veneer = self.settings.veneer
        try:
            return await self._driver.listen(
                veneer,
                self.settings.connect_timeout,
                "ppp-router-listen",
                self.channel,
                self.on_change,
            )
        except (OSError, asyncio.TimeoutError, *self._driver.CONNECT_ERRORS) as exc:
            raise PPPError(
                f"cannot LISTEN {self.channel} on the veneer at {veneer.masked_url('app')}: "
                f"{first_line(exc)}"
            ) from None

    async def start(self) -> None:
        self._handle = await self._listen()
        self._task = asyncio.create_task(self._run(), name="ppp-placement")

    async def _run(self) -> None:
        while True:
            try:
                if self._handle is None:
                    self._handle = await self._listen()
                    self.on_change(None)  # notifications may have been missed meanwhile
                    self.error = None
                await self._handle.wait()
                raise ConnectionError("the connection to the veneer was closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.error = first_line(exc)
                log.warning("placement listener: %s; reconnecting", self.error)
                await self._drop()
                self.on_change(None)
                await asyncio.sleep(self.retry_seconds)

    async def _drop(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(Exception):
                await handle.close()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self._drop()


class AsyncTenantRouter(RoutingCore):
    """Async connections and ORM sessions routed straight to each tenant's shard.

    ``async with AsyncTenantRouter(settings) as router:`` then ``async with
    router.connect(tenant) as conn`` (an ``AsyncConnection``), ``router.begin(tenant)`` (one
    transaction) or ``router.session(tenant)`` (an ``AsyncSession``). Options as the sync
    router's; ``driver``: ``asyncpg`` or ``psycopg`` (3).
    """

    def __init__(
        self,
        settings: Settings,
        driver: AsyncDriver = "asyncpg",
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
    ) -> None:
        self._driver = _driver_module(driver)
        super().__init__(
            settings,
            shared_schemas=shared_schemas,
            strict=strict,
            move_wait=move_wait,
            placement=placement,
        )
        self.driver = driver
        # asyncpg appends it to its BEGIN; psycopg 3 puts it in front of one statement.
        self._selecting = self._set_local if driver == "asyncpg" else self._select
        self.pool_size, self.max_overflow = pool_size, max_overflow
        self.pool_timeout, self.pool_recycle = pool_timeout, pool_recycle
        self._engines: dict[tuple[str, str], AsyncEngine] = {}
        self.listener: AsyncPlacementListener | None = None
        self._listen = listen
        self._started = False
        self._start_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()
        self._changed_event = asyncio.Event()

    # -- placement ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start listening for placement changes (``async with`` and the first ``connect``
        do it)."""
        if self._started:
            return
        async with self._start_lock:
            if self._started:
                return
            if self._listen:
                self.listener = AsyncPlacementListener(self.settings, self._notified, self.driver)
                await self.listener.start()
            self._started = True

    def _notified(self, schema: str | None) -> None:
        self._on_change(schema)
        self._changed_event.set()
        self._changed_event = asyncio.Event()

    async def placement(self, tenant: str) -> Placement:
        """The tenant's placement (cached; read from the catalog in a worker thread)."""
        found = self._cache.get(tenant)
        if found is not None:
            return found
        validate_tenant(tenant)
        async with self._read_lock:  # one read at a time: the others find it cached
            return await asyncio.to_thread(self._lookup, tenant)

    async def _routable(self, tenant: str, read_only: bool) -> Placement:
        """The tenant's placement once it may be used (a write to a moving tenant waits up
        to ``move_wait``)."""
        await self.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.move_wait
        while True:
            p = await self.placement(tenant)
            if self._usable(p, tenant, read_only):
                return p
            left = deadline - loop.time()
            if left <= 0:
                raise moving_at_checkout(tenant, p.shard)
            changed = self._changed_event
            if self._cache.get(tenant) == p:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(left, 0.5))

    # -- pools -------------------------------------------------------------------------------
    def engine(self, p: Placement) -> AsyncEngine:
        """The pool a tenant's connections come from (the shard's; the tenant's if strict)."""
        key = self._pool_key(p)
        eng = self._engines.get(key)
        if eng is None:
            from sqlalchemy.ext.asyncio import create_async_engine

            url = self._url(p, DRIVERS[self.driver])
            eng = create_async_engine(
                url,
                pool_size=self.pool_size,
                max_overflow=self.max_overflow,
                pool_timeout=self.pool_timeout,
                pool_recycle=self.pool_recycle,
                **self._driver.async_engine_args(
                    url, self.settings.connect_timeout, APPLICATION_NAME
                ),
            )
            # After SQLAlchemy's own connect handlers: from here on, a tenant is required.
            event.listen(eng.sync_engine.pool, "connect", guard)
            self._engines[key] = eng
        return eng

    async def _checkout(
        self, tenant: str, read_only: bool
    ) -> tuple[AsyncConnection, Any, Placement]:
        p = self._cache.get(tenant)
        if p is None or p.state not in ROUTABLE:  # the hot path awaits nothing here
            p = await self._routable(tenant, read_only)
        eng = self.engine(p)
        try:
            conn = await eng.connect()
        except sa_exc.TimeoutError:
            raise pool_exhausted(
                tenant, p.shard, self.pool_timeout, self.pool_size, self.max_overflow
            ) from None
        except (
            sa_exc.DBAPIError,
            OSError,
            asyncio.TimeoutError,
            *self._driver.CONNECT_ERRORS,
        ) as exc:
            raise self._connect_error(p, exc) from None
        # checked out already: the driver's connection, without another trip through greenlet
        raw: Any = conn.sync_connection.connection.driver_connection  # type: ignore[union-attr]
        raw.ppp_prefix = self._selecting(tenant, read_only)
        return conn, raw, p

    async def _schema_here(self, p: Placement) -> bool | None:
        """Whether the tenant's schema exists on the shard of ``p`` (None: cannot tell)."""
        try:
            async with self.engine(p).connect() as conn:
                raw: Any = (await conn.get_raw_connection()).driver_connection
                raw.ppp_prefix = ""
                try:
                    return bool((await conn.exec_driver_sql(self._schema_here_sql(p))).scalar())
                finally:
                    raw.ppp_prefix = None
        except (sa_exc.SQLAlchemyError, PPPError, OSError, *self._driver.CONNECT_ERRORS):
            return None

    async def _translate(self, exc: sa_exc.DBAPIError, tenant: str, p: Placement) -> None:
        """Raise TenantMoved / TenantMoving / a clear error when a statement failed because
        the tenant's schema is not (or no longer writable) on this shard."""
        if not self._may_be_moved(exc):
            return
        try:
            fresh = (await asyncio.to_thread(self._read, [tenant])).get(tenant)
        except PPPError:
            return  # the veneer cannot say: the database's own error stands
        error = self._after_failure(exc, tenant, p, fresh)
        if error is not None:
            raise error from exc
        if fresh is not None and self._may_lack_schema(exc) and await self._schema_here(p) is False:
            raise self._no_schema(tenant, fresh) from exc

    # -- the public API ----------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def connect(
        self, tenant: str, *, read_only: bool = False
    ) -> AsyncIterator[AsyncConnection]:
        """An ``AsyncConnection`` on the tenant's shard, ``search_path`` = the tenant (plus
        the shared schemas); back to the pool when the block ends."""
        conn, raw, p = await self._checkout(tenant, read_only)
        try:
            yield conn
        except sa_exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise connection_lost(tenant, p.shard, first_line(exc)) from exc
            await self._translate(exc, tenant, p)
            raise
        finally:
            if not conn.closed and not conn.invalidated:
                raw.ppp_prefix = None
            await conn.close()

    @contextlib.asynccontextmanager
    async def begin(
        self, tenant: str, *, read_only: bool = False
    ) -> AsyncIterator[AsyncConnection]:
        """:meth:`connect` inside one transaction, committed when the block succeeds."""
        async with self.connect(tenant, read_only=read_only) as conn, conn.begin():
            yield conn

    @contextlib.asynccontextmanager
    async def session(
        self, tenant: str, *, read_only: bool = False, **kw: Any
    ) -> AsyncIterator[AsyncSession]:
        """An ``AsyncSession`` on the tenant's connection; ``await session.commit()`` yourself."""
        from sqlalchemy.ext.asyncio import AsyncSession

        async with (
            self.connect(tenant, read_only=read_only) as conn,
            AsyncSession(bind=conn, **kw) as s,
        ):
            yield s

    async def close(self) -> None:
        """Stop the listener and close every pool."""
        if self.listener is not None:
            await self.listener.stop()
            self.listener = None
        self._started = False
        engines, self._engines = list(self._engines.values()), {}
        for eng in engines:
            await eng.dispose()
        await asyncio.to_thread(self.source.close)

    async def __aenter__(self) -> AsyncTenantRouter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
