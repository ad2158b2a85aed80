"""ppp tenant move / cleanup against the real topology: block and online moves, the reverse
move, a move stopped after every step and resumed, bad input that changes nothing."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg2
import pytest
from sqlalchemy import text

from ppp_env import db
from ppp_env.errors import PPPError
from ppp_env.lifecycle import move as mv
from ppp_env.lifecycle import move_shard
from ppp_env.routing import TenantRouter, isolation
from ppp_env.servers.provision import provision_instance
from ppp_env.veneer import refresh
from tests.client_programs import (
    assert_one_sentence,
    fake_client_programs,
    secrets_of,
    server_log,
    without_containers,
)
from tests.conftest import register, shard_sql, unregister

DDL = """
CREATE SCHEMA {s};
CREATE TYPE {s}.mood AS ENUM ('happy', 'sad');
CREATE TABLE {s}.authors (
    id serial PRIMARY KEY, first_name text NOT NULL, last_name text, born date, mood {s}.mood
);
CREATE TABLE {s}.books (
    id bigserial PRIMARY KEY, author_id int NOT NULL REFERENCES {s}.authors (id),
    title text NOT NULL, price numeric(8, 2), tags text[], meta jsonb
);
CREATE TABLE {s}.alembic_version (version_num varchar(32) PRIMARY KEY);
INSERT INTO {s}.alembic_version VALUES ('0001');
INSERT INTO {s}.authors (first_name, last_name, born, mood)
SELECT 'First ' || i, 'Last ' || i, date '1900-01-01' + i,
       (ARRAY['happy', 'sad'])[1 + i % 2]::{s}.mood
FROM generate_series(1, {n}) i;
INSERT INTO {s}.authors (first_name, last_name) VALUES ('Ernest', 'Hemingway');
INSERT INTO {s}.books (author_id, title, price, tags, meta)
SELECT 1 + i % {n}, 'Book ' || i, i * 1.25, ARRAY['a', 'b' || i], jsonb_build_object('i', i)
FROM generate_series(1, {n} * 2) i;
"""


def wait_until(condition, timeout: float = 30.0) -> None:
    """Until ``condition()`` holds (polled), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def stop_after(step: str):
    """An after-step hook that stops the move right after ``step``, as if it was killed."""

    def hook(done: str) -> None:
        if done == step:
            raise mv.MoveStopped(f"stopped after step {step!r}")

    return hook


def _copies(settings, schema):
    out = {}
    for name in settings.shards:
        rows = shard_sql(
            settings,
            name,
            "SELECT nspname FROM pg_namespace WHERE nspname = %s OR nspname LIKE %s",
            (schema, "ppp\\_moved\\_%"),
        )
        out[name] = sorted(
            r[0] for r in rows if r[0] == schema or r[0] in _moved(settings, name, schema)
        )
    return out


def _moved(settings, shard, schema):
    with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
        return move_shard.moved_copies(conn.cursor(), schema)


@pytest.fixture
def tenant(veneer_head):
    """A tenant with enum, serial, FK, array and jsonb columns, wired on bluth_co."""
    settings = veneer_head.settings
    schema = f"mv_{uuid.uuid4().hex[:10]}"
    shard_sql(settings, "bluth_co", "BEGIN;" + DDL.format(s=schema, n=40) + "COMMIT;")
    with db.connection(settings.shard("bluth_co"), "admin", autocommit=True) as conn:
        from ppp_env.tenant_state import ensure_index, track_sql

        cur = conn.cursor()
        ensure_index(cur, settings.shard("bluth_co").app_role)
        cur.execute("BEGIN;" + track_sql(schema, settings.shard("bluth_co").app_role) + "COMMIT;")
    register(settings, {schema: "bluth_co"})
    report = refresh(settings, [schema])
    assert report.ok and schema in report.refreshed
    yield schema
    for name in settings.shards:
        inst = settings.shard(name)
        with db.connection(inst, "superuser", dbname=inst.dbname, autocommit=True) as conn:
            cur = conn.cursor()
            rname = mv.replication_name(schema)
            move_shard.drop_subscription(cur, rname)
            move_shard.drop_publication_and_slot(cur, rname)
            move_shard.drop_marker(cur, rname) if _has_index(cur) else None
            for copy in move_shard.moved_copies(cur, schema):
                cur.execute(f'DROP SCHEMA "{copy}" CASCADE')
            cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            cur.execute(
                "DELETE FROM ppp.tenant_versions WHERE schema_name = %s", (schema,)
            ) if _has_index(cur) else None
    unregister(settings, [schema])


def replication_objects(settings, name):
    """Publications, slots and subscriptions of that name on any shard."""
    found = []
    for shard in settings.shards:
        inst = settings.shard(shard)
        with db.connection(inst, "superuser", dbname=inst.dbname, autocommit=True) as conn:
            cur = conn.cursor()
            cur.execute(
                "SELECT 'publication' FROM pg_publication WHERE pubname = %(n)s UNION ALL "
                "SELECT 'slot' FROM pg_replication_slots WHERE slot_name = %(n)s UNION ALL "
                "SELECT 'subscription' FROM pg_subscription WHERE subname = %(n)s",
                {"n": name},
            )
            found += [(shard, r[0]) for r in cur.fetchall()]
    return found


