"""The veneer refresh at real size, on real servers with default lock settings.

Bounded locks per transaction, the tenant's own types (enums, domains, composite types),
incremental refresh (only what changed on the shard is re-created), per-tenant failures that
leave the tenant's old foreign tables answering, and definitions identical to postgres_fdw's
IMPORT FOREIGN SCHEMA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from sqlalchemy import text

from ppp_env.db import connect
from ppp_env.errors import PPPError
from ppp_env.identifiers import quote_ident
from ppp_env.servers.local import free_port
from ppp_env.settings import Settings
from ppp_env.veneer import catalog
from ppp_env.veneer import tables as veneer
from tests.plugins.veneer import app_conn, shard_sql

pytestmark = pytest.mark.usefixtures("veneer_ready")
SHARDS = ("bluth_co", "cyberdyne", "initech")


# -- helpers ------------------------------------------------------------------------------------
def app_rows(settings: Settings, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    conn = app_conn(settings)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def admin_rows(settings: Settings, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with catalog.admin_connection(settings) as conn:
        return [tuple(r) for r in conn.exec_driver_sql(sql, params or ()).all()]


def foreign_tables(settings: Settings, schema: str) -> dict[str, int]:
    """Foreign table -> oid in the tenant's veneer schema."""
    rows = admin_rows(
        settings,
        "SELECT c.relname, c.oid::bigint FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'f'",
        (schema,),
    )
    return dict(rows)  # type: ignore[arg-type]


def columns(settings: Settings, schema: str, table: str) -> list[str]:
    return [
        r[0]
        for r in admin_rows(
            settings,
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
            "AND table_name = %s ORDER BY ordinal_position",
            (schema, table),
        )
    ]


