"""Tenant migrations over the fleet: `alembic upgrade head` and friends, on real servers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from alembic import command
from alembic.util import CommandError

from ppp_env import db
from tests.conftest import (
    FLEET_SCRIPTS,
    ROOT,
    alembic_config,
    drop_schemas,
    fleet_config,
    only,
    opts,
    register,
    shard_sql,
    states,
    unregister,
)


def test_upgrade_migrates_every_tenant_and_creates_new_schemas(fleet, settings):
    command.upgrade(fleet_config(**opts(**only(fleet))), "head")
    for shard in settings.shards:
        mine = [t for t, s in fleet.items() if s == shard]
        assert {st.revision for st in states(settings, shard, mine).values()} == {"f003"}
        # A new tenant's schema belongs to the shard's admin role, and the app role can use it.
        owner = shard_sql(
            settings,
            shard,
            "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname=%s",
            (mine[0],),
        )
        assert owner == [(settings.shard(shard).admin_role,)]
        assert shard_sql(settings, shard, f"SELECT n FROM {mine[0]}.runs", role="app") == [(1,)]


def test_current_prints_one_line_per_tenant(fleet, settings):
    first = sorted(fleet)[0]
    command.upgrade(fleet_config(**opts(tenants=[first])), "head")
    cfg = fleet_config(**opts(**only(fleet)))
    command.current(cfg)
    lines = cfg.stdout.getvalue().splitlines()
    assert f"{fleet[first]} {first} f003 (head)" in lines
    others = sorted(fleet)[1:]
    for t in others:
        assert f"{fleet[t]} {t} (no schema yet)" in lines
    assert len(lines) == len(fleet)


def test_downgrade_and_stamp(fleet, settings):
    cfg = fleet_config(**opts(**only(fleet)))
    command.upgrade(cfg, "head")
    command.downgrade(fleet_config(**opts(**only(fleet))), "f001")
    for shard in settings.shards:
        mine = [t for t, s in fleet.items() if s == shard]
        assert {st.revision for st in states(settings, shard, mine).values()} == {"f001"}
        cols = shard_sql(
            settings,
            shard,
            "SELECT column_name FROM information_schema.columns WHERE table_schema=%s "
            "AND table_name='items'",
            (mine[0],),
        )
        assert cols == [("name",)]
    command.stamp(fleet_config(**opts(**only(fleet))), "f003")
    for shard in settings.shards:
        mine = [t for t, s in fleet.items() if s == shard]
        assert {st.revision for st in states(settings, shard, mine).values()} == {"f003"}
    command.stamp(fleet_config(**opts(**only(fleet))), "f001")
    command.downgrade(fleet_config(**opts(**only(fleet))), "base")
    for shard in settings.shards:
        mine = [t for t, s in fleet.items() if s == shard]
        assert {st.revision for st in states(settings, shard, mine).values()} == {None}


def test_shard_and_tenant_filters(fleet, settings):
    command.upgrade(fleet_config(**opts(**only(fleet), shards=["cyberdyne"])), "head")
    for t, shard in fleet.items():
        (st,) = states(settings, shard, [t]).values()
        assert st.revision == ("f003" if shard == "cyberdyne" else None)


def test_unknown_tenant_or_shard_is_a_clear_error(fleet, settings):
    with pytest.raises(CommandError, match="no_such_tenant"):
        command.upgrade(fleet_config(**opts(tenants=["no_such_tenant"])), "head")
    with pytest.raises(CommandError, match="nowhere"):
        command.upgrade(fleet_config(**opts(shards=["nowhere"])), "head")
    with pytest.raises(CommandError, match="unknown -x option 'bogus'"):
        cfg = fleet_config(**opts(**only(fleet)))
        cfg.cmd_opts = type("O", (), {"x": ["bogus=1"]})()
        command.upgrade(cfg, "head")
    for t, shard in fleet.items():
        assert not states(settings, shard, [t])[t].exists


def test_offline_sql_for_every_shard_and_tenant(fleet, settings, tmp_path):
    cfg = fleet_config(**opts(**only(fleet)))
    command.upgrade(cfg, "base:f002", sql=True)
    text = cfg.output_buffer.getvalue()
    for t, shard in fleet.items():
        assert f"-- PPP: shard {shard}, tenant {t}" in text
        assert f'SET LOCAL search_path TO "{t}";' in text
    assert text.count("CREATE TABLE items") == len(fleet)
    assert text.count("ALTER TABLE items ADD CONSTRAINT uq_items_name UNIQUE (name)") == len(fleet)
    # Per shard files, and nothing ran.
    cfg = fleet_config(**opts(**only(fleet), sql_dir=str(tmp_path)))
    command.upgrade(cfg, "base:f002", sql=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{s}.sql" for s in settings.shards)
    for t, shard in fleet.items():
        assert not states(settings, shard, [t])[t].exists
    # A revision that reads from the database cannot be rendered: a clear error.
    with pytest.raises(CommandError, match="cannot render the SQL offline"):
        command.upgrade(fleet_config(**opts(**only(fleet))), "f002:f003", sql=True)


def test_failure_rolls_back_one_tenant_others_finish_and_rerun_completes(fleet, settings):
    command.upgrade(fleet_config(**opts(**only(fleet))), "f001")
    bad = sorted(fleet)[0]
    bad_shard = fleet[bad]
    shard_sql(settings, bad_shard, f"INSERT INTO {bad}.items VALUES ('dup'), ('dup')")
    cfg = fleet_config(**opts(**only(fleet)))
    with pytest.raises(CommandError) as err:
        command.upgrade(cfg, "head")
    message = str(err.value)
    assert f"{bad_shard}/{bad}:" in message
    assert "could not create unique index" in message
    result = cfg.attributes["ppp.result"]
    assert result.count("failed") == 1 and result.count("migrated") == len(fleet) - 1
    assert states(settings, bad_shard, [bad])[bad].revision == "f001"  # rolled back entirely
    constraint = shard_sql(
        settings,
        bad_shard,
        "SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
        "WHERE n.nspname = %s AND c.conname = 'uq_items_name'",
        (bad,),
    )
    assert constraint == [(0,)]
    for t, shard in fleet.items():
        if t != bad:
            assert states(settings, shard, [t])[t].revision == "f003"
    # Fix the data; the rerun does only what is left.
    shard_sql(settings, bad_shard, f"DELETE FROM {bad}.items")
    cfg = fleet_config(**opts(**only(fleet)))
    command.upgrade(cfg, "head")
    result = cfg.attributes["ppp.result"]
    assert result.count("migrated") == 1 and result.count("current") == len(fleet) - 1
    assert states(settings, bad_shard, [bad])[bad].revision == "f003"


def test_fail_fast_stops_at_the_first_failure(fleet, settings):
    command.upgrade(fleet_config(**opts(**only(fleet))), "f001")
    for t, shard in fleet.items():
        shard_sql(settings, shard, f"INSERT INTO {t}.items VALUES ('dup'), ('dup')")
    cfg = fleet_config(**opts(**only(fleet), fail_fast=True, jobs=1))
    with pytest.raises(CommandError):
        command.upgrade(cfg, "head")
    result = cfg.attributes["ppp.result"]
    assert result.count("failed") == 1
    assert result.count("not_run") == len(fleet) - 1


def _alembic_process(args, env):
    script = "import sys; from alembic.config import main; main(argv=sys.argv[1:], prog='alembic')"
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_concurrent_runs_never_migrate_a_tenant_twice(fleet, settings, tmp_path):
    ini = tmp_path / "fleet.ini"
    ini.write_text(
        f"[alembic]\nscript_location = {FLEET_SCRIPTS}\nprepend_sys_path = {ROOT}\n"
        "path_separator = os\n"
    )
    env = dict(os.environ)
    args = [
        "-c",
        str(ini),
        "-x",
        f"tenant={','.join(sorted(fleet))}",
        "-x",
        "output=plain",
        "-x",
        "refresh=false",
        "upgrade",
        "head",
    ]
    procs = [_alembic_process(args, env) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    for t, shard in fleet.items():
        assert states(settings, shard, [t])[t].revision == "f003"
        assert shard_sql(settings, shard, f"SELECT count(*) FROM {t}.runs") == [(1,)]
    migrated = sum(
        int(o.split(" migrated")[0].rsplit(" ", 1)[-1])
        for o in outputs
        for o in [line for line in o.splitlines() if line.startswith("upgrade:")]
    )
    assert migrated == len(fleet)


def test_lock_skip_reports_a_tenant_another_run_holds(fleet, settings):
    victim = sorted(fleet)[0]
    with db.connection(settings.shard(fleet[victim]), "admin") as conn:
        cur = conn.cursor()
        cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (0x505050, victim))
        cfg = fleet_config(**opts(**only(fleet), lock="skip"))
        with pytest.raises(CommandError, match=f"{victim}: tenant {victim} is being migrated"):
            command.upgrade(cfg, "head")
        conn.rollback()
    result = cfg.attributes["ppp.result"]
    assert result.count("locked") == 1 and result.count("migrated") == len(fleet) - 1


def test_unreachable_shard_is_reported_and_others_finish(fleet, topology, settings):
    if topology.servers is None:
        pytest.skip("needs local servers to stop one")
    port = settings.shard("initech").port
    topology.servers.stop("initech")
    try:
        cfg = fleet_config(**opts(**only(fleet)))
        with pytest.raises(CommandError) as err:
            command.upgrade(cfg, "head")
    finally:
        topology.servers.start("initech", port)
    message = str(err.value)
    assert (
        "shard initech: unreachable: cannot connect at postgresql+psycopg2://initech_admin:***@"
        in message
    )
    assert settings.shard("initech").admin_password not in message
    for t, shard in fleet.items():
        if shard != "initech":
            assert states(settings, shard, [t])[t].revision == "f003"


def test_autogenerate_compares_with_a_template_tenant(fleet, settings, tmp_path):
    template = sorted(fleet)[0]
    command.upgrade(fleet_config(**opts(tenants=[template])), "head")
    scripts = tmp_path / "scripts"
    import shutil

    shutil.copytree(FLEET_SCRIPTS, scripts)
    cfg = fleet_config(scripts, **opts(template=template, tenants=[template]))
    command.revision(cfg, message="add colour", autogenerate=True, rev_id="f004")
    (generated,) = (scripts / "versions").glob("f004_*.py")
    text = generated.read_text()
    assert "op.add_column('items', sa.Column('colour', sa.Text()" in text
    assert "alembic_version" not in text
    assert "drop_table" not in text.split("def downgrade")[0]


def test_example_migrations_reach_the_veneer(veneer_head, settings):
    """The project's own migrations: authors with Ernest in every example tenant."""
    cfg = alembic_config(**opts())
    command.upgrade(cfg, "head")
    for shard in ("bluth_co", "cyberdyne", "initech"):
        rows = shard_sql(
            settings,
            shard,
            f"SELECT first_name, last_name FROM {shard}.authors WHERE first_name = 'Ernest'",
            role="app",
        )
        assert rows == [("Ernest", "Hemingway")]
    with db.connection(settings.veneer, "app") as conn, conn.cursor() as cur:
        for schema in ("bluth_co", "cyberdyne", "initech"):
            cur.execute(f"SELECT last_name FROM {schema}.authors WHERE first_name = 'Ernest'")
            assert cur.fetchall() == [("Hemingway",)]