def _has_index(cur) -> bool:
    cur.execute("SELECT to_regclass('ppp.tenant_versions') IS NOT NULL")
    return bool(cur.fetchone()[0])


def veneer_app(settings, sql, params=None):
    with db.connection(settings.veneer, "app", autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else None


def catalog(settings, schema):
    with db.connection(settings.veneer, "admin", autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("SELECT shard, state FROM ppp.tenants WHERE schema = %s", (schema,))
        tenant = cur.fetchone()
        cur.execute("SELECT step FROM ppp.moves WHERE schema = %s", (schema,))
        move = cur.fetchone()
        return tenant, (move[0] if move else None)


def snapshot(settings, schema):
    """Everything the application sees of the tenant through the veneer."""
    return (
        veneer_app(settings, f"SELECT * FROM {schema}.authors ORDER BY id"),
        veneer_app(settings, f"SELECT * FROM {schema}.books ORDER BY id"),
    )


def server_of(settings, schema):
    rows = veneer_app(
        settings,
        "SELECT s.srvname FROM pg_foreign_table f JOIN pg_foreign_server s ON s.oid = f.ftserver "
        "WHERE f.ftrelid = %s::regclass",
        (f"{schema}.authors",),
    )
    return rows[0][0]


def app_can_write(settings, shard, schema) -> bool:
    """Whether the shard's app role may insert into the tenant's table (rolled back)."""
    with db.connection(settings.shard(shard), "app") as conn:
        try:
            conn.cursor().execute(f"INSERT INTO {schema}.authors (first_name) VALUES ('probe')")
            return True
        except psycopg2.Error:
            return False
        finally:
            conn.rollback()


# -- block mode ---------------------------------------------------------------------------------
def test_block_move_round_trip(tenant, settings):
    before = snapshot(settings, tenant)
    assert veneer_app(
        settings, f"SELECT last_name FROM {tenant}.authors WHERE first_name = 'Ernest'"
    )
    lines: list[str] = []
    report = mv.move_tenant(settings, tenant, "cyberdyne", mode="block", say=lines.append)
    assert report.rows == {"alembic_version": 1, "authors": 41, "books": 80}
    assert catalog(settings, tenant) == (("cyberdyne", "active"), None)
    assert server_of(settings, tenant) == "cyberdyne"
    assert snapshot(settings, tenant) == before
    # the source copy is renamed and closed to the app role; the target is writable
    copies = _moved(settings, "bluth_co", tenant)
    assert copies == [report.moved_copy] and len(report.moved_copy.encode()) <= 63
    assert not app_can_write(settings, "bluth_co", copies[0])
    assert shard_sql(settings, "bluth_co", "SELECT to_regnamespace(%s)", (f'"{tenant}"',)) == [
        (None,)
    ]
    # sequences continue on the target: a write through the veneer gets the next id
    veneer_app(settings, f"INSERT INTO {tenant}.authors (first_name) VALUES ('New')")
    row = shard_sql(
        settings, "cyberdyne", f"SELECT id FROM {tenant}.authors WHERE first_name = 'New'"
    )
    assert row == [(42,)]
    assert shard_sql(settings, "cyberdyne", f"SELECT nextval('{tenant}.books_id_seq')") == [(81,)]
    # the target's version index knows the tenant; the app cannot touch its version table
    assert shard_sql(
        settings,
        "cyberdyne",
        "SELECT heads FROM ppp.tenant_versions WHERE schema_name = %s",
        (tenant,),
    ) == [(["0001"],)]
    with pytest.raises(psycopg2.Error):
        shard_sql(settings, "cyberdyne", f"SELECT * FROM {tenant}.alembic_version", role="app")

    # the reverse move: back to bluth_co, which still holds the old copy under another name
    back = mv.move_tenant(settings, tenant, "bluth_co", mode="block")
    assert back.source == "cyberdyne"
    assert catalog(settings, tenant) == (("bluth_co", "active"), None)
    assert server_of(settings, tenant) == "bluth_co"
    after = snapshot(settings, tenant)
    assert len(after[0]) == 42 and after[1] == before[1]

    # cleanup drops both moved copies, one per shard, and nothing else
    done = mv.cleanup_tenant(settings, tenant)
    assert sorted(s for s, _ in done.dropped) == ["bluth_co", "cyberdyne"]
    assert (
        _moved(settings, "bluth_co", tenant) == [] and _moved(settings, "cyberdyne", tenant) == []
    )
    assert snapshot(settings, tenant) == after
    assert mv.cleanup_tenant(settings, tenant).dropped == []


# -- online mode --------------------------------------------------------------------------------
class Writer(threading.Thread):
    """Writes through the veneer as veneer_app until stopped; remembers what was acknowledged."""

    def __init__(self, settings, schema) -> None:
        super().__init__(daemon=True)
        self.settings, self.schema = settings, schema
        self.acked: list[tuple[int, float]] = []
        self.refused = 0
        self.errors: set[str] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        conn = db.connect(self.settings.veneer, "app", autocommit=True)
        next_id = 1_000_000
        try:
            while not self.stop.is_set():
                try:
                    conn.cursor().execute(
                        f"INSERT INTO {self.schema}.books (id, author_id, title) "
                        "VALUES (%s, 1, %s)",
                        (next_id, f"w{next_id}"),
                    )
                    self.acked.append((next_id, time.monotonic()))
                    next_id += 1
                except psycopg2.Error as exc:
                    self.refused += 1
                    self.errors.add(type(exc).__name__)
                    time.sleep(0.005)
        finally:
            conn.close()


class Reader(threading.Thread):
    """Reads the tenant through the veneer as veneer_app until stopped; counts failures."""

    def __init__(self, settings, schema) -> None:
        super().__init__(daemon=True)
        self.settings, self.schema = settings, schema
        self.reads = 0
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        conn = db.connect(self.settings.veneer, "app", autocommit=True)
        try:
            while not self.stop.is_set():
                try:
                    cur = conn.cursor()
                    cur.execute(
                        f"SELECT count(*) FROM {self.schema}.authors a "
                        f"JOIN {self.schema}.books b ON b.author_id = a.id"
                    )
                    self.reads += 1
                except psycopg2.Error as exc:
                    self.failures.append(str(exc).splitlines()[0])
        finally:
            conn.close()


def test_online_move_keeps_every_acknowledged_write(tenant, settings):
    writer = Writer(settings, tenant)
    times: dict[str, float] = {}

    def say(line: str) -> None:
        times[line.rsplit(" ", 1)[-1]] = time.monotonic()

    reader = Reader(settings, tenant)
    writer.start()
    reader.start()
    try:
        wait_until(lambda: len(writer.acked) >= 5 and reader.reads >= 1)
        times["started"] = time.monotonic()
        report = mv.move_tenant(settings, tenant, "initech", mode="online", say=say)
        done = len(writer.acked)
        wait_until(lambda: len(writer.acked) >= done + 5)  # writes go on, on the target
    finally:
        writer.stop.set()
        reader.stop.set()
        writer.join(10)
        reader.join(10)
    # readers never saw the tenant missing; writers were only refused (permission denied)
    assert reader.reads > 0 and reader.failures == []
    assert writer.errors <= {"InsufficientPrivilege"}, writer.errors
    assert report.steps == list(mv.STEPS)
    assert catalog(settings, tenant) == (("initech", "active"), None)
    assert server_of(settings, tenant) == "initech"
    acked = [i for i, _ in writer.acked]
    # writes went on while the data was copied, and after the switch
    assert any(times["started"] < t < times["blocked"] for _, t in writer.acked)
    assert any(t > times["switched"] for _, t in writer.acked)
    on_target = {
        r[0]
        for r in shard_sql(
            settings, "initech", f"SELECT id FROM {tenant}.books WHERE id >= 1000000"
        )
    }
    assert set(acked) == on_target
    seen = veneer_app(settings, f"SELECT count(*) FROM {tenant}.books WHERE id >= 1000000")
    assert seen == [(len(acked),)]
    # sequence values came along (logical replication does not carry them)
    assert shard_sql(settings, "initech", f"SELECT nextval('{tenant}.books_id_seq')") == [(81,)]
    assert shard_sql(settings, "initech", f"SELECT nextval('{tenant}.authors_id_seq')") == [(42,)]
    # the replication objects are gone from both shards
    name = mv.replication_name(tenant)
    assert replication_objects(settings, name) == []
    assert report.blocked_seconds > 0


# -- stopped after every step, resumed ----------------------------------------------------------
@pytest.mark.parametrize("mode", ["block", "online"])
def test_move_stopped_after_each_step_resumes(tenant, settings, monkeypatch, mode):
    """Stop after every step in turn (as if killed there), rerun the same move each time: the
    tenant is readable with all its rows at every stop, never writable on two shards, and the
    last run finishes the move."""
    before = snapshot(settings, tenant)
    steps = mv.steps_of(mode)
    for step in steps:
        with pytest.raises(mv.MoveStopped, match=step):
            mv.move_tenant(settings, tenant, "initech", mode=mode, after_step=stop_after(step))
        (shard, state), recorded = catalog(settings, tenant)
        assert recorded == step
        switched = steps.index(step) >= steps.index("switched")
        assert (shard, state) == (("initech", "active") if switched else ("bluth_co", "moving"))
        assert snapshot(settings, tenant) == before, step
        writable = [s for s in ("bluth_co", "initech") if app_can_write(settings, s, tenant)]
        assert len(writable) <= 1, (step, writable)
        if steps.index(step) >= steps.index("blocked"):
            assert "bluth_co" not in writable, step
    report = mv.move_tenant(settings, tenant, "initech")
    assert report.resumed_after == "retired" and report.mode == mode
    assert catalog(settings, tenant) == (("initech", "active"), None)
    assert snapshot(settings, tenant) == before
    assert app_can_write(settings, "initech", tenant)
    assert len(_moved(settings, "bluth_co", tenant)) == 1
    assert replication_objects(settings, mv.replication_name(tenant)) == []


@pytest.mark.parametrize(("mode", "step"), [("block", "copied"), ("online", "synced")])
def test_abort_takes_an_unfinished_move_back(tenant, settings, monkeypatch, mode, step):
    before = snapshot(settings, tenant)
    with pytest.raises(mv.MoveStopped):
        mv.move_tenant(settings, tenant, "cyberdyne", mode=mode, after_step=stop_after(step))
    # block mode: the source is read-only while the copy runs; online: writable until cutover
    assert app_can_write(settings, "bluth_co", tenant) == (mode == "online")
    report = mv.move_tenant(settings, tenant, abort=True)
    assert report.aborted
    assert catalog(settings, tenant) == (("bluth_co", "active"), None)
    assert app_can_write(settings, "bluth_co", tenant)
    assert snapshot(settings, tenant) == before
    assert shard_sql(settings, "cyberdyne", "SELECT to_regnamespace(%s)", (tenant,)) == [(None,)]
    assert replication_objects(settings, mv.replication_name(tenant)) == []
    # ... and the tenant can be moved again
    mv.move_tenant(settings, tenant, "cyberdyne", mode=mode)
    assert catalog(settings, tenant) == (("cyberdyne", "active"), None)


def test_verification_failure_takes_the_move_back(tenant, settings, monkeypatch):
    """A target that differs from the source after the copy: the move is taken back."""
    real = move_shard.copy_schema

    def lossy(source, target, schema, **kw):
        real(source, target, schema, **kw)
        shard_sql(settings, "cyberdyne", f"DELETE FROM {schema}.books WHERE id = 7")

    monkeypatch.setattr(move_shard, "copy_schema", lossy)
    with pytest.raises(
        PPPError, match=r"books differs \(80 rows on the source, 79 on the target\)"
    ):
        mv.move_tenant(settings, tenant, "cyberdyne", mode="block")
    assert catalog(settings, tenant) == (("bluth_co", "active"), None)
    assert app_can_write(settings, "bluth_co", tenant)
    assert shard_sql(settings, "cyberdyne", "SELECT to_regnamespace(%s)", (tenant,)) == [(None,)]


# -- bad input: a clear error, nothing changed --------------------------------------------------
def test_bad_moves_change_nothing(tenant, settings, topology, monkeypatch):
    before = snapshot(settings, tenant)
    state = catalog(settings, tenant)
    cases = [
        ((f"{tenant}x", "cyberdyne"), {}, "unknown tenant"),
        ((tenant, "nowhere"), {}, "unknown shard 'nowhere'"),
        ((tenant, "bluth_co"), {}, "already on shard 'bluth_co'"),
        (("Bad-Name", "cyberdyne"), {}, "invalid tenant schema name"),
        ((tenant, "cyberdyne"), {"mode": "sideways"}, "invalid mode"),
        ((tenant, None), {}, "give --to"),
        ((tenant, None), {"abort": True}, "no move under way"),
    ]
    for args, kw, message in cases:
        with pytest.raises(PPPError, match=message):
            mv.move_tenant(settings, *args, **kw)
        assert catalog(settings, tenant) == state and snapshot(settings, tenant) == before

    # an unreachable target shard
    from ppp_env.servers.local import free_port

    lost = topology.settings_for(topology.variant(PPP_SHARD_CYBERDYNE_PORT=str(free_port())))
    with pytest.raises(PPPError, match="cannot connect to shard 'cyberdyne'"):
        mv.move_tenant(lost, tenant, "cyberdyne")
    assert catalog(settings, tenant) == state

    # a schema of that name already on the target
    shard_sql(settings, "cyberdyne", f"CREATE SCHEMA {tenant}")
    try:
        with pytest.raises(PPPError, match="already has a schema"):
            mv.move_tenant(settings, tenant, "cyberdyne")
    finally:
        shard_sql(settings, "cyberdyne", f"DROP SCHEMA {tenant}")
    assert catalog(settings, tenant) == state

    # a tenant in the middle of a move: only the same move may continue
    with pytest.raises(mv.MoveStopped):
        mv.move_tenant(settings, tenant, "cyberdyne", after_step=stop_after("started"))
    moving = catalog(settings, tenant)
    with pytest.raises(PPPError, match="in the middle of a move from 'bluth_co' to 'cyberdyne'"):
        mv.move_tenant(settings, tenant, "initech")
    with pytest.raises(PPPError, match="runs in mode 'block'"):
        mv.move_tenant(settings, tenant, "cyberdyne", mode="online")
    with pytest.raises(PPPError, match="in the middle of a move"):
        mv.cleanup_tenant(settings, tenant)
    assert catalog(settings, tenant) == moving
    mv.move_tenant(settings, tenant, abort=True)
    assert catalog(settings, tenant) == state and snapshot(settings, tenant) == before


def test_online_move_refuses_tables_without_identity(tenant, settings):
    shard_sql(settings, "bluth_co", f"CREATE TABLE {tenant}.log (line text)")
    with pytest.raises(PPPError, match=r"table\(s\) log have no primary key.*--mode block"):
        mv.move_tenant(settings, tenant, "cyberdyne", mode="online")
    assert catalog(settings, tenant) == (("bluth_co", "active"), None)
    shard_sql(settings, "bluth_co", f"DROP TABLE {tenant}.log")
    shard_sql(settings, "bluth_co", f"CREATE UNLOGGED TABLE {tenant}.cache (k int PRIMARY KEY)")
    with pytest.raises(PPPError, match=r"table\(s\) cache are unlogged.*--mode block"):
        mv.move_tenant(settings, tenant, "cyberdyne", mode="online")
    assert catalog(settings, tenant) == (("bluth_co", "active"), None)


# -- the command line ---------------------------------------------------------------------------
def test_cli_move_and_cleanup(tenant, settings):
    from click.testing import CliRunner

    from ppp_env.cli.main import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["tenant", "move", tenant, "--to", "cyberdyne"])
    assert res.exit_code == 0, res.output
    assert f"moved {tenant} from bluth_co to cyberdyne (block mode)" in res.output
    assert f"ppp tenant cleanup {tenant}" in res.output
    res = runner.invoke(cli, ["tenant", "move", tenant, "--to", "cyberdyne"])
    assert res.exit_code == 1
    assert f"Error: tenant '{tenant}' is already on shard 'cyberdyne'" in res.output
    res = runner.invoke(cli, ["tenant", "cleanup", tenant])
    assert res.exit_code == 0 and "dropped ppp_moved_" in res.output, res.output
    res = runner.invoke(cli, ["tenant", "cleanup", tenant])
    assert "nothing to drop" in res.output
    res = runner.invoke(cli, ["tenant", "move", tenant, "--to", "bluth_co", "--mode", "bad"])
    assert res.exit_code == 2
    for inst in settings.shards.values():  # no password in anything printed
        assert inst.superuser_password not in res.output


def test_no_migration_of_the_tenant_while_it_moves(tenant, settings, monkeypatch):
    """The mover holds the fleet's per-tenant lock on the source: no DDL can slip in."""
    from ppp_env.fleet.worker import LOCK_NAMESPACE

    seen: list[bool] = []
    real = move_shard.copy_schema

    def probing(source, target, schema, **kw):
        got = shard_sql(
            settings,
            "bluth_co",
            "SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))",
            (LOCK_NAMESPACE, schema),
        )
        seen.append(got[0][0])
        real(source, target, schema, **kw)

    monkeypatch.setattr(move_shard, "copy_schema", probing)
    mv.move_tenant(settings, tenant, "cyberdyne")
    assert seen == [False]
    got = shard_sql(
        settings, "bluth_co", "SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))",
        (LOCK_NAMESPACE, tenant),
    )  # fmt: skip
    assert got == [(True,)]
    # and a migration running on the tenant keeps a move from starting its work
    with db.connection(settings.shard("cyberdyne"), "admin") as migration:
        migration.cursor().execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_NAMESPACE, tenant)
        )
        with pytest.raises(PPPError, match="is being migrated on shard 'cyberdyne'"):
            mv.move_tenant(settings, tenant, "bluth_co")
        assert catalog(settings, tenant) == (("cyberdyne", "active"), None)  # nothing changed
        migration.rollback()
    mv.move_tenant(settings, tenant, "bluth_co")
    assert catalog(settings, tenant) == (("bluth_co", "active"), None)


