"""The example web application (examples/webapp/app.py) against the real topology, over HTTP
with httpx in-process (ASGI): several tenants at once, a move during traffic, an unknown
tenant, a shard down. Run for both asyncio drivers."""

from __future__ import annotations

import asyncio
import importlib.util
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest

from ppp_env.lifecycle import create_tenant, remove_tenant
from ppp_env.lifecycle.move import cleanup_tenant, move_tenant
from ppp_env.servers.local import free_port
from ppp_env.settings import Settings
from tests.conftest import ROOT, shard_sql

INI = ROOT / "alembic.ini"


def load_example():
    spec = importlib.util.spec_from_file_location("webapp_example", ROOT / "examples/webapp/app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


webapp = load_example()


@asynccontextmanager
async def client(settings: Settings, driver: str) -> AsyncIterator[httpx.AsyncClient]:
    app = webapp.create_app(settings, driver=driver)
    async with app.router.lifespan_context(app):  # ASGITransport runs no lifespan itself
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as c:
            yield c


@pytest.fixture
def web_tenants(veneer_head) -> Iterator[dict[str, str]]:
    """One tenant per shard, created as an application would (`ppp tenant create`)."""
    settings = veneer_head.settings
    tag = uuid.uuid4().hex[:6]
    made = {f"wa_{tag}_{shard[:3]}": shard for shard in settings.shards}
    for schema, shard in made.items():
        create_tenant(settings, schema, shard, INI)
    yield made
    for schema in made:
        cleanup_tenant(settings, schema)
        remove_tenant(settings, schema, drop_data=True)


def authors_on(settings: Settings, shard: str, schema: str) -> set[str]:
    return {r[0] for r in shard_sql(settings, shard, f'SELECT id::text FROM "{schema}".authors')}


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_requests_for_several_tenants_land_on_their_shard_and_schema(settings, web_tenants, driver):
    async def main() -> dict[str, list[str]]:
        async with client(settings, driver) as c:

            async def post(tenant: str, i: int) -> tuple[str, str]:
                r = await c.post(
                    "/authors",
                    headers={"X-Tenant": tenant},
                    json={"first_name": f"Writer {i}", "last_name": tenant},
                )
                assert r.status_code == 201, r.text
                return tenant, r.json()["id"]

            jobs = [post(t, i) for i in range(8) for t in web_tenants]
            posted: dict[str, list[str]] = {t: [] for t in web_tenants}
            for tenant, new_id in await asyncio.gather(*jobs):
                posted[tenant].append(new_id)
            wheres = await asyncio.gather(
                *(c.get("/where", headers={"X-Tenant": t}) for t in web_tenants)
            )
            for tenant, r in zip(web_tenants, wheres, strict=True):
                assert r.json() == {"database": web_tenants[tenant], "schema": tenant}
            # the host name's first label names the tenant too
            first = next(iter(web_tenants))
            r = await c.get("/authors", headers={"Host": f"{first}.example.com"})
            assert r.status_code == 200 and len(r.json()["authors"]) == 3 + 8
            return posted

    posted = asyncio.run(main())
    for tenant, shard in web_tenants.items():
        assert set(posted[tenant]) <= authors_on(settings, shard, tenant)
        mine = shard_sql(
            settings, shard, f'SELECT count(*) FROM "{tenant}".authors WHERE last_name = %s',
            (tenant,),
        )  # fmt: skip
        assert mine == [(8,)]


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_a_move_during_traffic_loses_no_acknowledged_write(settings, web_tenants, driver):
    tenant = next(t for t, s in web_tenants.items() if s == "bluth_co")
    acked: list[tuple[str, float]] = []
    refused: list[int] = []

    async def writer(c: httpx.AsyncClient, stop: asyncio.Event, n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            r = await c.post(
                "/authors",
                headers={"X-Tenant": tenant},
                json={"first_name": f"w{n}-{i}", "last_name": "during the move"},
            )
            if r.status_code == 201:
                acked.append((r.json()["id"], time.monotonic()))
            else:
                assert r.status_code == 503, r.text
                refused.append(r.status_code)
            await asyncio.sleep(0.005)

    async def main() -> float:
        async with client(settings, driver) as c:
            stop = asyncio.Event()
            writers = [asyncio.create_task(writer(c, stop, n)) for n in range(4)]
            while len(acked) < 10:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(move_tenant, settings, tenant, "initech", mode="online")
            switched = time.monotonic()
            done = len(acked)
            while len(acked) < done + 10:
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.gather(*writers)
            r = await c.get("/where", headers={"X-Tenant": tenant})
            assert r.json() == {"database": "initech", "schema": tenant}
            return switched

    switched = asyncio.run(main())
    on_target = authors_on(settings, "initech", tenant)
    assert {i for i, _ in acked} <= on_target  # every acknowledged write is on the new shard
    assert any(t > switched for _, t in acked)  # and writes went on after the move
    assert len(refused) <= 4  # at most the writes in flight when the move's wait ran out


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_an_unknown_tenant_is_a_404_and_no_tenant_a_400(settings, web_tenants, driver):
    async def main() -> None:
        async with client(settings, driver) as c:
            r = await c.get("/authors", headers={"X-Tenant": "wa_nobody"})
            assert (r.status_code, r.json()) == (404, {"error": "unknown tenant"})
            r = await c.get("/authors", headers={"X-Tenant": "x'; DROP TABLE authors; --"})
            assert r.status_code == 404
            r = await c.get("/authors", headers={"Host": "127.0.0.1"})
            assert r.status_code == 400 and "X-Tenant" in r.json()["error"]

    asyncio.run(main())


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_a_shard_down_is_a_503_naming_nothing_secret(topology, web_tenants, driver):
    port = str(free_port())
    down = topology.settings_for(topology.variant(PPP_SHARD_CYBERDYNE_PORT=port))
    gone = next(t for t, s in web_tenants.items() if s == "cyberdyne")
    fine = next(t for t, s in web_tenants.items() if s == "initech")
    inst = down.shard("cyberdyne")

    async def main() -> None:
        async with client(down, driver) as c:
            r = await c.get("/authors", headers={"X-Tenant": gone})
            assert r.status_code == 503 and r.headers["Retry-After"] == "1"
            for secret in (inst.app_password, inst.app_role, port, inst.host, "cyberdyne"):
                assert secret not in r.text
            r = await c.get("/authors", headers={"X-Tenant": fine})  # the other shards serve
            assert r.status_code == 200

    asyncio.run(main())