def test_veneer_sees_a_new_column_after_the_run(fleet, settings):
    command.upgrade(fleet_config(**opts(**only(fleet))), "f002")
    tenant = sorted(fleet)[0]
    with db.connection(settings.veneer, "app") as conn, conn.cursor() as cur:
        cur.execute(f"SELECT name FROM {tenant}.items")
        with pytest.raises(Exception, match="price"):
            cur.execute(f"SELECT price FROM {tenant}.items")
    command.upgrade(fleet_config(**opts(**only(fleet))), "head")
    with db.connection(settings.veneer, "app") as conn, conn.cursor() as cur:
        cur.execute(f"SELECT price FROM {tenant}.items")
        assert cur.fetchall() == []


def test_version_index_follows_every_change_and_falls_back_without_its_trigger(fleet, settings):
    command.upgrade(fleet_config(**opts(**only(fleet))), "head")
    tenant = sorted(fleet)[0]
    shard = fleet[tenant]
    index = f"SELECT heads FROM ppp.tenant_versions WHERE schema_name = '{tenant}'"
    assert shard_sql(settings, shard, index) == [(["f003"],)]
    # A change made outside PPP still reaches the index (statement trigger).
    shard_sql(settings, shard, f"UPDATE {tenant}.alembic_version SET version_num = 'f002'")
    assert shard_sql(settings, shard, index) == [(["f002"],)]
    assert states(settings, shard, [tenant])[tenant].revision == "f002"
    # The application role can touch neither the version table nor the index.
    with pytest.raises(Exception, match="permission denied"):
        shard_sql(settings, shard, f"DELETE FROM {tenant}.alembic_version", role="app")
    with pytest.raises(Exception, match="permission denied"):
        shard_sql(settings, shard, "UPDATE ppp.tenant_versions SET heads = '{}'", role="app")
    # Without the trigger the state comes from the version table itself ...
    shard_sql(settings, shard, f"DROP TRIGGER ppp_track_version ON {tenant}.alembic_version")
    shard_sql(settings, shard, f"UPDATE {tenant}.alembic_version SET version_num = 'f003'")
    st = states(settings, shard, [tenant])[tenant]
    assert (st.revision, st.tracked) == ("f003", False)
    # ... and the next run puts the trigger back.
    cfg = fleet_config(**opts(**only(fleet)))
    command.upgrade(cfg, "head")
    assert cfg.attributes["ppp.result"].count("current") == len(fleet)
    st = states(settings, shard, [tenant])[tenant]
    assert (st.revision, st.tracked) == ("f003", True)