def test_block_waits_for_an_open_writer_then_gives_up_clearly(tenant, settings, topology):
    """A transaction that wrote and stays open keeps the block from completing: after
    PPP_LOCK_TIMEOUT the move stops with an Error, the tenant stays on its source; --abort
    makes it writable again."""
    holder = db.connect(settings.shard("bluth_co"), "app")
    try:
        holder.cursor().execute(f"UPDATE {tenant}.authors SET last_name = 'x' WHERE id = 1")
        quick = topology.settings_for(topology.variant(PPP_LOCK_TIMEOUT="0.5"))
        with pytest.raises(PPPError, match=r"still holds its tables.*rerun the same command"):
            mv.move_tenant(quick, tenant, "cyberdyne")
    finally:
        holder.rollback()
        holder.close()
    assert catalog(settings, tenant) == (("bluth_co", "moving"), "started")
    mv.move_tenant(settings, tenant, abort=True)
    assert catalog(settings, tenant) == (("bluth_co", "active"), None)
    assert app_can_write(settings, "bluth_co", tenant)


def test_two_movers_of_one_tenant_never_run_at_once(tenant, settings):
    with db.connection(settings.veneer, "admin", autocommit=True) as other:
        other.cursor().execute(
            "SELECT pg_advisory_lock(%s, hashtext(%s))", (mv.MOVE_LOCK_NAMESPACE, tenant)
        )
        with pytest.raises(PPPError, match="being moved by another process"):
            mv.move_tenant(settings, tenant, "cyberdyne")
    assert catalog(settings, tenant) == (("bluth_co", "active"), None)


