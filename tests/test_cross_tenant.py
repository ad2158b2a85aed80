"""Cross-tenant views (``ppp_all.<table>``): opt-in, rebuilt by every refresh and unwire, one
branch per live tenant of the catalog, run on every shard at once."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2.errors
import pytest

from ppp_env.errors import PPPError
from ppp_env.identifiers import quote_ident
from ppp_env.settings import Settings
from ppp_env.veneer import catalog, views, wiring
from ppp_env.veneer import tables as veneer
from tests.plugins.veneer import app_conn, shard_sql

pytestmark = pytest.mark.usefixtures("veneer_ready")
SHARDS = ("bluth_co", "cyberdyne", "initech")


def app(settings: Settings, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    conn = app_conn(settings)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


class Fleet:
    """Tenants with one table ``orders_<hex>`` each, on the three shards."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        tag = uuid.uuid4().hex[:8]
        self.table = f"orders_{tag}"
        self.placed: dict[str, str] = {}
        self.tag = tag

    def add(self, shard: str, columns: str = "id integer PRIMARY KEY, total numeric") -> str:
        name = f"ct_{self.tag}_{len(self.placed)}"
        self.placed[name] = shard
        t = f"{quote_ident(name)}.{quote_ident(self.table)}"
        shard_sql(
            self.settings.shards[shard],
            f"CREATE SCHEMA {quote_ident(name)}; CREATE TABLE {t} ({columns});"
            f"INSERT INTO {t} (id) VALUES (1), (2)",
        )
        with catalog.admin_connection(self.settings) as conn:
            catalog.register_tenant(conn, name, shard)
        return name

    def refresh(self) -> veneer.RefreshReport:
        report = veneer.refresh(self.settings, list(self.placed))
        assert report.ok, report.errors
        return report

    def cleanup(self) -> None:
        with catalog.admin_connection(self.settings) as conn:
            views.remove_table(conn, self.settings, self.table)
            for name in self.placed:
                veneer.unwire(conn, name)
                catalog.unregister_tenant(conn, name)
        for name, shard in self.placed.items():
            shard_sql(
                self.settings.shards[shard], f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE"
            )


@contextlib.contextmanager
def fleet(settings: Settings) -> Iterator[Fleet]:
    f = Fleet(settings)
    try:
        yield f
    finally:
        f.cleanup()


def opt_in(settings: Settings, table: str) -> views.ViewReport:
    with catalog.admin_connection(settings) as conn:
        return views.add_table(conn, settings, table)


def test_a_view_over_every_live_tenant_on_every_shard(settings: Settings) -> None:
    with fleet(settings) as f:
        a, b, c = (f.add(s) for s in SHARDS)
        odd = f.add("initech", "id integer PRIMARY KEY, total text")
        f.refresh()
        report = opt_in(settings, f.table)
        assert report.built == {f.table: [a, b, c]}
        assert list(report.left_out[f.table]) == [odd]
        assert "total is text, not numeric" in report.left_out[f.table][odd]
        rows = app(settings, f"SELECT tenant, id FROM ppp_all.{f.table} ORDER BY 1, 2")
        assert rows == [(t, i) for t in (a, b, c) for i in (1, 2)]

        # The branches run on the shards at once.
        plan = "\n".join(
            r[0] for r in app(settings, f"EXPLAIN (VERBOSE) SELECT * FROM ppp_all.{f.table}")
        )
        assert plan.count("Async Foreign Scan") == 3, plan
        assert "Append" in plan

        # Only live tenants: a pending or removed tenant is not in the view; a moving one is,
        # once (its veneer schema is wired to one shard, the catalog's).
        with catalog.admin_connection(settings) as conn:
            catalog.set_state(conn, b, "moving")
            catalog.set_state(conn, c, "removed")
            views.rebuild(conn)
        rows = app(
            settings, f"SELECT tenant, count(*) FROM ppp_all.{f.table} GROUP BY 1 ORDER BY 1"
        )
        assert rows == [(a, 2), (b, 2)]