def test_history_and_history_indicate_current(fleet, settings):
    template = sorted(fleet)[0]
    command.upgrade(fleet_config(**opts(tenants=[template])), "f002")
    cfg = fleet_config(**opts(template=template, tenants=[template]))
    command.history(cfg)
    lines = cfg.stdout.getvalue().splitlines()
    assert lines == [
        "f002 -> f003 (head), items.price, set from a value read from the database "
        "(so it must run online)",
        "f001 -> f002, items.name unique: fails for a tenant whose data has duplicates",
        "<base> -> f001, items, and a row per run (a tenant migrated twice would "
        "fail on CREATE TABLE)",
    ]
    cfg = fleet_config(**opts(template=template, tenants=[template]))
    command.history(cfg, indicate_current=True)
    assert "f001 -> f002 (current)" in cfg.stdout.getvalue()


def test_shard_lost_mid_fleet_is_reported_and_a_rerun_finishes(veneer_head, settings):
    import threading
    import time

    tenants = {f"ft_lost_{i:02d}": "initech" for i in range(30)}
    register(settings, tenants)
    inst = settings.shard("initech")

    def terminate_ppp_sessions() -> None:
        """Once the first tenant is committed, cut the runner's session (bounded wait)."""
        deadline = time.monotonic() + 20
        with db.connection(inst, "superuser", dbname=inst.dbname, autocommit=True) as conn:
            cur = conn.cursor()
            while time.monotonic() < deadline:
                cur.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'ft\\_lost\\_%%'")
                if cur.fetchone()[0] > 0:
                    cur.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = 'ppp' AND datname = %s "
                        "AND pid <> pg_backend_pid()",
                        (inst.dbname,),
                    )
                    return
                time.sleep(0.01)

    try:
        killer = threading.Thread(target=terminate_ppp_sessions)
        killer.start()
        cfg = fleet_config(**opts(tenants=sorted(tenants), refresh=False))
        with pytest.raises(CommandError) as err:
            command.upgrade(cfg, "head")
        killer.join()
        message = str(err.value)
        assert "shard initech: connection to postgresql+psycopg2://initech_admin:***@" in message
        assert inst.admin_password not in message
        result = cfg.attributes["ppp.result"]
        done = result.count("migrated")
        assert 0 < done < len(tenants)
        assert result.count("not_run") + result.count("failed") == len(tenants) - done
        # Nothing half-done: every tenant is at base or at head, and a rerun finishes.
        revisions = {st.revision for st in states(settings, "initech", sorted(tenants)).values()}
        assert revisions <= {None, "f003"}
        cfg = fleet_config(**opts(tenants=sorted(tenants), refresh=False))
        command.upgrade(cfg, "head")
        assert cfg.attributes["ppp.result"].count("migrated") == len(tenants) - done
    finally:
        unregister(settings, tenants)
        drop_schemas(settings, tenants)


