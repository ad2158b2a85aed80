"""An asyncio web application on PPP: Starlette, SQLAlchemy's asyncio engine, and
:class:`ppp_env.routing.AsyncTenantRouter` sending each request straight to its tenant's shard.

The tenant comes from the ``X-Tenant`` header, else from the host name's first label
(``acme.example.com`` is tenant ``acme``). Run it after `make demo` (servers up, `ppp init`,
`ppp migrate`), from the project folder, with the async extra installed
(``pip install 'ppp-env[async]'``):

    .venv/bin/uvicorn --app-dir examples/webapp app:app --host 127.0.0.1 --port 8000
    curl -H 'X-Tenant: initech' http://127.0.0.1:8000/authors
    curl -H 'X-Tenant: initech' -d '{"first_name": "Ada", "last_name": "Lovelace"}' \\
         http://127.0.0.1:8000/authors

``WEBAPP_DRIVER`` picks the driver (``asyncpg``, the default, or ``psycopg``). Errors
map to HTTP: an unknown tenant is a 404; a tenant being moved, a shard down, a full pool
or a move that finished mid-request (after two retries) is a 503 with ``Retry-After``,
whose body names nothing about the servers (the full reason goes to the log).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ppp_env.errors import PPPError
from ppp_env.identifiers import validate_tenant
from ppp_env.routing import (
    AsyncTenantRouter,
    PoolExhausted,
    RoutingError,
    ShardUnavailable,
    TenantMoved,
    TenantMoving,
    UnknownTenant,
)
from ppp_env.settings import Settings, load_settings

log = logging.getLogger("ppp.webapp")
#: A move that finishes while a transaction runs fails it with TenantMoved: run it again.
ATTEMPTS = 3


class NoTenant(Exception):
    """The request names no tenant (or one that cannot exist)."""


def tenant_of(request: Request) -> str:
    name = request.headers.get("x-tenant")
    if not name:
        host = request.url.hostname or ""
        labels = host.split(".")
        if len(labels) < 2 or host.replace(".", "").isdigit():
            raise NoTenant("send the tenant in X-Tenant, or use <tenant>.<your domain>")
        name = labels[0]
    try:
        return validate_tenant(name)
    except PPPError:
        raise UnknownTenant(f"unknown tenant {name!r}") from None


async def in_tenant(
    request: Request, work: Callable[[AsyncConnection], Awaitable[Any]], read_only: bool = False
) -> Any:
    """``work`` in one transaction on the request's tenant, run again after a move."""
    router: AsyncTenantRouter = request.app.state.router
    tenant = tenant_of(request)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            async with router.begin(tenant, read_only=read_only) as conn:
                return await work(conn)
        except TenantMoved:
            if attempt == ATTEMPTS:
                raise
    raise AssertionError("unreachable")


async def list_authors(request: Request) -> JSONResponse:
    async def work(conn: AsyncConnection) -> list[dict[str, str]]:
        rows = await conn.execute(
            text("SELECT id::text, first_name, last_name FROM authors ORDER BY last_name, id")
        )
        return [dict(r._mapping) for r in rows]

    return JSONResponse({"authors": await in_tenant(request, work, read_only=True)})


async def add_author(request: Request) -> JSONResponse:
    body = await request.json()
    first, last = body.get("first_name"), body.get("last_name")
    if not isinstance(first, str) or not isinstance(last, str) or not first or not last:
        return JSONResponse({"error": "first_name and last_name (text) are required"}, 422)

    async def work(conn: AsyncConnection) -> str:
        sql = "INSERT INTO authors (first_name, last_name) VALUES (:f, :l) RETURNING id::text"
        return str((await conn.execute(text(sql), {"f": first, "l": last})).scalar_one())

    return JSONResponse({"id": await in_tenant(request, work)}, 201)


async def where(request: Request) -> JSONResponse:
    """Which database and schema served this tenant (for operators and the example's test)."""

    async def work(conn: AsyncConnection) -> dict[str, str]:
        row = await conn.execute(text("SELECT current_database(), current_schema()"))
        database, schema = row.one()
        return {"database": database, "schema": schema}

    return JSONResponse(await in_tenant(request, work, read_only=True))


def unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("503 for %s %s: %s", request.method, request.url.path, exc)
    body = {"error": "this tenant is unavailable for a moment: retry shortly"}
    return JSONResponse(body, 503, headers={"Retry-After": "1"})


def not_found(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": "unknown tenant"}, 404)


def bad_request(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, 400)


def failed(request: Request, exc: Exception) -> JSONResponse:
    log.error("500 for %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"error": "internal error"}, 500)


def create_app(
    settings: Settings | None = None, *, driver: str | None = None, move_wait: float = 15.0
) -> Starlette:
    """The application; ``settings`` default to PPP's (``.env``, the environment)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        router = AsyncTenantRouter(
            settings or load_settings(),
            driver or os.environ.get("WEBAPP_DRIVER", "asyncpg"),  # type: ignore[arg-type]
            move_wait=move_wait,  # a write to a moving tenant waits for the move's end
        )
        async with router:
            app.state.router = router
            yield

    return Starlette(
        routes=[
            Route("/authors", list_authors, methods=["GET"]),
            Route("/authors", add_author, methods=["POST"]),
            Route("/where", where, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={
            UnknownTenant: not_found,
            NoTenant: bad_request,
            TenantMoving: unavailable,
            TenantMoved: unavailable,
            ShardUnavailable: unavailable,
            PoolExhausted: unavailable,
            RoutingError: failed,
        },
    )


app = create_app()
