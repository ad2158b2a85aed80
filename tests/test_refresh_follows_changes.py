"""The refresh after a migration reads only the tables the migration's transactions changed.

Each tenant's shard row (``ppp.tenant_versions``) notes, at the commit of a version change,
the relations the transaction took an AccessExclusiveLock on; ``refresh(...,
follow_changes=True)`` (what the fleet runner calls) reads only those, and falls back to
comparing every table when the row does not know, the veneer is at other heads than the set
started from, or the record lacks the shard oids. Each case checks that the veneer ends
exactly as a full refresh leaves it, and how many table signatures the refresh read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ppp_env import db
from ppp_env.identifiers import quote_ident
from ppp_env.settings import Settings
from ppp_env.tenant_state import ensure_index, reset_changes, track_sql
from ppp_env.veneer import catalog
from ppp_env.veneer import tables as veneer
from tests.plugins.veneer import shard_sql

pytestmark = pytest.mark.usefixtures("veneer_ready")
SHARD = "cyberdyne"
TABLES = 20

#: A realistic tenant: 20 tables, a view over one of them, a domain and an enum that tables
#: use, and its
#: Alembic version table (tracked by the shard's index) at r1.
TENANT = (
    "CREATE DOMAIN {s}.money_d AS numeric(12, 2) CHECK (VALUE >= 0);"
    "CREATE TYPE {s}.mood AS ENUM ('ok', 'bad');"
    + "".join(
        f"CREATE TABLE {{s}}.t{i:02d} (id integer PRIMARY KEY, name text NOT NULL DEFAULT 'x', "
        f"amount {'{s}.money_d' if i == 1 else 'numeric(10, 2)'}, seen timestamptz"
        f"{', mood {s}.mood' if i == 2 else ''});"
        for i in range(TABLES)
    )
    + "CREATE VIEW {s}.v AS SELECT id, name FROM {s}.t00;"
    + "CREATE TABLE {s}.alembic_version (version_num varchar(32) PRIMARY KEY);"
    + "INSERT INTO {s}.alembic_version VALUES ('r1');"
)


def _admin(settings: Settings) -> Any:
    return db.connection(settings.shards[SHARD], "admin", autocommit=True)


@pytest.fixture
def tenant(veneer_ready: Settings, request: pytest.FixtureRequest) -> Iterator[str]:
    """A tenant on its shard, tracked, registered, wired by a first (full) refresh."""
    settings = veneer_ready
    name = "fc_" + request.node.name.replace("test_", "")[:24].strip("_[]-")
    q = quote_ident(name)
    with _admin(settings) as conn, conn.cursor() as cur:
        ensure_index(cur, settings.shards[SHARD].app_role)
        cur.execute(f"DROP SCHEMA IF EXISTS {q} CASCADE; CREATE SCHEMA {q};")
        cur.execute(TENANT.format(s=q) + track_sql(name))
    with catalog.admin_connection(settings) as conn:
        catalog.register_tenant(conn, name, SHARD)
    try:
        first = veneer.refresh(settings, [name], follow_changes=True)
        assert first.ok, first.errors
        assert first.followed == [] and first.tables_read == TABLES + 1
        yield name
    finally:
        with catalog.admin_connection(settings) as conn:
            catalog.unregister_tenant(conn, name)
            veneer.unwire(conn, name)
        shard_sql(settings.shards[SHARD], f"DROP SCHEMA IF EXISTS {q} CASCADE")


def revise(settings: Settings, schema: str, sql: str, to: str) -> None:
    """A revision as Alembic runs it: its DDL and the version change in one transaction."""
    q = quote_ident(schema)
    shard_sql(
        settings.shards[SHARD],
        "BEGIN;"
        + sql.format(s=q)
        + f";UPDATE {q}.alembic_version SET version_num = '{to}'; COMMIT;",
    )


def veneer_state(settings: Settings, schema: str) -> dict[str, Any]:
    """Every foreign table of the tenant's veneer schema: its options and its columns (name,
    type, not null, default, options)."""
    with catalog.admin_connection(settings) as conn:
        rows = conn.exec_driver_sql(
            "SELECT c.relname, ft.ftoptions, array_agg(concat_ws(' | ', a.attname, "
            "format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid), "
            "array_to_string(a.attfdwoptions, ',')) ORDER BY a.attnum) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_foreign_table ft ON ft.ftrelid = c.oid "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
            "LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum "
            "WHERE n.nspname = %s GROUP BY c.relname, ft.ftoptions",
            (schema,),
        ).all()
        labels = conn.exec_driver_sql(
            "SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_type t "
            "JOIN pg_namespace n ON n.oid = t.typnamespace JOIN pg_enum e ON e.enumtypid = t.oid "
            "WHERE n.nspname = %s GROUP BY t.typname",
            (schema,),
        ).all()
    state: dict[str, Any] = {r[0]: (tuple(r[1]), tuple(r[2])) for r in rows}
    state.update({f"enum {r[0]}": tuple(r[1]) for r in labels})
    return state


def tracking(settings: Settings, schema: str) -> tuple[Any, ...]:
    return shard_sql(
        settings.shards[SHARD],
        "SELECT changed, changed_since FROM ppp.tenant_versions WHERE schema_name = %s",
        (schema,),
    )[0]


def assert_as_full(settings: Settings, schema: str) -> dict[str, Any]:
    """The veneer as the refresh left it equals what a full re-creation gives."""
    followed = veneer_state(settings, schema)
    again = veneer.refresh(settings, [schema], full=True)
    assert again.ok, again.errors
    assert veneer_state(settings, schema) == followed
    return followed


CASES = {
    # name: (revision's SQL, tables read, created, dropped, what the veneer then has)
    "add_column": ("ALTER TABLE {s}.t03 ADD COLUMN extra integer", 1, 1, 1, "t03.extra"),
    "rename": ("ALTER TABLE {s}.t04 RENAME TO t04_new", 1, 1, 1, "t04_new"),
    "drop": ("DROP TABLE {s}.t05", 0, 0, 1, "-t05"),
    "create": (
        "CREATE TABLE {s}.fresh (id integer, note text);"
        "CREATE VIEW {s}.fresh_v AS SELECT id FROM {s}.fresh",
        2,
        2,
        0,
        "fresh_v",
    ),
    "replace_view": (
        "CREATE OR REPLACE VIEW {s}.v AS SELECT id, name, amount AS extra FROM {s}.t00",
        1,
        1,
        1,
        "v.extra",
    ),
    "enum_label": ("ALTER TYPE {s}.mood ADD VALUE 'meh'", 0, 0, 0, ""),
    "data_only": (
        "INSERT INTO {s}.t00 (id) VALUES (1); UPDATE {s}.t02 SET name = 'y'",
        0,
        0,
        0,
        "",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_refresh_reads_only_what_the_revision_changed(
    veneer_ready: Settings, tenant: str, case: str
) -> None:
    settings = veneer_ready
    sql, read, created, dropped, expect = CASES[case]
    revise(settings, tenant, sql, "r2")
    changed, since = tracking(settings, tenant)
    assert since == ["r1"] and len(changed) >= read
    report = veneer.refresh(settings, [tenant], follow_changes=True)
    assert report.ok, report.errors
    assert report.followed == [tenant]
    assert report.tables_read == read
    assert (report.tables_created, report.tables_dropped) == (created, dropped)
    assert report.revisions == {tenant: "r2"}
    state = assert_as_full(settings, tenant)
    table, _, column = expect.partition(".")
    if table.startswith("-"):
        assert table[1:] not in state
    elif table:
        assert table in state and column in " ".join(c.split(" | ")[0] for c in state[table][1])
    assert len(state) == TABLES + 2 + {"drop": -1, "create": 2}.get(case, 0)
    assert state["enum mood"] == (("ok", "bad", "meh") if case == "enum_label" else ("ok", "bad"))
    # The row starts again from the heads just wired.
    assert tracking(settings, tenant)[1] == ["r2"]


def test_a_changed_type_makes_the_refresh_read_every_table(
    veneer_ready: Settings, tenant: str
) -> None:
    settings = veneer_ready
    revise(settings, tenant, "ALTER DOMAIN {s}.money_d SET DEFAULT 0", "r2")
    report = veneer.refresh(settings, [tenant], follow_changes=True)
    assert report.ok, report.errors
    assert report.followed == [] and report.tables_read == TABLES + 1
    assert_as_full(settings, tenant)


def test_a_row_that_does_not_know_falls_back_to_every_table(
    veneer_ready: Settings, tenant: str
) -> None:
    settings = veneer_ready
    # As for a tenant created before the shard tracked changes.
    shard_sql(
        settings.shards[SHARD],
        "UPDATE ppp.tenant_versions SET changed = NULL WHERE schema_name = %s",
        (tenant,),
    )
    revise(settings, tenant, "ALTER TABLE {s}.t03 ADD COLUMN extra integer", "r2")
    assert tracking(settings, tenant)[0] is None  # unknown stays unknown
    report = veneer.refresh(settings, [tenant], follow_changes=True)
    assert report.ok and report.followed == [] and report.tables_read == TABLES + 1
    assert report.tables_created == 1
    assert_as_full(settings, tenant)
    assert tracking(settings, tenant) == ([], ["r2"])


def test_a_step_outside_a_transaction_makes_the_row_unknown(
    veneer_ready: Settings, tenant: str
) -> None:
    settings = veneer_ready
    shard_sql(
        settings.shards[SHARD],
        "INSERT INTO ppp.tenant_outside (schema_name, revision, label, heads, heads_after, pid) "
        "VALUES (%s, 'r2', 'r2', '{r1}', '{r2}', pg_backend_pid());"
        "DELETE FROM ppp.tenant_outside WHERE schema_name = %s",
        (tenant, tenant),
    )
    assert tracking(settings, tenant)[0] is None


def test_a_stale_veneer_falls_back_to_every_table(veneer_ready: Settings, tenant: str) -> None:
    settings = veneer_ready
    revise(settings, tenant, "ALTER TABLE {s}.t03 ADD COLUMN extra integer", "r2")
    with catalog.admin_connection(settings) as conn:  # wired at other heads than r1
        conn.exec_driver_sql(
            "UPDATE ppp.tenants SET wired_revision = 'r0' WHERE schema = %s", (tenant,)
        )
    report = veneer.refresh(settings, [tenant], follow_changes=True)
    assert report.ok and report.followed == [] and report.tables_read == TABLES + 1
    assert_as_full(settings, tenant)


def test_records_without_shard_oids_fall_back_to_every_table(
    veneer_ready: Settings, tenant: str
) -> None:
    settings = veneer_ready
    with catalog.admin_connection(settings) as conn:  # as written before PPP kept them
        conn.exec_driver_sql(
            f"UPDATE {veneer.WIRED} SET remote_oid = NULL WHERE schema = %s", (tenant,)
        )
    revise(settings, tenant, "ALTER TABLE {s}.t03 ADD COLUMN extra integer", "r2")
    report = veneer.refresh(settings, [tenant], follow_changes=True)
    assert report.ok and report.followed == [] and report.tables_read == TABLES + 1
    revise(settings, tenant, "ALTER TABLE {s}.t06 ADD COLUMN extra integer", "r3")
    report = veneer.refresh(settings, [tenant], follow_changes=True)  # the oids are back
    assert report.followed == [tenant] and report.tables_read == 1
    assert_as_full(settings, tenant)


def test_a_change_outside_a_version_change_is_not_followed(
    veneer_ready: Settings, tenant: str
) -> None:
    settings = veneer_ready
    q = quote_ident(tenant)
    shard_sql(settings.shards[SHARD], f"ALTER TABLE {q}.t07 ADD COLUMN by_hand integer")
    revise(settings, tenant, "ALTER TABLE {s}.t03 ADD COLUMN extra integer", "r2")
    report = veneer.refresh(settings, [tenant], follow_changes=True)
    assert report.followed == [tenant] and report.tables_read == 1
    assert "by_hand" not in str(veneer_state(settings, tenant)["t07"])
    report = veneer.refresh(settings, [tenant])  # what `ppp veneer refresh` runs
    assert report.ok and report.followed == [] and report.tables_read == TABLES + 1
    assert "by_hand" in str(veneer_state(settings, tenant)["t07"])


def _row(settings: Settings, schema: str) -> tuple[Any, ...]:
    return shard_sql(
        settings.shards[SHARD],
        "SELECT heads, updated_at, changed_xact::text FROM ppp.tenant_versions "
        "WHERE schema_name = %s",
        (schema,),
    )[0]


def test_the_reset_leaves_a_row_a_migration_changed_or_holds(
    veneer_ready: Settings, tenant: str
) -> None:
    settings = veneer_ready
    revise(settings, tenant, "ALTER TABLE {s}.t03 ADD COLUMN extra integer", "r2")
    read = _row(settings, tenant)
    revise(settings, tenant, "ALTER TABLE {s}.t06 ADD COLUMN extra integer", "r3")
    with _admin(settings) as conn, conn.cursor() as cur:
        assert reset_changes(cur, [(tenant, *read)]) == 0  # changed since it was read
    changed, since = tracking(settings, tenant)
    assert since == ["r1"] and len(changed) == 2
    read = _row(settings, tenant)
    with db.connection(settings.shards[SHARD], "admin") as migrating:  # holds the row
        with migrating.cursor() as held:
            held.execute(f"UPDATE {quote_ident(tenant)}.alembic_version SET version_num = 'r4'")
        with _admin(settings) as conn, conn.cursor() as cur:
            cur.execute("SET lock_timeout = '5s'")
            assert reset_changes(cur, [(tenant, *read)]) == 0  # skipped, not waited for
        migrating.rollback()
    with _admin(settings) as conn, conn.cursor() as cur:
        assert reset_changes(cur, [(tenant, *read)]) == 1
    assert tracking(settings, tenant) == ([], ["r3"])


def test_an_older_shard_shape_is_upgraded(veneer_ready: Settings) -> None:
    settings = veneer_ready
    inst = settings.shards["initech"]
    with db.connection(inst, "admin", autocommit=True) as conn, conn.cursor() as cur:
        ensure_index(cur, inst.app_role)
    shard_sql(  # back to the shape before change tracking
        inst,
        "DROP TRIGGER IF EXISTS ppp_follow_changes ON ppp.tenant_versions;"
        "DROP TRIGGER IF EXISTS ppp_outside_unknown ON ppp.tenant_outside;"
        "ALTER TABLE ppp.tenant_versions DROP COLUMN IF EXISTS changed, "
        "DROP COLUMN IF EXISTS changed_since, DROP COLUMN IF EXISTS changed_xact",
    )
    with db.connection(inst, "admin", autocommit=True) as conn, conn.cursor() as cur:
        ensure_index(cur, inst.app_role)
        ensure_index(cur, inst.app_role)  # idempotent: the second finds it current
    cols = shard_sql(
        inst,
        "SELECT attname FROM pg_attribute WHERE attrelid = 'ppp.tenant_versions'::regclass "
        "AND attname LIKE 'changed%%' AND NOT attisdropped ORDER BY attname",
    )
    assert [c[0] for c in cols] == ["changed", "changed_since", "changed_xact"]
    triggers = shard_sql(
        inst,
        "SELECT tgname, tgdeferrable, tginitdeferred FROM pg_trigger "
        "WHERE tgname IN ('ppp_follow_changes', 'ppp_outside_unknown') ORDER BY tgname",
    )
    assert triggers == [("ppp_follow_changes", True, True), ("ppp_outside_unknown", False, False)]
    # The app role still gets nothing in schema ppp.
    grants = shard_sql(
        inst,
        "SELECT has_table_privilege(%s, 'ppp.tenant_versions', 'UPDATE')",
        (inst.app_role,),
    )
    assert grants == [(False,)]


def test_a_fleet_run_refreshes_only_what_its_revisions_changed(
    fleet: dict[str, str], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through Alembic and the fleet runner: f003 adds items.price (online); the refresh
    after the run reads that one table per tenant."""
    from alembic import command

    from ppp_env.fleet import results
    from tests.conftest import fleet_config, only, opts

    reports: list[veneer.RefreshReport] = []

    def spy(*args: Any, **kw: Any) -> veneer.RefreshReport:
        reports.append(veneer.refresh(*args, **kw))
        return reports[-1]

    monkeypatch.setattr(results, "refresh", spy)
    command.upgrade(fleet_config(**opts(**only(fleet))), "f002")
    assert reports[-1].ok and reports[-1].followed == []  # new tenants: compared in full
    command.upgrade(fleet_config(**opts(**only(fleet))), "head")
    report = reports[-1]
    assert report.ok, report.errors
    assert sorted(report.followed) == sorted(fleet) and report.tables_read == len(fleet)
    assert report.tables_created == len(fleet)
    tenant = sorted(fleet)[0]
    with db.connection(settings.veneer, "app") as conn, conn.cursor() as cur:
        cur.execute(f"SELECT price FROM {quote_ident(tenant)}.items")
        assert cur.fetchall() == []
