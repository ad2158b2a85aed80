"""The asyncio tenant router (asyncpg and psycopg 3) and the sync router on psycopg 3, against
the real topology: the same contract as tests/test_routing.py's (routing, search_path
hygiene, placement changes, moves, isolation, and the faults)."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import sys
import textwrap
import time
from decimal import Decimal

import pytest
from sqlalchemy import Integer, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ppp_env import db
from ppp_env.errors import PPPError
from ppp_env.routing import (
    AsyncTenantRouter,
    PoolExhausted,
    RoutingError,
    ShardUnavailable,
    TenantMoved,
    TenantMoving,
    TenantRouter,
    UnknownTenant,
    isolation,
)
from ppp_env.servers.local import free_port
from tests.conftest import shard_sql
from tests.plugins.routing import catalog, move_by_hand, notify

DRIVERS = ["asyncpg", "psycopg"]


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    note: Mapped[str] = mapped_column(String)


def run(coro):
    return asyncio.run(coro)


async def eventually(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(await predicate())


@pytest.mark.parametrize("driver", DRIVERS)
def test_concurrent_tenants_land_on_their_shard_and_schema(settings, tenants, driver):
    async def work(router: AsyncTenantRouter, schema: str, shard: str, i: int) -> None:
        async with router.begin(schema) as conn:
            assert (await conn.execute(text("SELECT note FROM items WHERE id = 1"))).scalar() == (
                schema
            )
            assert (await conn.execute(text("SELECT current_database()"))).scalar() == shard
            await conn.execute(
                text("INSERT INTO items VALUES (:i, :n)"), {"i": 100 + i, "n": schema}
            )

    async def main() -> None:
        async with AsyncTenantRouter(settings, driver, pool_size=3, max_overflow=0) as router:
            jobs = [work(router, s, sh, i) for i in range(10) for s, sh in tenants.items()]
            await asyncio.gather(*jobs)

    run(main())
    for schema, shard in tenants.items():
        notes = shard_sql(settings, shard, f'SELECT DISTINCT note FROM "{schema}".items')
        assert notes == [(schema,)]
        assert shard_sql(settings, shard, f'SELECT count(*) FROM "{schema}".items') == [(11,)]


@pytest.mark.parametrize("driver", DRIVERS)
def test_orm_async_session_writes_into_the_tenant(settings, tenants, driver):
    a = next(iter(tenants))

    async def main() -> None:
        async with AsyncTenantRouter(settings, driver) as router, router.session(a) as session:
            session.add(Item(id=7, note="orm"))
            await session.commit()
            assert (await session.get(Item, 1)).note == a

    run(main())
    assert shard_sql(settings, "bluth_co", f'SELECT note FROM "{a}".items WHERE id = 7') == [
        ("orm",)
    ]


@pytest.mark.parametrize("driver", DRIVERS)
def test_search_path_is_exactly_the_tenant_and_never_leaks(settings, tenants, driver):
    a, b, _ = tenants

    async def main() -> None:
        async with AsyncTenantRouter(
            settings, driver, pool_size=1, max_overflow=0, listen=False
        ) as router:
            async with router.connect(a) as conn:
                path = (await conn.execute(text("SHOW search_path"))).scalar()
                assert path in (a, f'"{a}"')  # SET LOCAL shows it unquoted, set_config quoted
                assert (await conn.execute(text("SELECT current_schemas(false)"))).scalar() == [a]
                pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar()
            async with router.connect(b) as conn:  # the same pooled connection, tenant b
                assert (await conn.execute(text("SELECT pg_backend_pid()"))).scalar() == pid
                assert (await conn.execute(text("SELECT current_schemas(false)"))).scalar() == [b]
                assert (await conn.execute(text("SELECT note FROM items"))).scalar() == b
                await conn.rollback()  # every transaction selects the tenant again
                assert (await conn.execute(text("SELECT current_schemas(false)"))).scalar() == [b]
            async with router.connect(a, read_only=True) as conn:
                assert (await conn.execute(text("SHOW transaction_read_only"))).scalar() == "on"
            # The router's engine used directly: refused, never public, never a tenant.
            eng = router.engine(await router.placement(a))
            with pytest.raises(RoutingError, match="without a tenant"):
                async with eng.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            # A returned connection holds no tenant.
            async with router.connect(a) as conn:
                raw = (await conn.get_raw_connection()).driver_connection
                raw.ppp_prefix = ""  # around the router, on purpose
                row = await conn.execute(text("SELECT current_schemas(false), current_user"))
                assert row.one() == ([], settings.shard("bluth_co").app_role)

    run(main())


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_notified_move_reaches_the_router_and_a_stale_one_retries(settings, tenants, driver):
    a, _, c = tenants

    async def main() -> None:
        async with AsyncTenantRouter(settings, driver) as router:
            assert (await router.placement(a)).shard == "bluth_co"
            move_by_hand(settings, a, "bluth_co", "initech")
            notify(settings, a)

            async def moved() -> bool:
                return (await router.placement(a)).shard == "initech"

            assert await eventually(moved)
            async with router.begin(a) as conn:
                assert (await conn.execute(text("SELECT current_database()"))).scalar() == "initech"
        # Without the listener: the first statement finds the tenant gone, then a retry works.
        async with AsyncTenantRouter(settings, driver, listen=False) as router:
            assert (await router.placement(c)).shard == "cyberdyne"
            move_by_hand(settings, c, "cyberdyne", "bluth_co")
            with pytest.raises(TenantMoved, match="from shard 'cyberdyne' to 'bluth_co'"):
                async with router.connect(c) as conn:
                    await conn.execute(text("INSERT INTO items VALUES (4, 'lost?')"))
            async with router.begin(c) as conn:
                await conn.execute(text("INSERT INTO items VALUES (4, 'retried')"))

    run(main())
    assert shard_sql(settings, "bluth_co", f'SELECT note FROM "{c}".items WHERE id = 4') == [
        ("retried",)
    ]
    assert shard_sql(
        settings, "cyberdyne", f'SELECT count(*) FROM "ppp_moved_{c}".items WHERE id = 4'
    ) == [(0,)]


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_moving_tenant_refuses_writes_waits_and_reads(settings, tenants, driver):
    a = next(iter(tenants))

    async def main() -> None:
        async with AsyncTenantRouter(settings, driver) as router:
            await router.placement(a)
            catalog(settings, "UPDATE ppp.tenants SET state = 'moving' WHERE schema = :s", s=a)
            notify(settings, a)

            async def moving() -> bool:
                return (await router.placement(a)).state == "moving"

            assert await eventually(moving)
            with pytest.raises(TenantMoving, match="being moved off shard 'bluth_co'"):
                async with router.connect(a):
                    pass
            async with router.connect(a, read_only=True) as conn:
                assert (await conn.execute(text("SELECT note FROM items"))).scalar() == a
        async with AsyncTenantRouter(settings, driver, move_wait=5.0) as waiting:
            await waiting.placement(a)
            loop = asyncio.get_running_loop()
            loop.call_later(
                0.5,
                lambda: (
                    catalog(
                        settings, "UPDATE ppp.tenants SET state = 'active' WHERE schema = :s", s=a
                    ),
                    notify(settings, a),
                ),
            )
            started = time.monotonic()
            async with waiting.begin(a) as conn:
                await conn.execute(text("INSERT INTO items VALUES (5, 'after the move')"))
            assert 0.3 < time.monotonic() - started < 5.0

    run(main())


@pytest.mark.parametrize("driver", DRIVERS)
def test_faults_are_clear_errors(topology, settings, tenants, driver):
    a, b, c = tenants
    down = topology.settings_for(topology.variant(PPP_SHARD_CYBERDYNE_PORT=str(free_port())))

    async def main() -> None:
        async with AsyncTenantRouter(settings, driver, listen=False) as router:
            with pytest.raises(UnknownTenant, match="unknown tenant 'rt_nobody_here'"):
                async with router.connect("rt_nobody_here"):
                    pass
            with pytest.raises(PPPError, match="invalid tenant schema name"):
                async with router.connect("x'; DROP TABLE y; --"):
                    pass
        async with AsyncTenantRouter(down, driver, listen=False) as router:
            with pytest.raises(ShardUnavailable, match="shard 'cyberdyne' is unavailable") as info:
                async with router.connect(c):
                    pass
            assert down.shard("cyberdyne").app_password not in str(info.value)
            async with router.connect(a) as conn:  # the other shards keep working
                assert (await conn.execute(text("SELECT note FROM items"))).scalar() == a
        async with AsyncTenantRouter(
            settings, driver, pool_size=1, max_overflow=0, pool_timeout=0.3, listen=False
        ) as router:
            async with router.connect(a):
                with pytest.raises(PoolExhausted, match="no free connection to shard 'bluth_co'"):
                    async with router.connect(b):
                        pass
            async with router.connect(b) as conn:
                assert (await conn.execute(text("SELECT note FROM items"))).scalar() == b

    run(main())


@pytest.mark.parametrize("driver", DRIVERS)
def test_strict_isolation_in_the_async_router(settings, tenants, driver):
    a, b, c = tenants
    role_a = isolation.enable(settings, a)
    isolation.enable(settings, b)

    async def main() -> None:
        async with AsyncTenantRouter(settings, driver, strict=True, listen=False) as router:
            async with router.begin(a) as conn:
                assert (await conn.execute(text("SELECT current_user"))).scalar() == role_a
                await conn.execute(text("INSERT INTO items VALUES (8, 'mine')"))
            for sql in (
                f'SELECT note FROM "{b}".items',
                f"SET ROLE {settings.shard('bluth_co').app_role}",
            ):
                with pytest.raises(Exception, match="permission denied"):
                    async with router.connect(a) as conn:
                        await conn.execute(text(sql))
            with pytest.raises(RoutingError, match="strict isolation is not enabled for tenant"):
                async with router.connect(c):
                    pass

    run(main())
    assert shard_sql(settings, "bluth_co", f'SELECT note FROM "{a}".items WHERE id = 8') == [
        ("mine",)
    ]


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_async_listener_survives_a_lost_connection(settings, tenants, driver):
    a = next(iter(tenants))

    async def main() -> None:
        async with AsyncTenantRouter(settings, driver) as router:
            await router.placement(a)
            with db.connection(settings.veneer, "superuser", autocommit=True) as conn:
                conn.cursor().execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'ppp-router-listen'"
                )
            await asyncio.sleep(0.2)
            move_by_hand(settings, a, "bluth_co", "initech")
            notify(settings, a)

            async def moved() -> bool:
                return (await router.placement(a)).shard == "initech"

            assert await eventually(moved)

    run(main())


def test_without_the_async_extra_the_base_package_works_and_says_what_to_install(settings):
    """asyncpg, psycopg 3 and greenlet hidden: PPP imports (its CLI too), the sync router on
    psycopg2 is there, and the routers that need the extra say how to get it."""
    program = textwrap.dedent(
        """
        import sys
        for name in ("asyncpg", "psycopg", "greenlet"):
            sys.modules[name] = None  # import fails as if not installed
        import ppp_env.cli.main
        from ppp_env.routing import AsyncTenantRouter, RoutingError, TenantRouter
        from ppp_env.settings import load_settings
        settings = load_settings()
        for make in (
            lambda: AsyncTenantRouter(settings, "asyncpg"),
            lambda: AsyncTenantRouter(settings, "psycopg"),
            lambda: TenantRouter(settings, driver="psycopg", listen=False),
        ):
            try:
                make()
            except RoutingError as exc:
                print(exc)
        with TenantRouter(settings, listen=False) as router:
            print("psycopg2 router:", router.driver)
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 4, res.stdout
    for line in lines[:3]:
        assert line.endswith("pip install 'ppp-env[async]'"), line
    assert "AsyncTenantRouter(driver='asyncpg')" in lines[0]
    assert "TenantRouter(driver='psycopg')" in lines[2]
    assert lines[3] == "psycopg2 router: psycopg2"
    with pytest.raises(RoutingError, match="unknown driver 'mysql'"):
        AsyncTenantRouter(settings, "mysql")  # type: ignore[arg-type]