def test_the_source_password_is_never_shown_nor_logged(tenant, settings, topology):
    """The subscription's connection string holds the password of the source's replication
    role (its superuser on 15, its {db}_admin on 16 and later): not in an error, not in the
    target's statement log (log_statement = all)."""
    password = settings.shard("bluth_co").superuser_password
    admin_password = settings.shard("bluth_co").admin_password
    from ppp_env.servers.local import free_port

    wrong = topology.settings_for(topology.variant(PPP_SHARD_BLUTH_CO_FDW_PORT=str(free_port())))
    with pytest.raises(PPPError) as caught:
        mv.move_tenant(wrong, tenant, "initech", mode="online")
    assert "cannot subscribe" in str(caught.value) and password not in str(caught.value)
    assert admin_password not in str(caught.value)
    mv.move_tenant(settings, tenant, abort=True)
    mv.move_tenant(settings, tenant, "initech", mode="online")  # and a successful one
    logs = {name: server_log(topology, name) for name in ("initech", "bluth_co")}
    if logs["initech"] is not None:
        assert "CREATE SUBSCRIPTION" not in logs["initech"]
        assert all(password not in log and admin_password not in log for log in logs.values())


def test_abort_with_the_target_gone_still_restores_the_source(
    tenant, settings, topology, monkeypatch
):
    from ppp_env.servers.local import free_port

    with pytest.raises(mv.MoveStopped):
        mv.move_tenant(settings, tenant, "cyberdyne", after_step=stop_after("copied"))
    lost = topology.settings_for(topology.variant(PPP_SHARD_CYBERDYNE_PORT=str(free_port())))
    lines: list[str] = []
    mv.move_tenant(lost, tenant, abort=True, say=lines.append)
    assert any("could not clean up shard 'cyberdyne'" in line for line in lines), lines
    assert catalog(settings, tenant) == (("bluth_co", "active"), None)
    assert app_can_write(settings, "bluth_co", tenant)
    # the leftover copy on the target is named; a new move there is refused until it is gone
    with pytest.raises(PPPError, match="already has a schema"):
        mv.move_tenant(settings, tenant, "cyberdyne")
    shard_sql(settings, "cyberdyne", f"DROP SCHEMA {tenant} CASCADE")