TENANT_AWARE = '''"""a row naming the tenant (tenant-specific: runs online, per tenant)"""

import sqlalchemy as sa
from alembic import op

from ppp_env.fleet.hooks import current_tenant

revision = "f004"
down_revision = "f003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("marks", sa.Column("tenant", sa.Text))
    op.execute(sa.text("INSERT INTO marks VALUES (:t)").bindparams(t=current_tenant()))


def downgrade() -> None:
    op.drop_table("marks")
'''


def test_a_revision_that_needs_the_tenant_runs_per_tenant(fleet, settings, tmp_path):
    import shutil

    scripts = tmp_path / "scripts"
    shutil.copytree(FLEET_SCRIPTS, scripts)
    (scripts / "versions" / "f004_marks.py").write_text(TENANT_AWARE)
    cfg = fleet_config(scripts, **opts(**only(fleet)))
    command.upgrade(cfg, "f003:f004", sql=True)
    text = cfg.output_buffer.getvalue()
    for t in fleet:
        assert f"INSERT INTO marks VALUES ('{t}')" in text
    command.upgrade(fleet_config(scripts, **opts(**only(fleet))), "head")
    for t, shard in fleet.items():
        assert shard_sql(settings, shard, f"SELECT tenant FROM {t}.marks") == [(t,)]
        assert states(settings, shard, [t])[t].revision == "f004"