# -- the sync router on psycopg 3 ----------------------------------------------------------------
def test_the_sync_router_on_psycopg3(settings, tenants):
    a, b, _ = tenants
    with TenantRouter(settings, driver="psycopg", pool_size=1, max_overflow=0, listen=False) as r:
        with r.begin(a) as conn:
            assert conn.execute(text("SELECT current_schemas(false)")).scalar() == [a]
            conn.execute(text("INSERT INTO items VALUES (9, :n)"), {"n": "psycopg3"})
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with r.connect(b) as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() == pid
            assert conn.execute(text("SELECT note FROM items WHERE id = 1")).scalar() == b
        with (
            pytest.raises(RoutingError, match="without a tenant"),
            r.engine(r.placement(a)).connect() as conn,
        ):
            conn.execute(text("SELECT 1"))
        move_by_hand(settings, b, "bluth_co", "cyberdyne")
        with (
            pytest.raises(TenantMoved, match="from shard 'bluth_co' to 'cyberdyne'"),
            r.connect(b) as conn,
        ):
            conn.execute(text("SELECT note FROM items"))
        with r.connect(b) as conn:
            assert conn.execute(text("SELECT current_database()")).scalar() == "cyberdyne"
    assert shard_sql(settings, "bluth_co", f'SELECT note FROM "{a}".items WHERE id = 9') == [
        ("psycopg3",)
    ]


