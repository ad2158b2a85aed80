"""Direct tenant routing: a connection on the tenant's shard, the tenant's schema selected.

One SQLAlchemy engine (QueuePool) per shard, as the shard's app role, shared by every
tenant of that shard; in strict isolation one small pool per tenant, logged in as the
tenant's own role (:mod:`ppp_env.routing.isolation`). Placement is read from the catalog
once and cached; a listener on the veneer drops what changed.

Selecting the schema costs no round trip: the first statement of every transaction on a
routed connection carries, in the same query string, ``set_config('search_path', <tenant>,
true)`` (transaction-local). The setting ends with the transaction, so a connection back in
the pool holds no tenant; new connections start with an empty ``search_path`` (not
``public``), and a statement on a connection that did not come through the router is
refused (by the DBAPI cursor): no statement runs with an unset or another tenant's schema. A
tenant whose schema is not on the shard (a finished move the router has not heard of, a
tenant not created yet) makes its first table access fail (undefined table: nothing
resolves, nothing is written); the router then re-reads the placement and raises
:class:`TenantMoved` (retry: it goes to the new shard) or a clear error.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import psycopg2.extensions
from sqlalchemy import create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool

from ppp_env.db import first_line
from ppp_env.errors import PPPError
from ppp_env.identifiers import quote_ident, quote_literal, validate_identifier, validate_tenant
from ppp_env.routing.placement import (
    CatalogPlacement,
    Placement,
    PlacementListener,
    PlacementSource,
)
from ppp_env.settings import Instance, Settings

APPLICATION_NAME = "ppp-router"
_IDLE = psycopg2.extensions.STATUS_READY
#: Errors that may mean "the tenant's schema is not (or no longer writable) here": undefined
#: table, schema or function, read-only transaction, insufficient privilege.
_MOVE_SIGNS = {"42P01", "3F000", "25006", "42501", "42883"}


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


class TenantRouter:
    """Connections and ORM sessions routed straight to each tenant's shard.

    ``shared_schemas`` follow the tenant in ``search_path``. ``strict=True`` logs in as the
    tenant's own role (see :func:`ppp_env.routing.isolation.enable`), one pool per tenant.
    ``listen=False`` skips the LISTEN thread: a stale placement is then found by the first
    statement of a transaction (the tenant's schema is missing on the old shard).
    ``move_wait`` bounds how long a checkout waits for a tenant in state ``moving``.
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
    ) -> None:
        self.settings = settings
        self.shared_schemas = tuple(validate_identifier(s, "schema name") for s in shared_schemas)
        self.pool_size, self.max_overflow = pool_size, max_overflow
        self.pool_timeout, self.pool_recycle = pool_timeout, pool_recycle
        self.strict = strict
        self.move_wait = move_wait
        self.source: PlacementSource = placement or CatalogPlacement(settings)
        self._cache: dict[str, Placement] = {}
        self._loaded_all = False
        self._generation = 0
        self._changed = threading.Condition()
        self._engines: dict[tuple[str, str], Engine] = {}
        self._engines_lock = threading.Lock()
        self._paths: dict[str, str] = {}
        self.listener: PlacementListener | None = None
        if listen:
            self.listener = PlacementListener(settings, self._on_change)
            self.listener.start()

    # -- placement ---------------------------------------------------------------------------
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
        with self._changed:
            generation = self._generation
        found = self.source.read(schemas)
        with self._changed:
            if generation == self._generation:  # no change notified while we read
                self._cache.update(found)
                if schemas is None:
                    self._loaded_all = True
        return found

    def placement(self, tenant: str) -> Placement:
        """The tenant's placement (cached; read from the catalog on a miss)."""
        found = self._cache.get(tenant)
        if found is not None:
            return found
        validate_tenant(tenant)
        if not self._loaded_all:
            found = self._read(None).get(tenant)
        if found is None:
            found = self._read([tenant]).get(tenant)
        if found is None:
            raise UnknownTenant(
                f"unknown tenant {tenant!r}: not in the catalog (see `ppp tenant list`)"
            )
        return found

    def _routable(self, tenant: str, read_only: bool) -> Placement:
        p = self._cache.get(tenant)
        if p is not None and p.state in ("active", "pending"):
            return p  # the hot path: no clock, no validation again
        deadline = time.monotonic() + self.move_wait
        while True:
            p = self.placement(tenant)
            if p.state in ("removing", "removed"):
                raise UnknownTenant(f"tenant {tenant!r} is {p.state}: it cannot be used")
            if p.state == "provisioning":
                raise RoutingError(f"tenant {tenant!r} is still being created: retry later")
            if p.state != "moving" or read_only:
                return p
            left = deadline - time.monotonic()
            if left <= 0:
                raise TenantMoving(
                    f"tenant {tenant!r} is being moved off shard {p.shard!r}: writes are "
                    "refused until the move finishes (retry later, or connect with "
                    "read_only=True to read meanwhile)"
                )
            with self._changed:
                if self._cache.get(tenant) == p:
                    self._changed.wait(min(left, 0.5))

    # -- pools -------------------------------------------------------------------------------
    def _shard(self, p: Placement) -> Instance:
        try:
            return self.settings.shards[p.shard]
        except KeyError:
            raise RoutingError(
                f"tenant {p.schema!r} lives on shard {p.shard!r}, which these settings do not "
                f"have (PPP_SHARDS: {', '.join(self.settings.shards)})"
            ) from None

    def engine(self, p: Placement) -> Engine:
        """The pool a tenant's connections come from (the shard's; the tenant's if strict)."""
        key = (p.shard, p.schema if self.strict else "")
        eng = self._engines.get(key)
        if eng is not None:
            return eng
        inst = self._shard(p)
        url = inst.url("app")
        if self.strict:
            from ppp_env.routing.isolation import role_name, role_password

            role = role_name(inst, p.schema)
            url = url.set(username=role, password=role_password(inst, role))
        with self._engines_lock:
            eng = self._engines.get(key)
            if eng is None:
                eng = create_engine(
                    url,
                    poolclass=QueuePool,
                    pool_size=self.pool_size,
                    max_overflow=self.max_overflow,
                    pool_timeout=self.pool_timeout,
                    pool_recycle=self.pool_recycle,
                    connect_args={
                        "connect_timeout": self.settings.connect_timeout,
                        "application_name": APPLICATION_NAME,
                        # Until a tenant is selected: nothing but pg_catalog, never public.
                        "options": "-c search_path=",
                        "connection_factory": _RoutedConnection,
                    },
                )
                # After SQLAlchemy's own connect handlers: from here on, a tenant is required.
                event.listen(eng.pool, "connect", _guard)
                self._engines[key] = eng
        return eng

    def _prefix(self, tenant: str, read_only: bool) -> str:
        """The statement put in front of each transaction's first statement."""
        key = f"{tenant}/{int(read_only)}"
        prefix = self._paths.get(key)
        if prefix is None:
            path = ", ".join(quote_ident(s) for s in (tenant, *self.shared_schemas))
            prefix = (
                f"SELECT pg_catalog.set_config('search_path', {quote_literal(path)}, true)"
                + (
                    ", pg_catalog.set_config('transaction_read_only', 'on', true)"
                    if read_only
                    else ""
                )
                + "; "
            )
            self._paths[key] = prefix
        return prefix

    def _schema_here(self, p: Placement) -> bool | None:
        """Whether the tenant's schema exists on the shard of ``p`` (None: cannot tell)."""
        try:
            with self.engine(p).connect() as conn:
                raw: Any = conn.connection.dbapi_connection
                raw.ppp_prefix = ""
                try:
                    found = conn.exec_driver_sql(
                        "SELECT pg_catalog.to_regnamespace(%(s)s) IS NOT NULL",
                        {"s": quote_ident(p.schema)},
                    ).scalar()
                finally:
                    raw.ppp_prefix = None
                return bool(found)
        except (sa_exc.SQLAlchemyError, PPPError):
            return None

    def _checkout(self, tenant: str, read_only: bool) -> tuple[Connection, Placement]:
        p = self._routable(tenant, read_only)
        eng = self.engine(p)
        try:
            conn = eng.connect()
        except sa_exc.TimeoutError:
            raise PoolExhausted(
                f"no free connection to shard {p.shard!r} for tenant {tenant!r} within "
                f"{self.pool_timeout:g} s (pool_size {self.pool_size}, max_overflow "
                f"{self.max_overflow}): raise them, or return connections sooner"
            ) from None
        except sa_exc.DBAPIError as exc:
            raise self._connect_error(p, exc) from None
        raw: Any = conn.connection.dbapi_connection
        raw.ppp_prefix = self._prefix(tenant, read_only)
        return conn, p

    def _connect_error(self, p: Placement, exc: sa_exc.DBAPIError) -> RoutingError:
        inst = self._shard(p)
        code = getattr(exc.orig, "pgcode", None)
        text = first_line(exc)
        if self.strict and (code in ("28P01", "28000") or "authentication failed" in text):
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

    def _translate(self, exc: sa_exc.DBAPIError, tenant: str, p: Placement) -> None:
        """Raise TenantMoved / TenantMoving / a clear error when a statement failed because
        the tenant's schema is not (or no longer writable) on this shard."""
        code = getattr(exc.orig, "pgcode", None)
        if code not in _MOVE_SIGNS:
            return
        try:
            fresh = self._read([tenant]).get(tenant)
        except PPPError:
            return  # the veneer cannot say: the database's own error stands
        if fresh is None:
            self.invalidate(tenant)
            raise UnknownTenant(
                f"tenant {tenant!r} was removed from the catalog during this connection"
            ) from exc
        if fresh.shard != p.shard:
            raise TenantMoved(tenant, p.shard, fresh.shard) from exc
        if fresh.state == "moving":
            raise TenantMoving(
                f"tenant {tenant!r} is being moved off shard {p.shard!r}: writes are "
                "refused until the move finishes; retry later"
            ) from exc
        if code in ("42P01", "3F000") and self._schema_here(p) is False:
            raise RoutingError(
                f"tenant {tenant!r} has no schema on shard {p.shard!r} yet (state "
                f"{fresh.state}): run `ppp migrate` to create it"
            ) from exc

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
                raise ShardUnavailable(
                    p.shard,
                    f"lost the connection to shard {p.shard!r} for tenant {tenant!r}: "
                    f"{first_line(exc)}",
                ) from exc
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


_UNROUTED = (
    "a statement on a connection of the tenant router's pool without a tenant: use "
    "TenantRouter.connect(tenant), never the router's engines directly"
)


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
                raise RoutingError(_UNROUTED)
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
            raise RoutingError(_UNROUTED)
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


def _guard(dbapi_connection: Any, record: Any) -> None:
    dbapi_connection.ppp_guard = True