def test_refresh_and_unwire_keep_the_view_right(settings: Settings) -> None:
    with fleet(settings) as f:
        a = f.add("bluth_co")
        f.refresh()
        assert opt_in(settings, f.table).built == {f.table: [a]}
        b = f.add("cyberdyne")
        report = f.refresh()
        assert report.cross_tenant.built == {f.table: [a, b]}
        assert report.cross_tenant.changed == [f.table]
        # A refresh with nothing new leaves the view as it is.
        assert f.refresh().cross_tenant.changed == []

        # A column added on every shard: the foreign tables are replaced (the view does not
        # block it) and the view shows the new column.
        for name, shard in f.placed.items():
            shard_sql(
                settings.shards[shard],
                f"ALTER TABLE {name}.{f.table} ADD COLUMN note text DEFAULT 'n'",
            )
        report = f.refresh()
        assert report.tables_created == 2 and report.views_error is None
        assert app(settings, f"SELECT DISTINCT note FROM ppp_all.{f.table}") == [("n",)]

        # Unwiring a tenant takes it out of the view; the view stays.
        with catalog.admin_connection(settings) as conn:
            veneer.unwire(conn, a)
        assert app(settings, f"SELECT DISTINCT tenant FROM ppp_all.{f.table}") == [(b,)]
        with catalog.admin_connection(settings) as conn:
            veneer.unwire(conn, b)
        with pytest.raises(psycopg2.errors.UndefinedTable):
            app(settings, f"SELECT * FROM ppp_all.{f.table}")


def test_remove_and_bad_names(settings: Settings) -> None:
    with fleet(settings) as f:
        f.add("initech")
        f.refresh()
        opt_in(settings, f.table)
        with catalog.admin_connection(settings) as conn:
            before = views.list_tables(conn)
        for bad in ("Orders", "x; DROP TABLE y", "", "pg_x"):
            with pytest.raises(PPPError, match="invalid table name"):
                opt_in(settings, bad)
        with catalog.admin_connection(settings) as conn:
            assert views.list_tables(conn) == before
            assert views.remove_table(conn, settings, f.table)
            assert not views.remove_table(conn, settings, f.table)
            assert f.table not in views.list_tables(conn)
        with pytest.raises(psycopg2.errors.UndefinedTable):
            app(settings, f"SELECT * FROM ppp_all.{f.table}")


def test_a_tenant_column_leaves_the_table_out(settings: Settings) -> None:
    with fleet(settings) as f:
        a = f.add("cyberdyne", "id integer, tenant text")
        f.refresh()
        report = opt_in(settings, f.table)
        assert report.built == {}
        assert "column named 'tenant'" in report.left_out[f.table][a]


def test_the_opt_in_list_is_closed_to_the_app_role(settings: Settings) -> None:
    with fleet(settings) as f:
        f.add("cyberdyne")
        f.refresh()
        opt_in(settings, f.table)
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            app(settings, f"SELECT * FROM {views.TABLES}")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            app(settings, f"DROP VIEW ppp_all.{f.table}")


def server_options(settings: Settings, shard: str) -> dict[str, str]:
    with catalog.admin_connection(settings) as conn:
        raw = conn.exec_driver_sql(
            "SELECT srvoptions FROM pg_foreign_server WHERE srvname = %s", (shard,)
        ).scalar()
    return dict(item.split("=", 1) for item in raw or [])