@pytest.mark.parametrize("driver", DRIVERS)
def test_parameters_of_a_transactions_first_statement_keep_their_values(settings, tenants, driver):
    """The first statement of a transaction carries the tenant's selection (psycopg 3: bound
    client-side in the same query string): quotes, percent signs, NULLs and typed values
    arrive as they were sent, on either driver."""
    a = next(iter(tenants))
    tricky = "O'Reilly; 100% %s %(x)s -- \\ done"
    day = datetime.date(2026, 12, 6)

    async def main() -> None:
        async with AsyncTenantRouter(settings, driver, listen=False) as router:
            async with router.begin(a) as conn:
                await conn.execute(
                    text("INSERT INTO items VALUES (:i, :n)"), {"i": 11, "n": tricky}
                )
            async with router.connect(a) as conn:
                row = await conn.execute(
                    text(
                        "SELECT note, CAST(:d AS date), CAST(:x AS numeric), "
                        "CAST(:z AS text) IS NULL FROM items WHERE id = :i"
                    ),
                    {"i": 11, "d": day, "x": Decimal("12.50"), "z": None},
                )
                assert row.one() == (tricky, day, Decimal("12.50"), True)

    run(main())
    with TenantRouter(settings, driver="psycopg", listen=False) as r, r.connect(a) as conn:
        row = conn.execute(text("SELECT note FROM items WHERE note = :n"), {"n": tricky})
        assert row.scalar() == tricky


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_prepared_statement_never_answers_for_another_tenant(settings, tenants, driver):
    """asyncpg prepares every statement and psycopg 3 prepares repeated ones, per connection:
    the same query text on the same pooled connection, tenant after tenant, still reads each
    tenant's own table (PostgreSQL parses a prepared statement again when search_path
    changed)."""
    a, b, _ = tenants

    async def main() -> None:
        async with AsyncTenantRouter(
            settings, driver, pool_size=1, max_overflow=0, listen=False
        ) as router:
            pids = set()
            for i in range(8):
                tenant = (a, b)[i % 2]
                async with router.connect(tenant) as conn:
                    row = await conn.execute(
                        text("SELECT note, pg_backend_pid() FROM items WHERE id = :i"), {"i": 1}
                    )
                    note, pid = row.one()
                    assert note == tenant, i
                    pids.add(pid)
            assert len(pids) == 1

    run(main())


