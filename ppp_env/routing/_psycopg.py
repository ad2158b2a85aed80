"""psycopg 3 connections that select the routed tenant (sync and asyncio).

psycopg 3 sends a transaction's ``BEGIN`` in a round trip of its own, then each statement
with its parameters bound on the server (one statement per query string). So the first
statement of a transaction goes out as one simple-protocol query string, the tenant's
``set_config`` in front of the statement with its parameters bound by psycopg's own
client-side binding (``ClientCursor.mogrify``, the adaptation ``execute`` does), never
prepared; the cursor then steps to the statement's result. No round trip is added (psycopg
3 in pipeline mode measured slower), later statements go as usual. Imported only when a
router uses psycopg 3 (``pip install 'ppp-env[async]'``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import pq
from sqlalchemy.engine import URL

from ppp_env.routing.errors import UNROUTED, RoutingError
from ppp_env.settings import Instance

Notify = Callable[[str | None], None]

_IDLE = pq.TransactionStatus.IDLE


def _prefix(conn: Any) -> str | None:
    """The statement to send first (None: none), or RoutingError for an unrouted one."""
    if conn.info.transaction_status != _IDLE:
        return None
    prefix: str | None = conn.ppp_prefix
    if prefix is None and conn.ppp_guard:
        raise RoutingError(UNROUTED)
    return prefix or None


def _together(conn: Any, prefix: str, query: Any, params: Any, kw: dict[str, Any]) -> str | None:
    """``<prefix>; <query with its parameters bound>`` (None: the query cannot go along:
    not a plain string, or execute options that need the extended protocol)."""
    if not isinstance(query, str) or kw:
        return None
    if params is None:
        return f"{prefix}; {query}"
    binder = conn.ppp_binder
    if binder is None:
        cls = psycopg.AsyncClientCursor if isinstance(conn, psycopg.AsyncConnection) else None
        binder = conn.ppp_binder = (cls or psycopg.ClientCursor)(conn)
    return f"{prefix}; {binder.mogrify(query, params)}"


class RoutedCursor(psycopg.Cursor[Any]):
    def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
        prefix = _prefix(self.connection)
        if prefix is not None:
            both = _together(self.connection, prefix, query, params, kw)
            if both is not None:
                super().execute(both, prepare=False)
                self.nextset()  # the statement's own result
                return self
            psycopg.Cursor(self.connection).execute(prefix)
        return super().execute(query, params, **kw)

    def executemany(self, query: Any, params_seq: Any, **kw: Any) -> None:
        prefix = _prefix(self.connection)
        if prefix is not None:
            psycopg.Cursor(self.connection).execute(prefix)
        super().executemany(query, params_seq, **kw)


class RoutedConnection(psycopg.Connection[Any]):
    """Knows the tenant it is routed to (``ppp_prefix``; None: none)."""

    ppp_prefix: str | None = None
    #: Set once SQLAlchemy has set the new connection up: from then on a statement needs a
    #: tenant.
    ppp_guard = False
    ppp_binder: Any = None


class RoutedAsyncCursor(psycopg.AsyncCursor[Any]):
    async def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
        prefix = _prefix(self.connection)
        if prefix is not None:
            both = _together(self.connection, prefix, query, params, kw)
            if both is not None:
                await super().execute(both, prepare=False)
                self.nextset()  # the statement's own result
                return self
            await psycopg.AsyncCursor(self.connection).execute(prefix)
        return await super().execute(query, params, **kw)

    async def executemany(self, query: Any, params_seq: Any, **kw: Any) -> None:
        prefix = _prefix(self.connection)
        if prefix is not None:
            await psycopg.AsyncCursor(self.connection).execute(prefix)
        await super().executemany(query, params_seq, **kw)


class RoutedAsyncConnection(psycopg.AsyncConnection[Any]):
    ppp_prefix: str | None = None
    ppp_guard = False
    ppp_binder: Any = None


def _params(url: URL, connect_timeout: int, application_name: str) -> dict[str, Any]:
    """What every routed psycopg 3 connection is opened with: no ``search_path`` (not even
    ``public``) until a tenant is selected."""
    return {
        "host": url.host,
        "port": url.port,
        "dbname": url.database,
        "user": url.username,
        "password": url.password,
        "connect_timeout": connect_timeout,
        "application_name": application_name,
        "options": "-c search_path=",
    }


def engine_args(url: URL, connect_timeout: int, application_name: str) -> dict[str, Any]:
    """``create_engine`` arguments: routed connections from SQLAlchemy's ``creator``."""
    params = _params(url, connect_timeout, application_name)

    def creator() -> Any:
        return RoutedConnection.connect(cursor_factory=RoutedCursor, **params)

    return {"creator": creator}


def async_engine_args(url: URL, connect_timeout: int, application_name: str) -> dict[str, Any]:
    """``create_async_engine`` arguments: routed connections from its ``async_creator``."""
    params = _params(url, connect_timeout, application_name)

    async def creator() -> Any:
        return await RoutedAsyncConnection.connect(cursor_factory=RoutedAsyncCursor, **params)

    return {"async_creator": creator}


CONNECT_ERRORS: tuple[type[BaseException], ...] = (psycopg.Error,)


class Listening:
    """``LISTEN`` on one connection; :meth:`wait` hands each notification on and returns (or
    raises) when the connection is lost."""

    def __init__(self, conn: Any, on_note: Notify) -> None:
        self.conn, self.on_note = conn, on_note

    async def wait(self) -> None:
        async for note in self.conn.notifies():
            self.on_note(note.payload or None)

    async def close(self) -> None:
        await self.conn.close()


async def listen(
    inst: Instance, timeout: int, application_name: str, channel: str, on_note: Notify
) -> Listening:
    conn = await psycopg.AsyncConnection.connect(
        host=inst.host,
        port=inst.port,
        dbname=inst.dbname,
        user=inst.app_role,
        password=inst.app_password,
        connect_timeout=timeout,
        application_name=application_name,
        autocommit=True,
    )
    await conn.execute(f"LISTEN {channel}")
    return Listening(conn, on_note)