# -- client programs: never older than the server, checked before anything is recorded ----------
def test_old_client_programs_are_refused_before_anything_changes(
    tenant, settings, topology, tmp_path, monkeypatch
):
    old = fake_client_programs(tmp_path / "bin")
    monkeypatch.setenv("PPP_PG_BINDIR", str(old))
    local = without_containers(topology)
    before, state = snapshot(settings, tenant), catalog(settings, tenant)
    for mode in mv.MODES:
        with pytest.raises(PPPError) as caught:
            mv.move_tenant(local, tenant, "cyberdyne", mode=mode)
        message = str(caught.value)
        assert message.startswith(
            "no pg_dump/psql/pg_restore in PPP_PG_BINDIR can work with shard 'bluth_co' "
            "(PostgreSQL "
        )
        assert f"found 9.6.0 in {old}; install postgresql-client-" in message
        assert "PPP_SHARD_BLUTH_CO_CONTAINER" in message
        assert_one_sentence(message, secrets_of(local))
        assert catalog(settings, tenant) == state and snapshot(settings, tenant) == before
        assert app_can_write(settings, "bluth_co", tenant)
    assert shard_sql(settings, "cyberdyne", "SELECT to_regnamespace(%s)", (tenant,)) == [(None,)]


# -- online moves without a superuser (PostgreSQL 16 and later) ---------------------------------
def shard_versions(settings) -> dict[str, int]:
    return {
        name: shard_sql(settings, name, "SELECT current_setting('server_version_num')::int")[0][0]
        for name in settings.shards
    }


