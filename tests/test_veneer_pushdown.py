"""What the veneer pushes down to a tenant's shard, read from EXPLAIN (VERBOSE), on default
settings: joins of a tenant's tables with WHERE, GROUP BY, aggregates, ORDER BY + LIMIT and
UPDATE ... FROM run as one remote query; window functions (and, before PostgreSQL 17,
EXISTS) do not.

The foreign tables have no local statistics (PPP never ANALYZEs them), so the plans depend
on the foreign servers' options only, not on the rows: a few thousand are enough.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from alembic import command

from ppp_env.db import connection
from ppp_env.errors import PPPError
from ppp_env.identifiers import quote_ident
from ppp_env.settings import Settings, load_settings
from ppp_env.veneer import catalog, pushdown, wiring
from ppp_env.veneer import tables as veneer
from tests.plugins.veneer import alembic_config, app_conn, shard_sql

pytestmark = pytest.mark.usefixtures("veneer_ready")
SHARD = "cyberdyne"

DATA = """
CREATE SCHEMA {s};
CREATE TABLE {s}.customers (id bigint PRIMARY KEY, name text NOT NULL, country text NOT NULL);
CREATE TABLE {s}.products (id integer PRIMARY KEY, name text NOT NULL, price numeric NOT NULL);
CREATE TABLE {s}.orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL
                         REFERENCES {s}.customers, status text NOT NULL, total numeric NOT NULL,
                         placed_at timestamptz NOT NULL);
CREATE TABLE {s}.order_items (order_id bigint NOT NULL REFERENCES {s}.orders,
                              line integer NOT NULL, product_id integer NOT NULL
                              REFERENCES {s}.products, quantity integer NOT NULL,
                              PRIMARY KEY (order_id, line));
INSERT INTO {s}.customers SELECT i, 'customer ' || i, (ARRAY['fr', 'de', 'us', 'jp'])[1 + i % 4]
    FROM generate_series(1, 1000) i;
INSERT INTO {s}.products SELECT i, 'product ' || i, 1 + i % 50 FROM generate_series(1, 100) i;
INSERT INTO {s}.orders SELECT i, 1 + (i * 7) % 1000, (ARRAY['open', 'paid'])[1 + i % 2],
    (i % 997) / 10.0, timestamptz '2024-01-01' + i * interval '1 hour'
    FROM generate_series(1, 3000) i;
INSERT INTO {s}.order_items SELECT 1 + i / 2, 1 + i % 2, 1 + (i * 31) % 100, 1 + i % 5
    FROM generate_series(0, 5999) i;