def test_server_options_changed_by_hand_are_restored_by_the_veneer_upgrade(
    settings: Settings,
) -> None:
    from alembic import command

    from tests.plugins.veneer import alembic_config

    want = wiring.server_options(settings.shards["initech"])
    assert want["async_capable"] == "true" and want["fetch_size"] == str(wiring.FETCH_SIZE)
    assert server_options(settings, "initech") == want
    try:
        with catalog.admin_connection(settings) as conn:
            conn.exec_driver_sql(
                "ALTER SERVER initech OPTIONS (SET fetch_size '50', DROP async_capable)"
            )
        assert server_options(settings, "initech") != want
        command.upgrade(alembic_config(settings), "head")  # `alembic -n veneer upgrade head`
        assert server_options(settings, "initech") == want
    finally:
        with catalog.admin_connection(settings) as conn:
            wiring.reconcile(conn, settings, remove=False)
    # And queries on the cross-tenant views run on the shards at once again.
    with fleet(settings) as f:
        for shard in SHARDS:
            f.add(shard)
        f.refresh()
        opt_in(settings, f.table)
        plan = app(settings, f"EXPLAIN (VERBOSE) SELECT count(*) FROM ppp_all.{f.table}")
        assert sum("Async Foreign Scan" in r[0] for r in plan) == 3


def test_create_move_and_remove_keep_the_view_right(settings: Settings) -> None:
    """The lifecycle's own calls (refresh_in when creating and moving, unwire when removing)
    keep the view right: a created tenant is in it, a moved one counted once, from its new
    shard, a removed one gone."""
    from ppp_env import lifecycle
    from ppp_env.lifecycle import move as mv
    from tests.plugins.veneer import ROOT

    schema = f"ct_lc_{uuid.uuid4().hex[:8]}"
    with catalog.admin_connection(settings) as conn:
        listed_before = "authors" in views.list_tables(conn)
    try:
        opt_in(settings, "authors")
        lifecycle.create_tenant(settings, schema, "cyberdyne", ROOT / "alembic.ini")
        app(settings, f"INSERT INTO {schema}.authors (first_name, last_name) VALUES ('A', 'B')")
        count = f"SELECT count(*) FROM ppp_all.authors WHERE tenant = '{schema}'"
        rows = app(settings, f"SELECT count(*) FROM {schema}.authors")
        assert rows[0][0] >= 1 and app(settings, count) == rows

        mv.move_tenant(settings, schema, "initech", mode="block")
        assert app(settings, count) == rows
        plan = "\n".join(
            r[0] for r in app(settings, "EXPLAIN (VERBOSE) SELECT * FROM ppp_all.authors")
        )
        assert f"Remote SQL: SELECT id, first_name, last_name FROM {schema}.authors" in plan

        lifecycle.remove_tenant(settings, schema, drop_data=True)
        assert app(settings, count) == [(0,)]
    finally:
        with catalog.admin_connection(settings) as conn:
            if not listed_before:
                views.remove_table(conn, settings, "authors")
            shard = conn.exec_driver_sql(
                "SELECT shard FROM ppp.tenants WHERE schema = %s", (schema,)
            ).scalar()
            veneer.unwire(conn, schema)
            catalog.unregister_tenant(conn, schema)
        for s in [shard] if shard else SHARDS:
            shard_sql(settings.shards[s], f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")


def test_cross_tenant_commands(settings: Settings) -> None:
    from click.testing import CliRunner

    from ppp_env.cli.main import cli

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, ["veneer", "cross-tenant", *args])

    with fleet(settings) as f:
        f.add("initech")
        f.add("cyberdyne")
        f.refresh()
        added = run("add", f.table)
        assert added.exit_code == 0, added.output
        assert f"ppp_all.{f.table}: 2 tenants" in added.output
        assert f"ppp_all.{f.table}" in run("list").output
        assert app(settings, f"SELECT count(DISTINCT tenant) FROM ppp_all.{f.table}") == [(2,)]
        bad = run("add", "Bad Name")
        assert bad.exit_code == 1 and "invalid table name" in bad.output
        assert run("remove", f.table).exit_code == 0
        again = run("remove", f.table)
        assert again.exit_code == 1
        assert f"Error: '{f.table}' has no cross-tenant view" in again.output
        assert f"ppp_all.{f.table}" not in run("list").output