def without_superusers(topology):
    """The session's settings with no shard superuser password."""
    blank = {f"{i.env_prefix}SUPERUSER_PASSWORD": "" for i in topology.settings.shards.values()}
    plain = topology.settings_for(topology.variant(**blank))
    assert all(i.superuser_password is None for i in plain.shards.values())
    return plain


def test_online_move_without_a_superuser(tenant, settings, topology, monkeypatch):
    """On PostgreSQL 16 and later the shards' {db}_admin roles (with what `ppp init` grants)
    publish, hold the slot, subscribe and clean up; no superuser password is set. The
    subscription's password stays out of the statement log."""
    if min(shard_versions(settings).values()) < 160000:
        pytest.skip("online moves without a superuser need PostgreSQL 16 or later shards")
    plain = without_superusers(topology)
    name = mv.replication_name(tenant)
    with pytest.raises(mv.MoveStopped):
        mv.move_tenant(plain, tenant, "initech", mode="online", after_step=stop_after("subscribed"))
    source, target = settings.shard("bluth_co"), settings.shard("initech")
    assert shard_sql(
        settings,
        "bluth_co",
        "SELECT pubowner::regrole::text, puballtables FROM pg_publication WHERE pubname = %s",
        (name,),
    ) == [(source.admin_role, False)]
    published = shard_sql(
        settings,
        "bluth_co",
        "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s "
        "ORDER BY 1",
        (name,),
    )
    assert [r[0] for r in published] == [
        f"{tenant}.alembic_version", f"{tenant}.authors", f"{tenant}.books", f"ppp.{name}"
    ]  # fmt: skip
    assert shard_sql(
        settings,
        "initech",
        "SELECT subowner::regrole::text, subpasswordrequired FROM pg_subscription "
        "WHERE subname = %s",
        (name,),
    ) == [(target.admin_role, True)]
    writer = Writer(settings, tenant)
    writer.start()
    try:
        wait_until(lambda: len(writer.acked) >= 5)
        report = mv.move_tenant(plain, tenant, "initech")
        done = len(writer.acked)
        wait_until(lambda: len(writer.acked) >= done + 5)  # writes go on, on the target
    finally:
        writer.stop.set()
        writer.join(10)
    assert report.resumed_after == "subscribed" and report.mode == "online"
    assert catalog(settings, tenant) == (("initech", "active"), None)
    acked = {i for i, _ in writer.acked}
    on_target = shard_sql(settings, "initech", f"SELECT id FROM {tenant}.books WHERE id >= 1000000")
    assert acked and acked == {r[0] for r in on_target}
    assert replication_objects(settings, name) == []
    log = server_log(topology, "initech")
    if log is not None:
        assert f'ALTER SUBSCRIPTION "{name}" DISABLE' in log  # statements are logged...
        assert "CREATE SUBSCRIPTION" not in log  # ... but not the one with the password
        assert source.admin_password not in log


