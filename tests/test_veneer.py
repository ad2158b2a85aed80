"""The veneer's wiring on real servers: servers, mappings, refresh, pushdown, security."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from alembic import command
from sqlalchemy import text

from ppp_env import veneer
from ppp_env.db import connection
from ppp_env.errors import PPPError
from ppp_env.servers.local import free_port
from ppp_env.servers.provision import encrypt_password, provision_instance, teardown_instance
from ppp_env.settings import Settings, load_settings
from ppp_env.veneer import catalog
from ppp_env.veneer import env as veneer_env
from tests.plugins.veneer import (
    EXAMPLE,
    ROOT,
    alembic_config,
    app_conn,
    drop_tenant_data,
    make_tenant_data,
    register,
    shard_sql,
    unregister,
)

pytestmark = pytest.mark.usefixtures("veneer_ready")

ALPHA, BETA = "vt_alpha", "vt_beta"  # on shards bluth_co and cyberdyne


@pytest.fixture(scope="module")
def tenants(veneer_ready: Settings) -> Iterator[Settings]:
    """Two extra tenants on two shards, registered and wired; removed afterwards."""
    settings = veneer_ready
    placed = {ALPHA: "bluth_co", BETA: "cyberdyne"}
    for schema, shard in placed.items():
        drop_tenant_data(settings.shards[shard], schema)
        make_tenant_data(settings.shards[shard], schema, books=True)
        register(settings, schema, shard)
    report = veneer.refresh(settings, list(placed))
    assert report.refreshed == [ALPHA, BETA], report
    try:
        yield settings
    finally:
        for schema, shard in placed.items():
            unregister(settings, schema)
            drop_tenant_data(settings.shards[shard], schema)


def app_rows(settings: Settings, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    conn = app_conn(settings)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def explain(settings: Settings, sql: str) -> str:
    return "\n".join(r[0] for r in app_rows(settings, "EXPLAIN (VERBOSE, COSTS OFF) " + sql))


def options(raw: list[str] | None) -> dict[str, str]:
    return dict(item.split("=", 1) for item in raw or [])


# -- catalog and wiring after `alembic -n veneer upgrade head` ----------------------------------
def test_upgrade_head_builds_catalog_servers_and_mappings(settings: Settings) -> None:
    command.upgrade(alembic_config(), "head")  # the same as `alembic -n veneer upgrade head`
    with catalog.admin_connection(settings) as conn:
        shards = catalog.list_shards(conn)
        servers = {
            r.srvname: options(r.srvoptions)
            for r in conn.execute(text("SELECT srvname, srvoptions FROM pg_foreign_server"))
        }
        mappings = {
            (r.srvname, r.usename)
            for r in conn.execute(text("SELECT srvname, usename FROM pg_user_mappings"))
        }
        versions = tuple(
            sorted(conn.execute(text("SELECT version_num FROM ppp.alembic_version")).scalars())
        )
    assert [s.name for s in shards] == sorted(settings.shards)
    for name, inst in settings.shards.items():
        assert servers[name] == {
            "host": inst.fdw_host,
            "port": str(inst.fdw_port),
            "dbname": inst.dbname,
            "async_capable": "true",
            "fetch_size": "1000",
            "use_remote_estimate": "false",
            "fdw_startup_cost": "50000",
            "fdw_tuple_cost": "10",
        }
        assert (name, settings.veneer.admin_role) in mappings
        assert (name, settings.veneer.app_role) in mappings
    assert versions == veneer_env.status(settings).heads  # one head per tenant, and the catalog's
    example = catalog.list_tenants(settings, tenants=list(EXAMPLE))
    assert [(t.schema, t.shard, t.state) for t in example] == [(s, s, "active") for s in EXAMPLE]


def test_status_reports_head_and_servers(settings: Settings) -> None:
    st = veneer_env.status(settings)
    assert st.at_head
    assert {s.shard for s in st.servers} == set(settings.shards)
    assert all(s.in_settings for s in st.servers)


# -- the example's query, and writes ------------------------------------------------------------
def test_example_query_from_one_connection(settings: Settings) -> None:
    conn = app_conn(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone() == (settings.veneer.app_role,)
            for tenant in EXAMPLE:
                cur.execute(f"SELECT * FROM {tenant}.authors WHERE first_name = 'Ernest';")
                rows = cur.fetchall()
                assert rows, tenant
                assert {(r[1], r[2]) for r in rows} == {("Ernest", "Hemingway")}
    finally:
        conn.close()


def test_writes_through_the_veneer_reach_the_shard(tenants: Settings) -> None:
    settings = tenants
    shard = settings.shards["bluth_co"]
    new_id = app_rows(
        settings,
        f"INSERT INTO {ALPHA}.authors (first_name, last_name) VALUES ('Zora', 'Hurston') "
        "RETURNING id",
    )[0][0]
    assert shard_sql(shard, f"SELECT last_name FROM {ALPHA}.authors WHERE id = %s", (new_id,)) == [
        ("Hurston",)
    ]
    app_rows(
        settings,
        f"UPDATE {ALPHA}.authors SET last_name = 'Neale Hurston' WHERE id = %s RETURNING id",
        (new_id,),
    )
    assert shard_sql(shard, f"SELECT last_name FROM {ALPHA}.authors WHERE id = %s", (new_id,)) == [
        ("Neale Hurston",)
    ]
    app_rows(settings, f"DELETE FROM {ALPHA}.authors WHERE id = %s RETURNING id", (new_id,))
    assert shard_sql(shard, f"SELECT 1 FROM {ALPHA}.authors WHERE id = %s", (new_id,)) == []


# -- pushdown -----------------------------------------------------------------------------------
def test_where_is_pushed_down(tenants: Settings) -> None:
    plan = explain(tenants, f"SELECT * FROM {ALPHA}.authors WHERE first_name = 'Ernest'")
    assert plan.count("Remote SQL:") == 1, plan
    assert "WHERE ((first_name = 'Ernest'))" in plan.split("Remote SQL:", 1)[1], plan


def test_order_by_and_limit_are_pushed_down(tenants: Settings) -> None:
    plan = explain(tenants, f"SELECT * FROM {ALPHA}.authors ORDER BY last_name LIMIT 2")
    assert plan.count("Remote SQL:") == 1, plan
    remote = plan.split("Remote SQL:", 1)[1]
    assert "ORDER BY last_name ASC NULLS LAST LIMIT 2" in remote, plan


def test_join_of_one_tenant_is_pushed_down(tenants: Settings) -> None:
    plan = explain(
        tenants,
        f"SELECT a.last_name, b.title FROM {ALPHA}.authors a "
        f"JOIN {ALPHA}.books b ON b.author_id = a.id WHERE a.first_name = 'Ernest'",
    )
    assert plan.count("Remote SQL:") == 1, plan
    remote = plan.split("Remote SQL:", 1)[1]
    assert "INNER JOIN" in remote and "authors" in remote and "books" in remote, plan
    rows = app_rows(
        tenants,
        f"SELECT a.last_name, b.title FROM {ALPHA}.authors a "
        f"JOIN {ALPHA}.books b ON b.author_id = a.id WHERE a.first_name = 'Ernest'",
    )
    assert rows == [("Hemingway", "The Old Man and the Sea")]


def test_append_over_two_shards_runs_async(tenants: Settings) -> None:
    sql = (
        f"SELECT first_name FROM {ALPHA}.authors WHERE last_name = 'Hemingway' "
        f"UNION ALL SELECT first_name FROM {BETA}.authors WHERE last_name = 'Hemingway'"
    )
    plan = explain(tenants, sql)
    assert "Append" in plan, plan
    assert plan.count("Async Foreign Scan") == 2, plan
    assert app_rows(tenants, sql) == [("Ernest",), ("Ernest",)]


# -- refresh ------------------------------------------------------------------------------------
def test_refresh_shows_new_columns_and_readers_never_fail(tenants: Settings) -> None:
    settings = tenants
    shard = settings.shards["bluth_co"]
    errors: list[BaseException] = []
    seen: list[int] = []
    stop = threading.Event()
    progress = threading.Condition()

    def reader_ran_more(queries: int = 3) -> None:
        """Wait (bounded) until the reader completed a few more queries, or stopped."""
        target = len(seen) + queries
        with progress:
            progress.wait_for(
                lambda: len(seen) >= target or errors or not thread.is_alive(), timeout=30
            )

    def reader() -> None:
        conn = app_conn(settings)
        try:
            with conn.cursor() as cur:
                deadline = time.monotonic() + 60
                while not stop.is_set() and time.monotonic() < deadline:
                    try:
                        cur.execute(f"SELECT * FROM {ALPHA}.authors WHERE first_name = 'Ernest'")
                        seen.append(len(cur.fetchall()))
                        with progress:
                            progress.notify_all()
                    except psycopg2.Error as exc:
                        errors.append(exc)
                        return
        finally:
            conn.close()
            with progress:
                progress.notify_all()

    thread = threading.Thread(target=reader)
    thread.start()
    added = [f"extra_{i}" for i in range(4)]
    try:
        for column in added:
            shard_sql(shard, f"ALTER TABLE {ALPHA}.authors ADD COLUMN {column} text")
            reader_ran_more()
            report = veneer.refresh(settings, [ALPHA, BETA])
            assert report.ok and report.refreshed == [ALPHA, BETA], report
            cols = [
                r[0]
                for r in app_rows(
                    settings,
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = %s AND table_name = 'authors' ORDER BY ordinal_position",
                    (ALPHA,),
                )
            ]
            assert column in cols
            reader_ran_more()
    finally:
        stop.set()
        thread.join(30)
        shard_sql(
            shard,
            f"ALTER TABLE {ALPHA}.authors "
            + ", ".join(f"DROP COLUMN IF EXISTS {c}" for c in added),
        )
        veneer.refresh(settings, [ALPHA])
    assert not errors, errors
    assert len(seen) > 10 and set(seen) == {1}


def test_refresh_records_the_shard_revision_and_skips_alembic_version(tenants: Settings) -> None:
    settings = tenants
    shard = settings.shards["bluth_co"]
    shard_sql(
        shard,
        f"CREATE TABLE {ALPHA}.alembic_version (version_num varchar(32) PRIMARY KEY);"
        f"INSERT INTO {ALPHA}.alembic_version VALUES ('abc123')",
    )
    try:
        report = veneer.refresh(settings, [ALPHA])
        assert report.revisions == {ALPHA: "abc123"}
        (tenant,) = catalog.list_tenants(settings, tenants=[ALPHA])
        assert tenant.wired_revision == "abc123" and tenant.wired_at is not None
        tables = app_rows(
            settings,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1",
            (ALPHA,),
        )
        assert tables == [("authors",), ("books",)]
    finally:
        shard_sql(shard, f"DROP TABLE {ALPHA}.alembic_version")
    veneer.refresh(settings, [ALPHA])
    (tenant,) = catalog.list_tenants(settings, tenants=[ALPHA])
    assert tenant.wired_revision is None


def test_refresh_of_a_tenant_without_schema_is_pending(tenants: Settings) -> None:
    settings = tenants
    shard = settings.shards["initech"]
    schema = "vt_gamma"
    drop_tenant_data(shard, schema)
    register(settings, schema, "initech")
    try:
        report = veneer.refresh(settings, [schema, ALPHA])
        assert report.pending == [schema] and report.refreshed == [ALPHA] and report.ok
        (tenant,) = catalog.list_tenants(settings, tenants=[schema])
        assert tenant.state == "pending" and tenant.wired_at is None
        make_tenant_data(shard, schema)
        report = veneer.refresh(settings, [schema])
        assert report.refreshed == [schema]
        (tenant,) = catalog.list_tenants(settings, tenants=[schema])
        assert tenant.state == "active"
        assert app_rows(
            settings, f"SELECT last_name FROM {schema}.authors WHERE first_name = 'Toni'"
        ) == [("Morrison",)]
    finally:
        unregister(settings, schema)
        drop_tenant_data(shard, schema)
    assert app_rows(settings, "SELECT to_regnamespace(%s)", (schema,)) == [(None,)]


def test_refresh_failure_of_one_tenant_leaves_it_intact_and_others_refreshed(
    tenants: Settings,
) -> None:
    settings = tenants
    shard = settings.shards["bluth_co"]
    with catalog.admin_connection(settings) as conn:
        conn.exec_driver_sql(f"CREATE VIEW {ALPHA}.ernest AS SELECT * FROM {ALPHA}.authors")
    # authors changes on the shard: its foreign table must be replaced, and the view blocks it.
    shard_sql(shard, f"ALTER TABLE {ALPHA}.authors ADD COLUMN nickname text")
    try:
        report = veneer.refresh(settings, [ALPHA, BETA])
        assert report.refreshed == [BETA]
        assert ALPHA in report.errors and "depend" in report.errors[ALPHA], report.errors
        assert app_rows(settings, f"SELECT count(*) FROM {ALPHA}.authors") == [(3,)]
        assert app_rows(settings, f"SELECT count(*) FROM {ALPHA}.ernest") == [(3,)]
        leftovers = app_rows(
            settings, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'ppp-%%'"
        )
        assert leftovers == []
    finally:
        with catalog.admin_connection(settings) as conn:
            conn.exec_driver_sql(f"DROP VIEW {ALPHA}.ernest")
        shard_sql(shard, f"ALTER TABLE {ALPHA}.authors DROP COLUMN nickname")
    assert veneer.refresh(settings, [ALPHA]).ok


def test_refresh_of_a_type_only_the_shard_has_is_reported(tenants: Settings) -> None:
    """A column of a type outside the tenant schema (a shared schema of the shard) that the
    veneer lacks: that tenant fails with the cause, the other is refreshed."""
    settings = tenants
    shard = settings.shards["cyberdyne"]
    shard_sql(
        shard,
        "CREATE SCHEMA vt_shared; CREATE TYPE vt_shared.mood AS ENUM ('ok', 'sad');"
        f"CREATE TABLE {BETA}.moods (id int PRIMARY KEY, m vt_shared.mood)",
    )
    try:
        report = veneer.refresh(settings, [ALPHA, BETA])
        assert report.refreshed == [ALPHA]
        assert report.errors[BETA].startswith(
            'cannot create its foreign tables: schema "vt_shared" does not exist (a column '
            "type outside pg_catalog and the tenant schema must exist in the veneer"
        ), report.errors
        assert app_rows(settings, f"SELECT count(*) FROM {BETA}.authors") == [(3,)]
    finally:
        shard_sql(shard, f"DROP TABLE {BETA}.moods; DROP SCHEMA vt_shared CASCADE")
    assert veneer.refresh(settings, [BETA]).refreshed == [BETA]


def test_refresh_of_unknown_tenant_is_an_error(tenants: Settings) -> None:
    with pytest.raises(PPPError, match="unknown tenant vt_nope: not in the catalog"):
        veneer.refresh(tenants, ["vt_nope"])


def test_refresh_all(tenants: Settings) -> None:
    report = veneer.refresh(tenants)
    assert {ALPHA, BETA, *EXAMPLE} <= set(report.refreshed) | set(report.pending)
    assert set(EXAMPLE) <= set(report.refreshed)


# -- reconcile with changed settings ------------------------------------------------------------
def _upgrade_from_environment() -> None:
    """`alembic -n veneer upgrade head` reading the settings from os.environ, like the CLI."""
    cfg = alembic_config()
    cfg.attributes.pop("ppp.settings", None)
    command.upgrade(cfg, "head")


def test_reconcile_applies_a_changed_port(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = settings.shards["initech"].env_prefix
    query = "SELECT count(*) FROM initech.authors WHERE first_name = 'Ernest'"
    # The session's own FDW_PORT (containers: 5432 on their network; local: unset) comes back.
    original = os.environ.get(f"{prefix}FDW_PORT")
    monkeypatch.setenv(f"{prefix}FDW_PORT", str(free_port()))
    try:
        _upgrade_from_environment()
        with pytest.raises(psycopg2.Error, match="could not connect"):
            app_rows(settings, query)
        with catalog.admin_connection(settings) as conn:
            recorded = {s.name: s.port for s in catalog.list_shards(conn)}
        assert recorded["initech"] != settings.shards["initech"].fdw_port
    finally:
        if original is None:
            monkeypatch.delenv(f"{prefix}FDW_PORT")
        else:
            monkeypatch.setenv(f"{prefix}FDW_PORT", original)
        _upgrade_from_environment()
    assert app_rows(settings, query)[0][0] >= 1


def _set_shard_password(settings: Settings, shard: str, password: str) -> None:
    inst = settings.shards[shard]
    with connection(inst, "superuser", autocommit=True) as conn, conn.cursor() as cur:
        verifier = encrypt_password(cur, inst.app_role, password)
        cur.execute("SET log_statement = 'none'")
        cur.execute(f"ALTER ROLE {inst.app_role} PASSWORD '{verifier}'")


def test_reconcile_applies_a_changed_password(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    inst = settings.shards["initech"]
    query = "SELECT count(*) FROM initech.authors WHERE first_name = 'Ernest'"
    new = "vt-new-app-password-" + str(free_port())
    _set_shard_password(settings, "initech", new)
    try:
        with pytest.raises(psycopg2.Error, match="password authentication failed") as failed:
            app_rows(settings, query)
        assert new not in str(failed.value) and inst.app_password not in str(failed.value)
        monkeypatch.setenv(f"{inst.env_prefix}APP_PASSWORD", new)
        _upgrade_from_environment()
        assert app_rows(settings, query)[0][0] >= 1
    finally:
        _set_shard_password(settings, "initech", inst.app_password)
        monkeypatch.setenv(f"{inst.env_prefix}APP_PASSWORD", inst.app_password)
        _upgrade_from_environment()
    assert app_rows(settings, query)[0][0] >= 1


def test_a_shard_added_then_removed_from_the_settings(topology: Any, settings: Settings) -> None:
    host = settings.shards["initech"]
    env = topology.variant(
        PPP_SHARDS=",".join([*settings.shards, "vt_extra"]),
        PPP_SHARD_VT_EXTRA_HOST=host.host,
        PPP_SHARD_VT_EXTRA_PORT=str(host.port),
        PPP_SHARD_VT_EXTRA_SUPERUSER=host.superuser,
        PPP_SHARD_VT_EXTRA_SUPERUSER_PASSWORD=host.superuser_password or "",
        PPP_SHARD_VT_EXTRA_ADMIN_PASSWORD="vt-extra-admin-pw",
        PPP_SHARD_VT_EXTRA_APP_PASSWORD="vt-extra-app-pw",
    )
    wider = load_settings(environ=env)
    extra = wider.shards["vt_extra"]
    provision_instance(extra, wider)
    try:
        result = veneer_env.upgrade(wider)
        assert "created foreign server vt_extra for " + f"{host.host}:{host.port}/vt_extra" in (
            result.changes
        )
        register(wider, "vt_on_extra", "vt_extra")
        with pytest.raises(PPPError) as err:
            veneer_env.upgrade(settings)
        assert "shard vt_extra is no longer in the settings" in str(err.value)
        assert "vt_on_extra" in str(err.value)
        with catalog.admin_connection(settings) as conn:
            assert "vt_extra" in {s.name for s in catalog.list_shards(conn)}
        unregister(wider, "vt_on_extra")
        result = veneer_env.upgrade(settings)
        assert "dropped foreign server vt_extra (no longer in the settings)" in result.changes
        with catalog.admin_connection(settings) as conn:
            assert "vt_extra" not in {s.name for s in catalog.list_shards(conn)}
            servers = conn.execute(text("SELECT srvname FROM pg_foreign_server")).scalars().all()
        assert "vt_extra" not in servers
    finally:
        with contextlib.suppress(PPPError):
            unregister(wider, "vt_on_extra")
        veneer_env.upgrade(settings)
        teardown_instance(extra, wider)


def test_reconcile_is_quiet_when_nothing_changed(settings: Settings) -> None:
    assert veneer_env.upgrade(settings).changes == []


# -- security -----------------------------------------------------------------------------------
DENIED = [
    "CREATE SERVER vt_evil FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1')",
    "CREATE SCHEMA vt_evil",
    "CREATE TABLE public.vt_evil (id int)",
    "CREATE TABLE bluth_co.vt_evil (id int)",
    "CREATE FOREIGN TABLE bluth_co.vt_evil (id int) SERVER bluth_co",
    "CREATE USER MAPPING FOR CURRENT_USER SERVER bluth_co OPTIONS (user 'bluth_co_admin')",
    "ALTER USER MAPPING FOR CURRENT_USER SERVER bluth_co OPTIONS (SET user 'bluth_co_admin')",
    "IMPORT FOREIGN SCHEMA bluth_co FROM SERVER bluth_co INTO bluth_co",
    "ALTER SERVER bluth_co OPTIONS (SET port '1')",
    "DROP FOREIGN TABLE bluth_co.authors",
    "ALTER FOREIGN TABLE bluth_co.authors OPTIONS (ADD table_name 'x')",
    "SELECT * FROM ppp.tenants",
    "UPDATE ppp.tenants SET shard = 'cyberdyne'",
    "DELETE FROM ppp.shards",
    "SELECT * FROM ppp.alembic_version",
    "DELETE FROM ppp.alembic_version",
]


@pytest.mark.parametrize("sql", DENIED)
def test_veneer_app_is_denied(settings: Settings, sql: str) -> None:
    conn = app_conn(settings)
    try:
        with conn.cursor() as cur, pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute(sql)
    finally:
        conn.close()


def test_veneer_app_cannot_read_user_mapping_passwords(settings: Settings) -> None:
    rows = app_rows(settings, "SELECT srvname, usename, umoptions FROM pg_user_mappings")
    assert {r[0] for r in rows} >= set(settings.shards)
    assert all(r[2] is None for r in rows), rows


def test_no_password_in_revision_files_or_the_veneer_log(topology: Any, settings: Settings) -> None:
    secrets = {
        p
        for inst in settings.instances
        for p in (inst.admin_password, inst.app_password, inst.superuser_password)
        if p
    }
    for path in (ROOT / "veneer_migrations").rglob("*.py"):
        body = path.read_text()
        assert not [s for s in secrets if s in body], path
    if topology.servers is None:
        pytest.skip("the veneer's log is only readable with the local backend")
    log = topology.servers.log_file("veneer").read_text(errors="replace")
    leaked = [s for s in secrets if s in log]
    assert not leaked, "a password is in the veneer's statement log"


def test_remote_estimates_are_a_setting_the_upgrade_keeps(
    topology: Any, settings: Settings
) -> None:
    def estimate() -> set[str]:
        with catalog.admin_connection(settings) as conn:
            rows = conn.execute(
                text("SELECT srvoptions FROM pg_foreign_server WHERE srvname = ANY(:s)"),
                {"s": list(settings.shards)},
            ).scalars()
            return {options(r).get("use_remote_estimate", "") for r in rows}

    assert estimate() == {"false"}
    on = load_settings(environ=topology.variant(PPP_FDW_REMOTE_ESTIMATE="true"))
    try:
        veneer_env.upgrade(on, "head")
        assert estimate() == {"true"}
    finally:
        veneer_env.upgrade(settings, "head")
    assert estimate() == {"false"}
    with pytest.raises(PPPError, match="PPP_FDW_REMOTE_ESTIMATE='maybe' is not valid"):
        load_settings(environ=topology.variant(PPP_FDW_REMOTE_ESTIMATE="maybe"))