def staging_left(settings: Settings) -> list[tuple[Any, ...]]:
    return admin_rows(settings, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'ppp-%%'")


@contextlib.contextmanager
def fleet(settings: Settings, placed: dict[str, str], sql: str = "") -> Iterator[list[str]]:
    """Tenants (name -> shard) with ``sql`` run in each schema on its shard (``{s}`` is the
    quoted schema), registered in the catalog; unregistered and dropped afterwards."""
    by_shard: dict[str, list[str]] = {}
    for name, shard in placed.items():
        by_shard.setdefault(shard, []).append(name)

    def drop() -> None:
        for shard, names in by_shard.items():
            shard_sql(
                settings.shards[shard],
                "".join(f"DROP SCHEMA IF EXISTS {quote_ident(n)} CASCADE;" for n in names),
            )

    try:
        drop()
        for shard, names in by_shard.items():
            shard_sql(
                settings.shards[shard],
                "".join(
                    f"CREATE SCHEMA {quote_ident(n)};" + sql.format(s=quote_ident(n)) for n in names
                ),
            )
        with catalog.admin_connection(settings) as conn:
            for name, shard in placed.items():
                catalog.register_tenant(conn, name, shard)
        yield list(placed)
    finally:
        with catalog.admin_connection(settings) as conn:
            for name in placed:
                catalog.unregister_tenant(conn, name)
        drop()


class LockSampler:
    """Samples, from another session, the most locks any PPP session held in the veneer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        conn = connect(self.settings.veneer, "admin", autocommit=True, application_name="sampler")
        try:
            with conn.cursor() as cur:
                while not self._stop.is_set():
                    cur.execute(
                        "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM pg_locks l "
                        "JOIN pg_stat_activity a ON a.pid = l.pid "
                        "WHERE a.application_name = 'ppp' GROUP BY l.pid) x"
                    )
                    self.peak = max(self.peak, cur.fetchone()[0])
        finally:
            conn.close()

    def __enter__(self) -> LockSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


# -- (i) real size on default lock settings ------------------------------------------------------
WIDE = """
DO $$
BEGIN
    FOR i IN 1..60 LOOP
        EXECUTE format('CREATE TABLE %%s.t%%s (id bigint PRIMARY KEY, name text NOT NULL, '
                       'created_at timestamptz NOT NULL DEFAULT now())', '{s}', i);
    END LOOP;
END
$$;
"""
CHANGE_ALL = """
DO $$
BEGIN
    FOR i IN 1..60 LOOP
        EXECUTE format('ALTER TABLE %%s.t%%s ADD COLUMN extra integer', '{s}', i);
    END LOOP;
END
$$;
"""


def test_thirty_tenants_of_sixty_tables_with_bounded_locks(veneer_ready: Settings) -> None:
    settings = veneer_ready
    placed = {f"vr_wide_{i:02d}": SHARDS[i % 3] for i in range(30)}
    assert admin_rows(settings, "SHOW max_locks_per_transaction") == [("64",)]
    with fleet(settings, placed, WIDE.replace("%%", "%")) as names:
        with LockSampler(settings) as sampler:
            report = veneer.refresh(settings, names)
        assert report.ok, report.errors
        assert report.refreshed == sorted(names, key=lambda n: (placed[n], n))
        assert report.tables_created == 30 * 60 and report.tables_dropped == 0
        # One transaction for everything would hold about 1,800 x 1 + 30 x 4 locks; the
        # old staging swap about 7,000. Batches stay near the budget.
        assert 0 < sampler.peak <= veneer.LOCK_BUDGET + 100, sampler.peak
        assert len(foreign_tables(settings, names[0])) == 60
        for name, shard in placed.items():
            shard_sql(settings.shards[shard], CHANGE_ALL.replace("%%", "%").format(s=name))
        with LockSampler(settings) as sampler:
            report = veneer.refresh(settings, names)
        assert report.ok, report.errors
        assert report.tables_created == 30 * 60 and report.tables_dropped == 30 * 60
        assert 0 < sampler.peak <= veneer.LOCK_BUDGET + 100, sampler.peak
        assert "extra" in columns(settings, names[-1], "t60")
        assert app_rows(settings, f"SELECT count(*) FROM {names[7]}.t33") == [(0,)]
        assert staging_left(settings) == []


# -- (ii) the tenant's own types ----------------------------------------------------------------
TYPED = """
CREATE TYPE {s}.mood AS ENUM ('ok', 'sad');
CREATE DOMAIN {s}.posint AS integer NOT NULL CHECK (VALUE > 0);
CREATE DOMAIN {s}.feeling AS {s}.mood;
CREATE TYPE {s}.pair AS (left_side {s}.mood, weight numeric(5, 2));
CREATE TABLE {s}.diary (
    id serial PRIMARY KEY,
    m {s}.mood NOT NULL DEFAULT 'ok',
    f {s}.feeling,
    n {s}.posint,
    p {s}.pair,
    history {s}.mood[]
);
"""


def test_enums_domains_and_composite_types_are_created(veneer_ready: Settings) -> None:
    settings = veneer_ready
    with fleet(settings, {"vr_typed": "cyberdyne"}, TYPED) as (name,):
        shard = settings.shards["cyberdyne"]
        report = veneer.refresh(settings, [name])
        assert report.ok, report.errors
        assert report.types_changed == 4 and report.tables_created == 1
        app_rows(
            settings,
            f"INSERT INTO {name}.diary (id, f, n, p, history) "
            "VALUES (1, 'sad', 7, ROW('sad', 1.5), ARRAY['ok', 'sad']::vr_typed.mood[])",
        )
        assert app_rows(settings, f"SELECT m, f, n, (p).left_side, history FROM {name}.diary") == [
            ("ok", "sad", 7, "sad", "{ok,sad}")
        ]
        assert shard_sql(shard, f"SELECT m, n FROM {name}.diary") == [("ok", 7)]
        assert app_rows(settings, f"SELECT id FROM {name}.diary WHERE m = 'ok'") == [(1,)]
        # A domain's check answers in the veneer too, before any remote round trip.
        with pytest.raises(psycopg2.errors.CheckViolation):
            app_rows(settings, f"INSERT INTO {name}.diary (id, n) VALUES (2, -1)")
        before = foreign_tables(settings, name)

        # A new label: the enum gains it in place, the foreign table stays.
        shard_sql(shard, f"ALTER TYPE {name}.mood ADD VALUE 'meh' AFTER 'ok'")
        shard_sql(shard, f"ALTER TYPE {name}.mood ADD VALUE 'glad' BEFORE 'ok'")
        report = veneer.refresh(settings, [name])
        assert report.ok and report.types_changed == 1 and report.tables_created == 0, report
        assert foreign_tables(settings, name) == before
        labels = "SELECT enum_range(NULL::vr_typed.mood)::text"
        assert admin_rows(settings, labels) == [("{glad,ok,meh,sad}",)]
        assert shard_sql(shard, labels) == [("{glad,ok,meh,sad}",)]
        app_rows(settings, f"INSERT INTO {name}.diary (id, m, n) VALUES (3, 'meh', 1)")
        assert shard_sql(shard, f"SELECT m FROM {name}.diary WHERE id = 3") == [("meh",)]

        # A changed domain: the tenant's types and foreign tables are created again.
        shard_sql(
            shard,
            f"ALTER DOMAIN {name}.posint DROP CONSTRAINT posint_check;"
            f"ALTER DOMAIN {name}.posint ADD CONSTRAINT posint_small CHECK (VALUE < 100)",
        )
        report = veneer.refresh(settings, [name])
        assert report.ok and report.tables_created == 1, report
        app_rows(settings, f"INSERT INTO {name}.diary (id, n) VALUES (4, -5)")
        assert shard_sql(shard, f"SELECT n FROM {name}.diary WHERE id = 4") == [(-5,)]
        assert veneer.refresh(settings, [name]).unchanged == [name]


# -- (iii) and (iv): the cost follows the change ------------------------------------------------
FIVE = "".join(
    f"CREATE TABLE {{s}}.t{i} (id bigint PRIMARY KEY, v text);"
    f"INSERT INTO {{s}}.t{i} VALUES (1, 'one');"
    for i in range(5)
) + (
    "CREATE TABLE {s}.alembic_version (version_num varchar(32) PRIMARY KEY);"
    "INSERT INTO {s}.alembic_version VALUES ('r1');"
)


def test_a_one_table_change_recreates_that_table_only(veneer_ready: Settings) -> None:
    settings = veneer_ready
    placed = {"vr_inc_a": "bluth_co", "vr_inc_b": "initech"}
    with fleet(settings, placed, FIVE) as names:
        assert veneer.refresh(settings, names).tables_created == 10
        before = {n: foreign_tables(settings, n) for n in names}
        for name, shard in placed.items():
            shard_sql(settings.shards[shard], f"ALTER TABLE {name}.t3 ADD COLUMN note text")
        report = veneer.refresh(settings, names)
        assert report.ok and report.refreshed == names, report
        assert (report.tables_created, report.tables_dropped) == (2, 2)
        for name in names:
            after = foreign_tables(settings, name)
            assert after.keys() == before[name].keys()
            assert {t for t in after if after[t] != before[name][t]} == {"t3"}
            assert columns(settings, name, "t3") == ["id", "v", "note"]
        assert app_rows(settings, "SELECT note FROM vr_inc_b.t3") == [(None,)]


def test_a_data_only_change_costs_no_ddl(veneer_ready: Settings) -> None:
    settings = veneer_ready
    with fleet(settings, {"vr_data": "cyberdyne"}, FIVE) as (name,):
        shard = settings.shards["cyberdyne"]
        veneer.refresh(settings, [name])
        rows = (
            "SELECT c.relname, c.xmin::text FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s "
            "UNION ALL SELECT nspname, xmin::text FROM pg_namespace WHERE nspname = %s ORDER BY 1"
        )
        before = admin_rows(settings, rows, (name, name))
        # A data migration and an index: a new revision, no new definition.
        shard_sql(
            shard,
            f"INSERT INTO {name}.t1 VALUES (2, 'two'); CREATE INDEX ON {name}.t2 (v);"
            f"UPDATE {name}.alembic_version SET version_num = 'r2'",
        )
        report = veneer.refresh(settings, [name])
        assert report.unchanged == [name] and report.revisions == {name: "r2"}, report
        assert (report.tables_created, report.tables_dropped, report.types_changed) == (0, 0, 0)
        assert admin_rows(settings, rows, (name, name)) == before
        (tenant,) = catalog.list_tenants(settings, tenants=[name])
        assert tenant.wired_revision == "r2"
        assert app_rows(settings, f"SELECT count(*) FROM {name}.t1") == [(2,)]


def test_a_table_dropped_on_the_shard_leaves_the_veneer(veneer_ready: Settings) -> None:
    settings = veneer_ready
    with fleet(settings, {"vr_drop": "initech"}, FIVE) as (name,):
        veneer.refresh(settings, [name])
        shard_sql(settings.shards["initech"], f"DROP TABLE {name}.t4")
        report = veneer.refresh(settings, [name])
        assert report.ok and (report.tables_created, report.tables_dropped) == (0, 1), report
        assert sorted(foreign_tables(settings, name)) == ["t0", "t1", "t2", "t3"]
        wired = admin_rows(
            settings, f"SELECT name FROM {veneer.WIRED} WHERE schema = %s ORDER BY 1", (name,)
        )
        assert wired == [("t0",), ("t1",), ("t2",), ("t3",)]
        assert veneer.refresh(settings, [name]).unchanged == [name]


def test_a_foreign_table_dropped_by_hand_is_wired_again(veneer_ready: Settings) -> None:
    settings = veneer_ready
    with fleet(settings, {"vr_hand": "bluth_co"}, FIVE) as (name,):
        veneer.refresh(settings, [name])
        with catalog.admin_connection(settings) as conn:
            conn.exec_driver_sql(f"DROP FOREIGN TABLE {name}.t0")
        report = veneer.refresh(settings, [name])
        assert report.tables_created == 1 and "t0" in foreign_tables(settings, name)
        full = veneer.refresh(settings, [name], full=True)
        assert (full.tables_created, full.tables_dropped) == (5, 5)


# -- (v) failures are per tenant ------------------------------------------------------------------
def test_a_type_the_veneer_cannot_create_fails_that_tenant_only(veneer_ready: Settings) -> None:
    settings = veneer_ready
    placed = {"vr_fail_range": "bluth_co", "vr_fail_ok": "cyberdyne"}
    with fleet(settings, placed, FIVE) as names:
        assert veneer.refresh(settings, names).ok
        for name, shard in placed.items():
            shard_sql(settings.shards[shard], f"ALTER TABLE {name}.t0 ADD COLUMN extra int")
        shard_sql(
            settings.shards["bluth_co"],
            "CREATE TYPE vr_fail_range.span AS RANGE (subtype = float8);"
            "CREATE TABLE vr_fail_range.spans (id int PRIMARY KEY, s vr_fail_range.span)",
        )
        report = veneer.refresh(settings, names)
        assert report.refreshed == ["vr_fail_ok"]
        message = report.errors["vr_fail_range"]
        assert message.startswith('cannot create its foreign tables: type "vr_fail_range.span"')
        assert "vr_fail_range.span is a range type" in message and "\n" not in message
        assert staging_left(settings) == []
        # Its old foreign tables still answer, unchanged; the other tenant got its column.
        assert columns(settings, "vr_fail_range", "t0") == ["id", "v"]
        assert app_rows(settings, "SELECT v FROM vr_fail_range.t0") == [("one",)]
        assert columns(settings, "vr_fail_ok", "t0") == ["id", "v", "extra"]
        shard_sql(settings.shards["bluth_co"], "DROP TABLE vr_fail_range.spans")
        report = veneer.refresh(settings, names)
        assert report.ok and columns(settings, "vr_fail_range", "t0") == ["id", "v", "extra"]


def test_a_veneer_object_blocking_the_swap_fails_that_tenant_only(
    veneer_ready: Settings,
) -> None:
    settings = veneer_ready
    placed = {"vr_block": "initech", "vr_block_ok": "initech"}
    with fleet(settings, placed, FIVE) as names:
        veneer.refresh(settings, names)
        with catalog.admin_connection(settings) as conn:
            conn.exec_driver_sql("CREATE VIEW vr_block.mine AS SELECT * FROM vr_block.t1")
        for name in names:
            shard_sql(settings.shards["initech"], f"ALTER TABLE {name}.t1 ADD COLUMN w int")
        report = veneer.refresh(settings, names)
        assert report.refreshed == ["vr_block_ok"]
        assert (
            "depend" in report.errors["vr_block"]
            and "must hold nothing but" in (report.errors["vr_block"])
        )
        assert app_rows(settings, "SELECT v FROM vr_block.mine") == [("one",)]
        assert staging_left(settings) == []


def test_a_lock_held_by_a_reader_fails_that_tenant_only(veneer_ready: Settings) -> None:
    settings = dataclasses.replace(veneer_ready, lock_timeout=0.3)
    placed = {"vr_held": "cyberdyne", "vr_held_ok": "cyberdyne"}
    with fleet(settings, placed, FIVE) as names:
        veneer.refresh(settings, names)
        for name in names:
            shard_sql(settings.shards["cyberdyne"], f"ALTER TABLE {name}.t2 ADD COLUMN w int")
        reader = app_conn(settings, autocommit=False)
        try:
            with reader.cursor() as cur:
                cur.execute("SELECT count(*) FROM vr_held.t2")  # holds its lock until rollback
                report = veneer.refresh(settings, names)
            assert report.refreshed == ["vr_held_ok"]
            assert "lock timeout" in report.errors["vr_held"], report.errors
        finally:
            reader.rollback()
            reader.close()
        assert columns(settings, "vr_held", "t2") == ["id", "v"]
        assert veneer.refresh(settings, names).ok
        assert columns(settings, "vr_held", "t2") == ["id", "v", "w"]


def test_an_unreachable_veneer_is_an_error(veneer_ready: Settings) -> None:
    gone = dataclasses.replace(
        veneer_ready, veneer=dataclasses.replace(veneer_ready.veneer, port=free_port())
    )
    with pytest.raises(PPPError, match="cannot connect to the veneer"):
        veneer.refresh(gone)


def test_refresh_in_fails_a_tenant_without_aborting_the_callers_transaction(
    veneer_ready: Settings,
) -> None:
    settings = veneer_ready
    placed = {"vr_in_bad": "bluth_co", "vr_in_ok": "bluth_co"}
    sql = FIVE + "CREATE TYPE {s}.span AS RANGE (subtype = float8);"
    with fleet(settings, placed, sql) as names:
        shard_sql(
            settings.shards["bluth_co"],
            "CREATE TABLE vr_in_bad.spans (s vr_in_bad.span)",
        )
        with catalog.admin_connection(settings) as conn:
            report = veneer.refresh_in(conn, settings, names)
            assert report.refreshed == ["vr_in_ok"] and "vr_in_bad" in report.errors
            assert conn.execute(text("SELECT count(*) FROM vr_in_ok.t0")).scalar() == 1
        assert app_rows(settings, "SELECT v FROM vr_in_ok.t4") == [("one",)]


# -- the definitions are postgres_fdw's ----------------------------------------------------------
VARIED = """
CREATE TYPE {s}.mood AS ENUM ('ok', 'sad');
CREATE TABLE {s}.varied (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    code varchar(20) COLLATE "C" NOT NULL DEFAULT 'x' || 'y',
    price numeric(12, 2) NOT NULL DEFAULT 0,
    at timestamptz DEFAULT now(),
    tags text[] DEFAULT '{{}}',
    m {s}.mood DEFAULT 'sad',
    doubled numeric GENERATED ALWAYS AS (price * 2) STORED,
    "Odd Name" text
);
CREATE VIEW {s}.cheap AS SELECT id, price FROM {s}.varied WHERE price < 10;
CREATE TABLE {s}.counted (id serial PRIMARY KEY, made date DEFAULT current_date);
"""

DEFINITION = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), a.attgenerated, a.attcollation, a.attfdwoptions,
       f.ftoptions, s.srvname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_foreign_table f ON f.ftrelid = c.oid JOIN pg_foreign_server s ON s.oid = f.ftserver
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
WHERE n.nspname = %s AND c.relname = ANY(%s) ORDER BY c.relname, a.attnum
"""


def test_definitions_match_import_foreign_schema(veneer_ready: Settings) -> None:
    settings = veneer_ready
    scratch = "vr_import_check"
    with fleet(settings, {"vr_varied": "initech"}, VARIED) as (name,):
        assert veneer.refresh(settings, [name]).ok
        with catalog.admin_connection(settings) as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {scratch} CASCADE")
            conn.exec_driver_sql(f"CREATE SCHEMA {scratch}")
            conn.exec_driver_sql(
                f"IMPORT FOREIGN SCHEMA {name} LIMIT TO (varied, cheap) FROM SERVER initech "
                f"INTO {scratch} OPTIONS (import_default 'true')"
            )
            conn.exec_driver_sql(
                f"IMPORT FOREIGN SCHEMA {name} LIMIT TO (counted) FROM SERVER initech "
                f"INTO {scratch} OPTIONS (import_default 'false')"
            )
        try:
            tables = ["varied", "cheap", "counted"]
            ours = admin_rows(settings, DEFINITION, (name, tables))
            theirs = admin_rows(settings, DEFINITION, (scratch, tables))
            assert len(ours) == 8 + 2 + 2
            # The serial's sequence is not in the veneer: PPP fetches the shard's
            # (ppp_remote.nextval, also for the identity that IMPORT drops), keeps
            # current_date (IMPORT can only take or leave a table's defaults all at once).
            made = [r for r in ours if r[1] == "made"]
            assert made[0][4] == "CURRENT_DATE"
            seq = {(r[0], r[1]): r[4] for r in ours if r[1] == "id" and r[0] != "cheap"}
            call = "ppp_remote.nextval('initech'::text, '{}.{}_id_seq'::text)"
            assert seq == {(t, "id"): call.format(name, t) for t in ("varied", "counted")}
            expected = [
                (*r[:4], None, *r[5:]) if r[1] == "made" or (r[0], r[1]) in seq else r for r in ours
            ]
            assert expected == theirs
        finally:
            with catalog.admin_connection(settings) as conn:
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {scratch} CASCADE")
        app_rows(settings, f"INSERT INTO {name}.varied (id, price) VALUES (1, 3)")
        assert app_rows(settings, f"SELECT code, doubled, m FROM {name}.varied") == [
            ("xy", 6, "sad")
        ]
        assert app_rows(settings, f"SELECT id FROM {name}.cheap") == [(1,)]


def test_the_record_is_closed_to_the_app_role(veneer_ready: Settings) -> None:
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        app_rows(veneer_ready, f"SELECT * FROM {veneer.WIRED}")


def test_many_tenants_with_the_same_tables_need_no_import_each(veneer_ready: Settings) -> None:
    """Tenants with the same two tables: one definition read per shard, all created."""
    settings = veneer_ready
    placed = {f"vr_same_{i:02d}": SHARDS[i % 3] for i in range(24)}
    sql = "CREATE TABLE {s}.a (id int PRIMARY KEY); CREATE TABLE {s}.b (id int, a_id int);"
    with fleet(settings, placed, sql) as names:
        remote = veneer.read_remote(settings.shards["bluth_co"], names[0::3])
        assert len({sig for r in remote.values() for sig in r.tables.values()}) == 2
        assert len(next(iter(remote.values())).definitions) == 2
        started = time.monotonic()
        report = veneer.refresh(settings, names)
        assert report.ok and report.tables_created == 48
        assert report.seconds <= time.monotonic() - started
        assert app_rows(settings, f"SELECT count(*) FROM {names[-1]}.b") == [(0,)]