@pytest.mark.parametrize("driver", DRIVERS)
def test_tenants_whose_tables_differ_on_one_pooled_connection(settings, tenants, driver):
    """Tenant b's table has one more column (a rollout half done): psycopg 3 answers both
    shapes; asyncpg's cached statement fails with a clear error at each change of shape, and
    the retry on the same connection works."""
    a, b, _ = tenants
    shard_sql(settings, "bluth_co", f'ALTER TABLE "{b}".items ADD COLUMN extra int DEFAULT 7')
    want = {a: (1, a), b: (1, b, 7)}

    async def main() -> None:
        async with AsyncTenantRouter(
            settings, driver, pool_size=1, max_overflow=0, listen=False
        ) as router:
            for i in range(6):
                tenant = (a, b)[i % 2]
                for attempt in (1, 2):
                    try:
                        async with router.connect(tenant) as conn:
                            rows = await conn.execute(text("SELECT * FROM items WHERE id = 1"))
                            assert tuple(rows.one()) == want[tenant]
                        break
                    except Exception as exc:
                        assert driver == "asyncpg" and i > 0 and attempt == 1, exc
                        assert "cached statement plan is invalid" in str(exc)

    run(main())


@pytest.mark.parametrize("driver", DRIVERS)
def test_shared_schemas_follow_the_tenant_and_read_only_holds(settings, tenants, driver):
    a = next(iter(tenants))

    async def main() -> None:
        async with AsyncTenantRouter(
            settings, driver, shared_schemas=["public"], listen=False
        ) as router:
            async with router.connect(a, read_only=True) as conn:
                schemas = (await conn.execute(text("SELECT current_schemas(false)"))).scalar()
                assert schemas == [a, "public"]
                with pytest.raises(Exception, match="read-only transaction"):
                    await conn.execute(text("INSERT INTO items VALUES (12, 'no')"))
            async with router.begin(a) as conn:  # the same connection, writable again
                await conn.execute(text("INSERT INTO items VALUES (12, 'yes')"))

    run(main())
    assert shard_sql(settings, "bluth_co", f'SELECT note FROM "{a}".items WHERE id = 12') == [
        ("yes",)
    ]