ANALYZE {s}.customers, {s}.products, {s}.orders, {s}.order_items;
"""

#: Shapes postgres_fdw ships whole on PPP's defaults, and what their Remote SQL must hold.
SHIPPED = {
    "join of 2 with WHERE": (
        "SELECT o.id, o.total, c.name FROM {t}.orders o JOIN {t}.customers c "
        "ON c.id = o.customer_id WHERE o.placed_at < '2024-01-05'",
        ["JOIN", "placed_at <"],
    ),
    "join of 3": (
        "SELECT o.id, p.name, i.quantity FROM {t}.orders o JOIN {t}.order_items i "
        "ON i.order_id = o.id JOIN {t}.products p ON p.id = i.product_id WHERE o.customer_id = 8",
        ["JOIN", "products"],
    ),
    "join with GROUP BY and aggregates": (
        "SELECT c.country, count(*), sum(o.total) FROM {t}.orders o JOIN {t}.customers c "
        "ON c.id = o.customer_id WHERE o.placed_at >= '2024-01-10' GROUP BY c.country",
        ["JOIN", "GROUP BY", "count(*)", "sum("],
    ),
    "join with GROUP BY of every row": (
        "SELECT c.country, count(*), sum(o.total) FROM {t}.orders o JOIN {t}.customers c "
        "ON c.id = o.customer_id GROUP BY c.country",
        ["JOIN", "GROUP BY"],
    ),
    "join, WHERE, GROUP BY, ORDER BY + LIMIT": (
        "SELECT c.id, c.name, sum(o.total) AS spent FROM {t}.orders o JOIN {t}.customers c "
        "ON c.id = o.customer_id WHERE o.status = 'paid' GROUP BY c.id, c.name "
        "ORDER BY spent DESC, c.id LIMIT 10",
        ["JOIN", "GROUP BY", "ORDER BY", "LIMIT"],
    ),
    "join with ORDER BY + LIMIT": (
        "SELECT o.id, o.placed_at, c.name FROM {t}.orders o JOIN {t}.customers c "
        "ON c.id = o.customer_id WHERE o.status = 'open' ORDER BY o.placed_at DESC LIMIT 20",
        ["JOIN", "ORDER BY", "LIMIT"],
    ),
    "join of 3 whole tables, GROUP BY, ORDER BY + LIMIT": (
        "SELECT p.name, sum(i.quantity * p.price) FROM {t}.orders o JOIN {t}.order_items i "
        "ON i.order_id = o.id JOIN {t}.products p ON p.id = i.product_id "
        "GROUP BY p.name ORDER BY 2 DESC, 1 LIMIT 10",
        ["JOIN", "GROUP BY", "ORDER BY", "LIMIT"],
    ),
    "left join with HAVING": (
        "SELECT c.id, count(o.id) FROM {t}.customers c LEFT JOIN {t}.orders o "
        "ON o.customer_id = c.id WHERE c.country = 'de' GROUP BY c.id HAVING count(o.id) > 2",
        ["LEFT JOIN", "GROUP BY", "HAVING"],
    ),
    "ORDER BY + LIMIT + OFFSET": (
        "SELECT id, total FROM {t}.orders WHERE status = 'paid' ORDER BY total DESC, id "
        "LIMIT 5 OFFSET 10",
        ["ORDER BY", "LIMIT", "OFFSET"],
    ),
    "aggregate of one table": (
        "SELECT status, count(*), max(total) FROM {t}.orders GROUP BY status",
        ["GROUP BY"],
    ),
    "point lookup": ("SELECT * FROM {t}.orders WHERE id = 42", ["id = 42"]),
}
#: Shapes postgres_fdw does not ship whole (the veneer fetches filtered rows and finishes).
NOT_SHIPPED = {
    "window function": (
        "SELECT id, rank() OVER (PARTITION BY customer_id ORDER BY total DESC) "
        "FROM {t}.orders WHERE customer_id BETWEEN 10 AND 20"
    ),
}
EXISTS = (
    "SELECT c.id FROM {t}.customers c WHERE c.country = 'fr' AND EXISTS "
    "(SELECT 1 FROM {t}.orders o WHERE o.customer_id = c.id AND o.total > 90)"
)


@pytest.fixture(scope="module")
def tenant(veneer_ready: Settings) -> Iterator[str]:
    """A shop tenant on one shard, wired; gone afterwards."""
    settings = veneer_ready
    name = f"pd_{uuid.uuid4().hex[:8]}"
    shard_sql(settings.shards[SHARD], DATA.format(s=quote_ident(name)))
    try:
        with catalog.admin_connection(settings) as conn:
            catalog.register_tenant(conn, name, SHARD)
        report = veneer.refresh(settings, [name])
        assert report.ok, report.errors
        yield name
    finally:
        with catalog.admin_connection(settings) as conn:
            veneer.unwire(conn, name)
            catalog.unregister_tenant(conn, name)
        shard_sql(settings.shards[SHARD], f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE")


def plan(settings: Settings, sql: str) -> pushdown.RemotePlan:
    """How the veneer plans ``sql``, as veneer_app."""
    conn = app_conn(settings)
    try:
        with conn.cursor() as cur:
            cur.execute(pushdown.explain(sql))
            return pushdown.read(cur.fetchone()[0])
    finally:
        conn.close()


def rows(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return sorted(
            tuple(round(v, 6) if isinstance(v, Decimal) else v for v in r) for r in cur.fetchall()
        )


@pytest.mark.parametrize("shape", list(SHIPPED))
def test_a_tenants_query_runs_as_one_remote_query(
    settings: Settings, tenant: str, shape: str
) -> None:
    template, holds = SHIPPED[shape]
    sql = template.format(t=quote_ident(tenant))
    got = plan(settings, sql)
    assert got.fully, got
    assert got.top == "Foreign Scan"
    (remote,) = got.remote_sql
    for part in holds:
        assert part in remote, remote
    # The same rows as on the shard.
    veneer_side = app_conn(settings)
    try:
        with connection(settings.shards[SHARD], "app", autocommit=True) as direct:
            assert rows(veneer_side, sql) == rows(direct, sql)
    finally:
        veneer_side.close()


def test_an_update_or_delete_with_a_join_runs_on_the_shard(settings: Settings, tenant: str) -> None:
    t = quote_ident(tenant)
    got = plan(
        settings,
        f"UPDATE {t}.orders o SET status = 'paid' FROM {t}.customers c "
        "WHERE c.id = o.customer_id AND c.id BETWEEN 5 AND 9 AND o.status = 'open'",
    )
    assert got.fully and got.top == "ModifyTable", got
    assert got.remote_sql[0].startswith(f"UPDATE {tenant}.orders"), got.remote_sql
    got = plan(
        settings,
        f"DELETE FROM {t}.order_items i USING {t}.orders o "
        "WHERE o.id = i.order_id AND o.customer_id = 3",
    )
    assert got.fully and got.remote_sql[0].startswith(f"DELETE FROM {tenant}.order_items")
    # An UPDATE whose condition cannot run remotely fetches rows and updates them one by one:
    # not pushed down (what pushdown.read tells apart).
    got = plan(settings, f"UPDATE {t}.orders SET status = 'x' WHERE id = (random() * 9)::int")
    assert not got.fully and got.top == "ModifyTable", got


def test_what_postgres_fdw_does_not_ship(settings: Settings, tenant: str) -> None:
    t = quote_ident(tenant)
    for shape, template in NOT_SHIPPED.items():
        got = plan(settings, template.format(t=t))
        assert not got.fully, shape
        # Still one remote query, with the WHERE: only the tenant's matching rows travel.
        assert len(got.remote_sql) == 1 and "customer_id >=" in got.remote_sql[0], got
    # EXISTS is a semi-join: postgres_fdw ships it from PostgreSQL 17 on.
    conn = app_conn(settings)
    try:
        version = conn.server_version
    finally:
        conn.close()
    assert plan(settings, EXISTS.format(t=t)).fully == (version >= 170000)


def costs(settings: Settings) -> set[tuple[str, str]]:
    with catalog.admin_connection(settings) as conn:
        raw = conn.exec_driver_sql(
            "SELECT srvoptions FROM pg_foreign_server WHERE srvname = ANY(%s)",
            (list(settings.shards),),
        ).scalars()
        return {
            (o.get("fdw_startup_cost", ""), o.get("fdw_tuple_cost", ""))
            for o in (dict(item.split("=", 1) for item in r) for r in raw)
        }


def test_the_veneer_upgrade_sets_the_costs_on_servers_made_before(
    settings: Settings, tenant: str
) -> None:
    """A veneer wired before the cost options gets them from `alembic -n veneer upgrade
    head`; without them the grouped join runs in the veneer on every fetched row."""
    sql = SHIPPED["join with GROUP BY and aggregates"][0].format(t=quote_ident(tenant))
    assert costs(settings) == {("50000", "10")}
    try:
        with catalog.admin_connection(settings) as conn:
            for shard in settings.shards:
                conn.exec_driver_sql(
                    f"ALTER SERVER {quote_ident(shard)} "
                    "OPTIONS (DROP fdw_startup_cost, DROP fdw_tuple_cost)"
                )
        before = plan(settings, sql)
        assert not before.fully and len(before.remote_sql) == 2, before
        command.upgrade(alembic_config(settings), "head")
        assert costs(settings) == {("50000", "10")}
        assert plan(settings, sql).fully
    finally:
        with catalog.admin_connection(settings) as conn:
            wiring.reconcile(conn, settings, remove=False)


def test_the_costs_are_settings(topology: Any, settings: Settings) -> None:
    tuned = load_settings(
        environ=topology.variant(PPP_FDW_STARTUP_COST="2500", PPP_FDW_TUPLE_COST="0.05")
    )
    assert (tuned.fdw_startup_cost, tuned.fdw_tuple_cost) == (2500.0, 0.05)
    try:
        with catalog.admin_connection(tuned) as conn:
            changes = wiring.reconcile(conn, tuned, remove=False)
        assert any("fdw_startup_cost=2500, fdw_tuple_cost=0.05" in c for c in changes), changes
        assert costs(settings) == {("2500", "0.05")}
    finally:
        with catalog.admin_connection(settings) as conn:
            wiring.reconcile(conn, settings, remove=False)
    assert costs(settings) == {("50000", "10")}


@pytest.mark.parametrize(
    ("var", "value"),
    [("PPP_FDW_STARTUP_COST", "-1"), ("PPP_FDW_TUPLE_COST", "cheap")],
)
def test_a_bad_cost_is_a_clear_error(
    topology: Any, settings: Settings, var: str, value: str
) -> None:
    with pytest.raises(PPPError) as err:
        load_settings(environ=topology.variant(**{var: value}))
    option = var.removeprefix("PPP_").lower()
    assert str(err.value) == (
        f"{var}={value!r} is not valid: expected a planner cost of 0 or more ({option})"
    )
    assert costs(settings) == {("50000", "10")}  # nothing changed


def test_joins_the_shard_cannot_do_are_hash_joins(settings: Settings, tenant: str) -> None:
    """The veneer database has enable_nestloop and jit off: without statistics a nested loop
    over a guessed row count is quadratic when the guess is wrong (an EXISTS of 6,250 x 720
    rows compared 4.5 million pairs)."""
    conn = app_conn(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('enable_nestloop'), current_setting('jit')")
            assert cur.fetchone() == ("off", "off")
            cur.execute("SELECT current_setting('server_version_num')::int")
            if cur.fetchone()[0] < 170000:  # from 17 on the shard runs the EXISTS
                cur.execute(f"EXPLAIN {EXISTS.format(t=quote_ident(tenant))}")
                text = "\n".join(r[0] for r in cur.fetchall())
                assert "Nested Loop" not in text and "Hash" in text, text
    finally:
        conn.close()
    # PPP's own sessions (refresh, migrations) keep PostgreSQL's planner defaults.
    with catalog.admin_connection(settings) as admin:
        got = admin.exec_driver_sql(
            "SELECT current_setting('enable_nestloop'), current_setting('jit')"
        ).one()
        assert tuple(got) == ("on", "on")


def test_the_veneer_upgrade_restores_the_database_settings(settings: Settings) -> None:
    db = quote_ident(settings.veneer.dbname)
    with catalog.admin_connection(settings) as conn:
        conn.exec_driver_sql(f"ALTER DATABASE {db} RESET enable_nestloop")
        conn.exec_driver_sql(f"ALTER DATABASE {db} SET jit = on")
    with catalog.admin_connection(settings) as conn:
        changes = wiring.reconcile(conn, settings, remove=False)
    assert [c for c in changes if "veneer database" in c] == [
        "set enable_nestloop = off for new sessions of the veneer database",
        "set jit = off for new sessions of the veneer database",
    ]
    with catalog.admin_connection(settings) as conn:
        assert wiring.reconcile(conn, settings, remove=False) == []