def test_online_move_needs_the_grants_or_a_superuser(tenant, settings, topology):
    """Without a superuser password an online move needs what `ppp init` grants on 16 and
    later; on 15 it keeps asking for the superuser. Refused before anything is recorded."""
    plain = without_superusers(topology)
    state = catalog(settings, tenant)

    def refused(expected: str) -> None:
        with pytest.raises(PPPError) as caught:
            mv.move_tenant(plain, tenant, "initech", mode="online")
        assert str(caught.value) == expected
        assert_one_sentence(str(caught.value), secrets_of(settings))
        assert catalog(settings, tenant) == state

    source, target = settings.shard("bluth_co"), settings.shard("initech")
    if shard_versions(settings)["bluth_co"] < 160000:
        refused(
            "moving a tenant online needs the superuser of shard 'bluth_co': set "
            "PPP_SHARD_BLUTH_CO_SUPERUSER_PASSWORD (PostgreSQL 15 keeps publications FOR TABLES "
            "IN SCHEMA and subscriptions to superusers)"
        )
        return
    try:
        shard_sql(
            settings, "bluth_co", f"ALTER ROLE {source.admin_role} NOREPLICATION", role="superuser"
        )
        refused(
            f"moving a tenant online needs REPLICATION for {source.admin_role} on shard "
            "'bluth_co' (PostgreSQL 16 and later; `ppp init` grants it), or "
            "PPP_SHARD_BLUTH_CO_SUPERUSER_PASSWORD set"
        )
        provision_instance(source, settings)
        shard_sql(
            settings, "initech", f"REVOKE pg_create_subscription FROM {target.admin_role}",
            role="superuser",
        )  # fmt: skip
        refused(
            "moving a tenant online needs pg_create_subscription and SET on log_statement and "
            f"log_min_error_statement for {target.admin_role} on shard 'initech' (PostgreSQL 16 "
            "and later; `ppp init` grants it), or PPP_SHARD_INITECH_SUPERUSER_PASSWORD set"
        )
    finally:
        for inst in (source, target):
            provision_instance(inst, settings)
    mv.move_tenant(plain, tenant, "initech", mode="online")
    assert catalog(settings, tenant) == (("initech", "active"), None)


# -- strict isolation keeps through a move --------------------------------------------------------
def strict_role(settings, shard, schema):
    return isolation.role_name(settings.shard(shard), schema)


