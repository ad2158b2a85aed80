"""asyncpg connections that select the routed tenant.

SQLAlchemy's asyncpg dialect starts each transaction with asyncpg's ``Transaction.start()``,
one simple-protocol ``BEGIN`` round trip of its own; asyncpg prepares every other statement
(one statement per query). The tenant's ``SET LOCAL search_path`` is appended to that
``BEGIN``: the same round trip, nothing on later statements. Imported only when a router
uses asyncpg (``pip install 'ppp-env[async]'``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
from sqlalchemy.engine import URL

from ppp_env.routing.errors import UNROUTED, RoutingError
from ppp_env.settings import Instance

Notify = Callable[[str | None], None]


class RoutedConnection(asyncpg.Connection):  # type: ignore[misc]
    """Knows the tenant it is routed to (``ppp_prefix``; None: none)."""

    ppp_prefix: str | None = None
    ppp_guard = False

    def transaction(self, **kw: Any) -> Any:
        """Refused on an unrouted connection (before asyncpg records a transaction)."""
        if self.ppp_prefix is None and self.ppp_guard and not self.is_in_transaction():
            raise RoutingError(UNROUTED)
        return super().transaction(**kw)

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        """The transaction's ``BEGIN`` (simple protocol, no arguments) carries the tenant's
        ``SET LOCAL`` commands."""
        prefix = self.ppp_prefix
        if prefix and not args and query.startswith("BEGIN") and not self.is_in_transaction():
            query = f"{query.rstrip(';')}; {prefix}"
        result: str = await super().execute(query, *args, timeout=timeout)
        return result


def async_engine_args(url: URL, connect_timeout: int, application_name: str) -> dict[str, Any]:
    """``create_async_engine`` arguments: SQLAlchemy hands ``connect_args`` to
    ``asyncpg.connect``; no ``search_path`` (not even ``public``) until a tenant is selected."""
    return {
        "connect_args": {
            "connection_class": RoutedConnection,
            "timeout": connect_timeout,
            "server_settings": {"search_path": "", "application_name": application_name},
        }
    }


#: What a failed connection attempt raises besides SQLAlchemy's and the OS's errors.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


class Listening:
    """``LISTEN`` on one connection; :meth:`wait` returns when the connection is lost."""

    def __init__(self, conn: Any, lost: asyncio.Event) -> None:
        self.conn, self.lost = conn, lost

    async def wait(self) -> None:
        await self.lost.wait()

    async def close(self) -> None:
        await self.conn.close(timeout=2)


async def listen(
    inst: Instance, timeout: int, application_name: str, channel: str, on_note: Notify
) -> Listening:
    conn = await asyncpg.connect(
        host=inst.host,
        port=inst.port,
        database=inst.dbname,
        user=inst.app_role,
        password=inst.app_password,
        timeout=timeout,
        server_settings={"application_name": application_name},
    )
    lost = asyncio.Event()
    conn.add_termination_listener(lambda _conn: lost.set())
    await conn.add_listener(channel, lambda _c, _pid, _ch, payload: on_note(payload or None))
    return Listening(conn, lost)
