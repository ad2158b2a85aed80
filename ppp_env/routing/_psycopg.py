"""psycopg 3 connections that select the routed tenant (sync and asyncio).

psycopg 3 sends a transaction's ``BEGIN`` in a round trip of its own before the first
statement, and binds parameters on the server (one statement per query string). So the
first statement of a transaction is preceded by the tenant's ``set_config`` in pipeline
mode: ``BEGIN`` and the ``set_config`` go out together, in that one round trip psycopg 3
pays anyway; the application's statement follows as usual. Imported only when a router
uses psycopg 3 (``pip install 'ppp-env[async]'``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import pq

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


class RoutedCursor(psycopg.Cursor[Any]):
    def _select(self) -> None:
        prefix = _prefix(self.connection)
        if prefix is not None:
            cur = psycopg.Cursor(self.connection)
            with self.connection.pipeline():
                cur.execute(prefix)
            cur.close()

    def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
        self._select()
        return super().execute(query, params, **kw)

    def executemany(self, query: Any, params_seq: Any, **kw: Any) -> None:
        self._select()
        super().executemany(query, params_seq, **kw)


class RoutedConnection(psycopg.Connection[Any]):
    """Knows the tenant it is routed to (``ppp_prefix``; None: none)."""

    ppp_prefix: str | None = None
    #: Set once SQLAlchemy has set the new connection up: from then on a statement needs a
    #: tenant.
    ppp_guard = False


class RoutedAsyncCursor(psycopg.AsyncCursor[Any]):
    async def _select(self) -> None:
        prefix = _prefix(self.connection)
        if prefix is not None:
            cur = psycopg.AsyncCursor(self.connection)
            async with self.connection.pipeline():
                await cur.execute(prefix)
            await cur.close()

    async def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
        await self._select()
        return await super().execute(query, params, **kw)

    async def executemany(self, query: Any, params_seq: Any, **kw: Any) -> None:
        await self._select()
        await super().executemany(query, params_seq, **kw)


class RoutedAsyncConnection(psycopg.AsyncConnection[Any]):
    ppp_prefix: str | None = None
    ppp_guard = False


def connect_args(connect_timeout: int, application_name: str) -> dict[str, Any]:
    """What every routed psycopg 3 connection is opened with: no ``search_path`` (not even
    ``public``) until a tenant is selected."""
    return {
        "connect_timeout": connect_timeout,
        "application_name": application_name,
        "options": "-c search_path=",
    }


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