def strict_grants(settings, shard, schema):
    """What the tenant's own role may do on that shard: None when it does not exist, else
    (privileges on the tenant's tables, shared schemas granted)."""
    inst, role = settings.shard(shard), strict_role(settings, shard, schema)
    with db.connection(inst, "superuser", dbname=inst.dbname, autocommit=True) as conn:
        cur = conn.cursor()
        if isolation.existing_role(cur, inst, schema) is None:
            return None
        cur.execute(
            "SELECT c.relname, p FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, "
            "unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) p WHERE n.nspname = %s "
            "AND c.relkind = 'r' AND has_table_privilege(%s, c.oid, p) ORDER BY 1, 2",
            (schema, role),
        )
        return cur.fetchall(), isolation.shared_schemas_of(cur, role, schema)


def strict_can_write(settings, shard, schema) -> bool:
    """Whether the tenant's own role may log in to that shard and insert (rolled back)."""
    inst, role = settings.shard(shard), strict_role(settings, shard, schema)
    try:
        conn = psycopg2.connect(
            host=inst.host, port=inst.port, dbname=inst.dbname, user=role,
            password=isolation.role_password(inst, role), connect_timeout=5,
        )  # fmt: skip
    except psycopg2.Error:
        return False
    try:
        conn.cursor().execute(f"INSERT INTO {schema}.authors (first_name) VALUES ('probe')")
        return True
    except psycopg2.Error:
        return False
    finally:
        conn.rollback()
        conn.close()


@pytest.fixture
def strict_tenant(tenant, settings):
    """The tenant in strict isolation on its shard (public as a shared schema)."""
    isolation.enable(settings, tenant, shared_schemas=["public"])
    yield tenant
    for shard in settings.shards:
        isolation.disable(settings, tenant, shard=shard)


@pytest.mark.parametrize("mode", ["block", "online"])
def test_strict_isolation_keeps_through_a_move_stopped_after_each_step(
    strict_tenant, settings, mode
):
    """Stopped after every step and resumed: the tenant's role writes on one shard at most,
    never on the source once writes are blocked; from the switch on it exists on the target
    with the grants it had on the source; the source's goes with the source copy."""
    tenant = strict_tenant
    before = strict_grants(settings, "bluth_co", tenant)
    assert before is not None and before[1] == ["public"]
    assert ("authors", "INSERT") in before[0]
    steps = mv.steps_of(mode)
    for step in steps:
        with pytest.raises(mv.MoveStopped, match=step):
            mv.move_tenant(settings, tenant, "initech", mode=mode, after_step=stop_after(step))
        writable = [s for s in ("bluth_co", "initech") if strict_can_write(settings, s, tenant)]
        assert len(writable) <= 1, (step, writable)
        at = steps.index(step)
        if at >= steps.index("blocked"):
            assert "bluth_co" not in writable, step
        if at >= steps.index("switched"):
            assert strict_grants(settings, "initech", tenant) == before, step
            assert writable == ["initech"], step
        else:
            assert strict_grants(settings, "initech", tenant) is None, step
        gone = at >= steps.index("retired")
        assert (strict_grants(settings, "bluth_co", tenant) is None) == gone, step
    mv.move_tenant(settings, tenant, "initech")
    assert catalog(settings, tenant) == (("initech", "active"), None)
    with TenantRouter(settings, strict=True, listen=False) as router, router.begin(tenant) as c:
        assert c.execute(text("SELECT current_database(), current_user")).one() == (
            "initech",
            strict_role(settings, "initech", tenant),
        )
        c.execute(text("INSERT INTO authors (first_name) VALUES ('strict after the move')"))


@pytest.mark.parametrize(("mode", "step"), [("block", "copied"), ("online", "verified")])
def test_abort_gives_the_strict_role_back_its_writes(strict_tenant, settings, mode, step):
    tenant = strict_tenant
    before = strict_grants(settings, "bluth_co", tenant)
    with pytest.raises(mv.MoveStopped):
        mv.move_tenant(settings, tenant, "cyberdyne", mode=mode, after_step=stop_after(step))
    assert not strict_can_write(settings, "bluth_co", tenant)
    mv.move_tenant(settings, tenant, abort=True)
    assert strict_grants(settings, "bluth_co", tenant) == before
    assert strict_can_write(settings, "bluth_co", tenant)
    assert strict_grants(settings, "cyberdyne", tenant) is None


def test_a_strict_tenant_needs_the_superusers_to_move(strict_tenant, settings, topology):
    plain = without_superusers(topology)
    needs = r"strict isolation: .*set PPP_SHARD_BLUTH_CO_SUPERUSER_PASSWORD"
    with pytest.raises(PPPError, match=needs) as info:
        mv.move_tenant(plain, strict_tenant, "initech", mode="block")
    assert_one_sentence(str(info.value))
    assert catalog(settings, strict_tenant) == (("bluth_co", "active"), None)
    assert strict_can_write(settings, "bluth_co", strict_tenant)
    assert strict_grants(settings, "initech", strict_tenant) is None
