"""The tenant router against the real topology: routing, search_path hygiene, placement
changes, moves, isolation, and the faults (unknown tenant, moving, shard down, pool full)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg2.extensions
import pytest
from sqlalchemy import Integer, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ppp_env import db
from ppp_env.errors import PPPError
from ppp_env.routing import (
    CatalogPlacement,
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
from ppp_env.veneer.catalog import admin_connection
from tests.conftest import register, shard_sql, unregister
from tests.plugins.routing import catalog, move_by_hand, notify, wait_for


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    note: Mapped[str] = mapped_column(String)


@pytest.fixture
def router(settings) -> Iterator[TenantRouter]:
    with TenantRouter(settings, pool_size=2, max_overflow=0, pool_timeout=2) as r:
        yield r


def test_reads_and_writes_land_on_the_tenants_shard_and_schema(settings, tenants, router):
    for schema, shard in tenants.items():
        with router.begin(schema) as conn:
            assert conn.execute(text("SELECT note FROM items")).scalar() == schema
            assert conn.execute(text("SELECT current_database()")).scalar() == shard
            conn.execute(text("INSERT INTO items VALUES (2, :n)"), {"n": f"w-{schema}"})
    for schema, shard in tenants.items():
        rows = shard_sql(settings, shard, f'SELECT id, note FROM "{schema}".items ORDER BY id')
        assert rows == [(1, schema), (2, f"w-{schema}")]


def test_orm_session_writes_into_the_tenant(settings, tenants, router):
    a = next(iter(tenants))
    with router.session(a) as session:
        session.add(Item(id=7, note="orm"))
        session.commit()
        assert session.get(Item, 1).note == a
    assert shard_sql(settings, "bluth_co", f'SELECT note FROM "{a}".items WHERE id = 7') == [
        ("orm",)
    ]


def test_search_path_is_exactly_the_tenant_and_never_leaks(settings, tenants):
    a, b, _ = tenants
    with TenantRouter(settings, pool_size=1, max_overflow=0, listen=False) as router:
        with router.connect(a) as conn:
            assert conn.execute(text("SHOW search_path")).scalar() == f'"{a}"'
            assert conn.execute(text("SELECT current_schemas(false)")).scalar() == [a]
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        # The same pooled connection (pool of one) for tenant b: b, not a.
        with router.connect(b) as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() == pid
            assert conn.execute(text("SELECT current_schemas(false)")).scalar() == [b]
            assert conn.execute(text("SELECT note FROM items")).scalar() == b
        # A returned connection holds no tenant: its search_path lasted as long as the
        # transaction ...
        # (read with a plain psycopg2 cursor, going around the router on purpose) ...
        eng = router.engine(router.placement(a))
        raw = eng.raw_connection()
        try:
            cur = raw.cursor(cursor_factory=psycopg2.extensions.cursor)
            cur.execute("SELECT pg_backend_pid(), current_schemas(false)")
            assert cur.fetchone() == (pid, [])
            raw.rollback()
            # ... and refuses statements unless it came through the router.
            with pytest.raises(RoutingError, match="without a tenant"):
                raw.cursor().execute("SELECT 1")
        finally:
            raw.close()
        with (
            pytest.raises(RoutingError, match="without a tenant"),
            eng.connect() as conn,
        ):
            conn.execute(text("SELECT 1"))
        # Every transaction of a routed connection selects the tenant again.
        with router.connect(a) as conn:
            conn.execute(text("SELECT 1"))
            conn.rollback()
            assert conn.execute(text("SELECT current_schemas(false)")).scalar() == [a]


def test_a_fresh_connection_starts_without_public(settings, tenants, router):
    a = next(iter(tenants))
    eng = router.engine(router.placement(a))
    conn = eng.pool._creator()  # a new DBAPI connection, made as the pool makes them
    try:
        cur = conn.cursor()
        cur.execute("SELECT current_schemas(false)")
        assert cur.fetchone()[0] == []
    finally:
        conn.close()


def test_threads_each_reach_their_own_tenant(settings, tenants):
    names = list(tenants)
    errors: list[BaseException] = []
    with TenantRouter(settings, pool_size=3, max_overflow=0, pool_timeout=10) as router:

        def work(i: int) -> None:
            try:
                for j in range(20):
                    tenant = names[(i + j) % len(names)]
                    with router.begin(tenant) as conn:
                        assert conn.execute(text("SELECT note FROM items WHERE id = 1")).scalar()
                        conn.execute(
                            text("INSERT INTO items VALUES (:id, :n)"),
                            {"id": 1000 + i * 100 + j, "n": tenant},
                        )
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    for schema, shard in tenants.items():
        notes = shard_sql(settings, shard, f'SELECT DISTINCT note FROM "{schema}".items')
        assert notes == [(schema,)]
        count = shard_sql(settings, shard, f'SELECT count(*) FROM "{schema}".items')[0][0]
        assert count == 1 + 40  # each of 6 threads x 20 writes, spread over 3 tenants


def test_a_notified_placement_change_reaches_the_router(settings, tenants, router):
    a = next(iter(tenants))
    assert router.placement(a).shard == "bluth_co"
    move_by_hand(settings, a, "bluth_co", "initech")
    notify(settings, a)
    assert wait_for(lambda: router.placement(a).shard == "initech")
    with router.begin(a) as conn:
        assert conn.execute(text("SELECT current_database()")).scalar() == "initech"
        conn.execute(text("INSERT INTO items VALUES (3, 'after')"))
    assert shard_sql(settings, "initech", f'SELECT note FROM "{a}".items WHERE id = 3') == [
        ("after",)
    ]


def test_a_write_on_the_old_shard_after_a_move_fails_loudly_then_retries(settings, tenants):
    a = next(iter(tenants))
    with TenantRouter(settings, listen=False) as router:
        with (
            pytest.raises(TenantMoved, match="moved from shard 'bluth_co' to 'initech'"),
            router.connect(a) as conn,
        ):
            assert conn.execute(text("SELECT note FROM items")).scalar() == a
            conn.commit()
            move_by_hand(settings, a, "bluth_co", "initech")
            conn.execute(text("INSERT INTO items VALUES (4, 'lost?')"))
        # Nothing landed anywhere; the retry goes to the new shard.
        assert shard_sql(
            settings, "bluth_co", f'SELECT count(*) FROM "ppp_moved_{a}".items WHERE id = 4'
        ) == [(0,)]
        with router.begin(a) as conn:
            conn.execute(text("INSERT INTO items VALUES (4, 'retried')"))
    assert shard_sql(settings, "initech", f'SELECT note FROM "{a}".items WHERE id = 4') == [
        ("retried",)
    ]


def test_a_stale_placement_fails_the_first_statement_then_retries(settings, tenants):
    a = next(iter(tenants))
    with TenantRouter(settings, listen=False) as router:
        assert router.placement(a).shard == "bluth_co"
        move_by_hand(settings, a, "bluth_co", "cyberdyne")  # no listener to hear of it
        with (
            pytest.raises(TenantMoved, match="from shard 'bluth_co' to 'cyberdyne'"),
            router.connect(a) as conn,
        ):
            conn.execute(text("SELECT note FROM items"))
        with router.connect(a) as conn:
            assert conn.execute(text("SELECT current_database()")).scalar() == "cyberdyne"
        assert router.placement(a).shard == "cyberdyne"


def test_a_moving_tenant_refuses_writes_but_can_be_read(settings, tenants, router):
    a = next(iter(tenants))
    router.placement(a)
    catalog(settings, "UPDATE ppp.tenants SET state = 'moving' WHERE schema = :s", s=a)
    notify(settings, a)
    assert wait_for(lambda: router.placement(a).state == "moving")
    started = time.monotonic()
    with (
        pytest.raises(TenantMoving, match="being moved off shard 'bluth_co'"),
        router.connect(a),
    ):
        pass
    assert time.monotonic() - started < 1.0  # move_wait=0: at once
    with router.connect(a, read_only=True) as conn:
        assert conn.execute(text("SELECT note FROM items")).scalar() == a
        with pytest.raises(Exception, match="read-only transaction"):
            conn.execute(text("INSERT INTO items VALUES (5, 'x')"))
    # A bounded wait: the move finishes while the router waits.
    with TenantRouter(settings, move_wait=5.0) as waiting:
        timer = threading.Timer(
            0.5,
            lambda: (
                catalog(settings, "UPDATE ppp.tenants SET state = 'active' WHERE schema = :s", s=a),
                notify(settings, a),
            ),
        )
        timer.start()
        with waiting.begin(a) as conn:
            conn.execute(text("INSERT INTO items VALUES (5, 'after the move')"))
        timer.join()
    # The read-only connection went back to the pool; a write checkout resets it.
    with router.begin(a) as conn:
        conn.execute(text("INSERT INTO items VALUES (6, 'rw again')"))


def test_unknown_and_invalid_tenants_are_clear_errors(settings, tenants, router):
    with (
        pytest.raises(UnknownTenant, match="unknown tenant 'rt_nobody_here'"),
        router.connect("rt_nobody_here"),
    ):
        pass
    with (
        pytest.raises(PPPError, match="invalid tenant schema name"),
        router.connect("Robert'); DROP TABLE x; --"),
    ):
        pass
    with pytest.raises(PPPError, match="'public' is reserved"):
        router.placement("public")


def test_a_registered_tenant_without_schema_is_a_clear_error(settings, veneer_head, router):
    schema = f"rt_{uuid.uuid4().hex[:6]}_pending"
    register(settings, {schema: "initech"})
    try:
        with (
            pytest.raises(RoutingError, match="no schema on shard 'initech' yet"),
            router.connect(schema) as conn,
        ):
            conn.execute(text("SELECT * FROM items"))
    finally:
        unregister(settings, [schema])


def test_a_down_shard_is_named_and_other_tenants_keep_working(topology, tenants):
    down = topology.settings_for(topology.variant(PPP_SHARD_CYBERDYNE_PORT=str(free_port())))
    a, _, c = tenants
    with TenantRouter(down, pool_timeout=2) as router:
        with (
            pytest.raises(ShardUnavailable, match="shard 'cyberdyne' is unavailable") as info,
            router.connect(c),
        ):
            pass
        assert info.value.shard == "cyberdyne"
        assert down.shard("cyberdyne").app_password not in str(info.value)
        with router.connect(a) as conn:
            assert conn.execute(text("SELECT note FROM items")).scalar() == a


def test_an_exhausted_pool_waits_a_bounded_time_then_says_so(settings, tenants):
    a, b, _ = tenants
    with TenantRouter(settings, pool_size=1, max_overflow=0, pool_timeout=0.3) as router:
        with router.connect(a):
            started = time.monotonic()
            with (
                pytest.raises(PoolExhausted, match="no free connection to shard 'bluth_co'"),
                router.connect(b),
            ):
                pass
            assert time.monotonic() - started < 2.0
        with router.connect(b) as conn:  # returned: free again
            assert conn.execute(text("SELECT note FROM items")).scalar() == b


def test_strict_isolation_denies_other_tenants_even_with_arbitrary_sql(settings, tenants):
    a, b, _ = tenants
    # Without strict isolation the shard's app role reaches every tenant of the shard.
    with TenantRouter(settings, listen=False) as loose, loose.connect(a) as conn:
        assert conn.execute(text(f'SELECT note FROM "{b}".items')).scalar() == b
    role_a = isolation.enable(settings, a)
    isolation.enable(settings, b)
    with TenantRouter(settings, strict=True, listen=False) as router:
        with router.begin(a) as conn:
            assert conn.execute(text("SELECT current_user")).scalar() == role_a
            assert conn.execute(text("SELECT note FROM items")).scalar() == a
            conn.execute(text("INSERT INTO items VALUES (8, 'mine')"))
        for sql in (
            f'SELECT note FROM "{b}".items',
            f"INSERT INTO \"{b}\".items VALUES (9, 'theirs')",
            f"SET ROLE {settings.shard('bluth_co').app_role}",
            f"SET ROLE {isolation.role_name(settings.shard('bluth_co'), b)}",
            "SET SESSION AUTHORIZATION postgres",
        ):
            with router.connect(a) as conn, pytest.raises(Exception, match="permission denied"):
                conn.execute(text(sql))
        with router.connect(b) as conn:
            assert conn.execute(text("SELECT count(*) FROM items")).scalar() == 1
    assert shard_sql(settings, "bluth_co", f'SELECT note FROM "{a}".items WHERE id = 8') == [
        ("mine",)
    ]


def test_strict_isolation_without_enable_is_a_clear_error(settings, tenants):
    c = list(tenants)[2]
    with (
        TenantRouter(settings, strict=True, listen=False) as router,
        pytest.raises(RoutingError, match="strict isolation is not enabled for tenant"),
        router.connect(c),
    ):
        pass


def test_isolation_enable_refuses_unknown_tenants_and_changes_nothing(settings, tenants):
    with pytest.raises(PPPError, match="unknown tenant 'rt_nobody'"):
        isolation.enable(settings, "rt_nobody")
    with pytest.raises(PPPError, match="invalid tenant schema name"):
        isolation.enable(settings, "x; DROP ROLE postgres")
    role = isolation.role_name(settings.shard("bluth_co"), "rt_nobody")
    assert (
        shard_sql(settings, "bluth_co", "SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)) == []
    )


def test_isolation_roles_fit_identifier_limits(settings):
    inst = settings.shard("bluth_co")
    assert isolation.role_name(inst, "acme") == "bluth_co_t_acme"
    long = isolation.role_name(inst, "t" * 63)
    assert len(long) <= 63 and long.startswith("ppp_t_")
    assert isolation.role_password(inst, "r") != isolation.role_password(inst, "s")


def test_the_listener_survives_a_lost_connection(settings, tenants, router):
    a = next(iter(tenants))
    router.placement(a)
    assert router.listener is not None
    with db.connection(settings.veneer, "superuser", autocommit=True) as conn:
        conn.cursor().execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'ppp-router-listen'"
        )
    move_by_hand(settings, a, "bluth_co", "initech")
    notify(settings, a)
    # Either the notification or the reconnect's "forget everything" reaches the cache.
    assert wait_for(lambda: router.placement(a).shard == "initech")


def test_placement_comes_from_the_function_when_the_app_role_may_call_it(settings, tenants, router):
    a = next(iter(tenants))
    assert router.placement(a).shard == "bluth_co"
    with admin_connection(settings) as conn:
        has_function = conn.execute(
            text(
                "SELECT to_regprocedure('ppp.placement()') IS NOT NULL "
                "AND has_schema_privilege(:app, 'ppp', 'USAGE') "
                "AND has_function_privilege(:app, 'ppp.placement()', 'EXECUTE')"
            ),
            {"app": settings.veneer.app_role},
        ).scalar()
    source = router.source
    assert isinstance(source, CatalogPlacement)
    expected = CatalogPlacement.FUNCTION_SQL if has_function else CatalogPlacement.TABLE_SQL
    assert source._sql == expected


def test_the_routing_example_runs_against_the_demo_tenants(veneer_head):
    from click.testing import CliRunner

    from ppp_env.cli.main import cli
    from tests.conftest import ROOT

    tenants = "bluth_co,cyberdyne,initech"
    ini = str(ROOT / "alembic.ini")
    migrated = CliRunner().invoke(cli, ["migrate", "-c", ini, "--tenant", tenants])
    assert migrated.exit_code == 0, migrated.output
    res = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "routing_example.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert res.returncode == 0, res.stderr
    for tenant in tenants.split(","):
        assert f"{tenant}: Ernest Hemingway" in res.stdout
    assert "initech: wrote an author through the ORM (rolled back)" in res.stdout


def test_a_connection_lost_mid_session_names_the_shard(settings, tenants, router):
    a = next(iter(tenants))
    with (
        pytest.raises(ShardUnavailable, match="lost the connection to shard 'bluth_co'"),
        router.connect(a) as conn,
    ):
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        shard_sql(settings, "bluth_co", "SELECT pg_terminate_backend(%s)", (pid,), "superuser")
        conn.execute(text("SELECT note FROM items"))
    with router.connect(a) as conn:  # the pool replaced it
        assert conn.execute(text("SELECT note FROM items")).scalar() == a
