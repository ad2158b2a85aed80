"""How the fleet runner walks a tenant's path: rendered revisions, online ones, and faults.

A path mixes revisions that can be rendered offline with revisions that read from the
database or need the tenant: only the latter run online, and the run says which and why,
once. Errors name the revision; a killed parent takes its workers with it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic import command
from alembic.util import CommandError

from ppp_env import db
from tests.conftest import (
    FLEET_SCRIPTS,
    ROOT,
    drop_schemas,
    fleet_config,
    only,
    opts,
    register,
    shard_sql,
    states,
    unregister,
)

REVISION = '''"""{doc}"""

import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
{up}


def downgrade() -> None:
{down_body}
'''


def write_revision(scripts: Path, rev: str, down: str, doc: str, up: str, down_body: str) -> None:
    (scripts / "versions" / f"{rev}.py").write_text(
        REVISION.format(rev=rev, down=down, doc=doc, up=up, down_body=down_body)
    )


@pytest.fixture
def scripts(tmp_path):
    """A private copy of the fleet chain (f001 table, f002 unique, f003 reads data) plus
    f004 (renderable), f005 (uses the default schema), f006 (inspects: reads the database),
    f007 (renderable, with a '%' in its SQL)."""
    dest = tmp_path / "scripts"
    shutil.copytree(FLEET_SCRIPTS, dest, ignore=shutil.ignore_patterns("__pycache__"))
    write_revision(
        dest,
        "f004",
        "f003",
        "seen table",
        '    op.create_table("seen", sa.Column("schema", sa.Text), sa.Column("rev", sa.Text))',
        '    op.drop_table("seen")',
    )
    write_revision(
        dest,
        "f005",
        "f004",
        "record the default schema",
        "    name = op.get_bind().dialect.default_schema_name\n"
        "    op.execute(f\"INSERT INTO seen VALUES ('{name}', 'f005')\")",
        "    op.execute(\"DELETE FROM seen WHERE rev = 'f005'\")",
    )
    write_revision(
        dest,
        "f006",
        "f005",
        "inspect the tenant",
        "    bind = op.get_bind()\n"
        "    inspected = sa.inspect(bind).default_schema_name\n"
        "    tables = sorted(sa.inspect(bind).get_table_names())\n"
        "    op.execute(\n"
        '        sa.text("INSERT INTO seen VALUES (:b, :r), (:c, :r)").bindparams(\n'
        '            b=inspected, c=",".join(tables), r="f006"\n'
        "        )\n"
        "    )",
        "    op.execute(\"DELETE FROM seen WHERE rev = 'f006'\")",
    )
    write_revision(
        dest,
        "f007",
        "f006",
        "a late column",
        '    op.add_column("seen", sa.Column("note", sa.Text))\n'
        '    op.execute("UPDATE items SET price = (price + 9) % 7")',
        '    op.drop_column("seen", "note")',
    )
    return dest


def test_only_unrenderable_revisions_run_online_and_the_run_says_which(fleet, settings, scripts):
    cfg = fleet_config(scripts, **opts(**only(fleet)))
    command.upgrade(cfg, "head")
    result = cfg.attributes["ppp.result"]
    assert result.count("migrated") == len(fleet)
    # Reported once per run, not once per tenant: the two online revisions and why.
    assert sorted(result.online) == [
        "revision f003 (items.price, set from a value read from the database (so it must run "
        "online))",
        "revision f005 (record the default schema)",
        "revision f006 (inspect the tenant)",
    ]
    assert "reads from the database" in result.online[sorted(result.online)[0]]
    assert "default schema" in result.online["revision f005 (record the default schema)"]
    assert "reads from the database" in result.online["revision f006 (inspect the tenant)"]
    assert result.to_json()["online"][0]["revision"].startswith("revision f003")
    for t, shard in fleet.items():
        assert states(settings, shard, [t])[t].revision == "f007"
        # f005 and f006 ran online for this tenant and saw the tenant as the default schema,
        # in the dialect, in the inspector, and in reflection without a schema.
        rows = shard_sql(settings, shard, f"SELECT schema FROM {t}.seen ORDER BY 1")
        assert sorted(r[0] for r in rows) == sorted([t, t, "alembic_version,items,runs,seen"])


def test_plain_output_lists_online_revisions_once(fleet, settings, scripts, capsys):
    cfg = fleet_config(scripts, **{"ppp.options": opts(**only(fleet))["ppp.options"]})
    cfg.attributes["ppp.options"].output = "plain"
    command.upgrade(cfg, "head")
    out = capsys.readouterr().out
    assert out.count("ran online: revision f003") == 1
    assert out.count("ran online: revision f005") == 1
    assert out.count("ran online: revision f006") == 1
    for shard in settings.shards:
        assert f"shard {shard}: done (2 tenants: 2 migrated)" in out


def test_errors_name_the_revision(fleet, settings, scripts):
    command.upgrade(fleet_config(scripts, **opts(**only(fleet))), "f001")
    bad = sorted(fleet)[0]
    shard_sql(settings, fleet[bad], f"INSERT INTO {bad}.items VALUES ('dup'), ('dup')")
    cfg = fleet_config(scripts, **opts(**only(fleet)))
    with pytest.raises(CommandError) as err:
        command.upgrade(cfg, "head")
    # A rendered step: replayed step by step to name it.
    assert (
        f"{fleet[bad]}/{bad}: revision f002 (items.name unique: fails for a tenant whose data "
        'has duplicates): UniqueViolation: could not create unique index "uq_items_name"'
    ) in str(err.value)
    assert states(settings, fleet[bad], [bad])[bad].revision == "f001"
    # An online step names itself too.
    shard_sql(settings, fleet[bad], f"DELETE FROM {bad}.items")
    shard_sql(settings, fleet[bad], f"ALTER TABLE {bad}.items ADD COLUMN price int")
    with pytest.raises(CommandError) as err:
        command.upgrade(fleet_config(scripts, **opts(tenants=[bad])), "head")
    assert f"{fleet[bad]}/{bad}: revision f003 (items.price, set from a value read" in str(
        err.value
    )
    assert "): DuplicateColumn: " in str(err.value)
    assert states(settings, fleet[bad], [bad])[bad].revision == "f001"


def test_a_failure_after_online_revisions_is_named_without_running_them_again(
    fleet, settings, tmp_path, monkeypatch
):
    """g004 runs online (it reads) and appends a line per run of its code; g005 and g006
    render as one stretch, and g006 fails for one tenant. The error names g006 from the
    stretch itself: g004's code is not run again to find it (once per tenant, plus at most
    once while rendering learns it cannot be rendered)."""
    dest = tmp_path / "scripts"
    shutil.copytree(FLEET_SCRIPTS, dest, ignore=shutil.ignore_patterns("__pycache__"))
    effects = tmp_path / "effects.txt"
    monkeypatch.setenv("PPP_TEST_EFFECTS", str(effects))
    write_revision(
        dest,
        "g004",
        "f003",
        "online, with an effect",
        "    import os\n"
        "    schema = op.get_bind().dialect.default_schema_name\n"
        '    with open(os.environ["PPP_TEST_EFFECTS"], "a") as out:\n'
        '        out.write(f"{schema}\\n")\n'
        '    op.get_bind().execute(sa.text("SELECT count(*) FROM items")).scalar()',
        "    pass",
    )
    write_revision(
        dest, "g005", "g004", "a table", '    op.create_table("g5", sa.Column("x", sa.Integer))',
        '    op.drop_table("g5")',
    )  # fmt: skip
    write_revision(
        dest, "g006", "g005", "prices unique",
        '    op.create_index("uq_price", "items", ["price"], unique=True)',
        '    op.drop_index("uq_price", table_name="items")',
    )  # fmt: skip
    command.upgrade(fleet_config(dest, **opts(**only(fleet))), "f003")
    bad = sorted(fleet)[0]
    shard_sql(settings, fleet[bad], f"INSERT INTO {bad}.items VALUES ('a', 1), ('b', 1)")
    effects.write_text("")
    with pytest.raises(CommandError) as err:
        command.upgrade(fleet_config(dest, **opts(**only(fleet))), "head")
    assert f"{fleet[bad]}/{bad}: revision g006 (prices unique): UniqueViolation" in str(err.value)
    lines = effects.read_text().splitlines()
    assert sorted(x for x in lines if x in fleet) == sorted(fleet)  # once per tenant
    assert len(lines) <= len(fleet) + 1, lines
    assert states(settings, fleet[bad], [bad])[bad].revision == "f003"
    good = sorted(fleet)[1]
    assert states(settings, fleet[good], [good])[good].revision == "g006"


def test_downgrade_base_then_upgrade_head_on_the_rendered_path(fleet, settings, scripts):
    command.upgrade(fleet_config(scripts, **opts(**only(fleet))), "head")
    command.downgrade(fleet_config(scripts, **opts(**only(fleet))), "base")
    for t, shard in fleet.items():
        st = states(settings, shard, [t])[t]
        assert st.revision is None and st.has_version_table  # Alembic keeps the empty table
    cfg = fleet_config(scripts, **opts(**only(fleet)))
    command.upgrade(cfg, "f002")  # rendered from base: the empty version table is replaced
    assert cfg.attributes["ppp.result"].count("migrated") == len(fleet)
    command.upgrade(fleet_config(scripts, **opts(**only(fleet))), "head")
    for t, shard in fleet.items():
        st = states(settings, shard, [t])[t]
        assert st.revision == "f007" and st.tracked  # the index trigger is back too
        # and the app role still cannot touch the version table
        with pytest.raises(Exception, match="permission denied"):
            shard_sql(settings, shard, f"DELETE FROM {t}.alembic_version", role="app")


def test_sql_names_the_revision_and_the_real_reason(fleet, settings, scripts):
    with pytest.raises(CommandError, match=r"revision f003 \(items.price.*reads from the database"):
        command.upgrade(fleet_config(scripts, **opts(**only(fleet))), "f002:f004", sql=True)
    with pytest.raises(CommandError, match="Can't locate revision identified by 'nosuch'"):
        command.upgrade(fleet_config(scripts, **opts(**only(fleet))), "f001:nosuch", sql=True)
    # The default schema needs the tenant: rendered per tenant, with its name.
    cfg = fleet_config(scripts, **opts(**only(fleet)))
    command.upgrade(cfg, "f004:f005", sql=True)
    text = cfg.output_buffer.getvalue()
    for t in fleet:
        assert f"('{t}', 'f005')" in text
    for t, shard in fleet.items():
        assert not states(settings, shard, [t])[t].exists  # nothing ran


# -- processes ----------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def _alembic(tmp_path: Path, tenants: list[str]) -> subprocess.Popen[str]:
    ini = tmp_path / "fleet.ini"
    ini.write_text(
        f"[alembic]\nscript_location = {FLEET_SCRIPTS}\nprepend_sys_path = {ROOT}\n"
        "path_separator = os\n"
    )
    exe = Path(sys.executable).parent / "alembic"
    env = dict(os.environ, PPP_LOCK_TIMEOUT="60")
    return subprocess.Popen(
        [
            str(exe), "-c", str(ini), "-x", f"tenant={','.join(tenants)}",
            "-x", "output=plain", "-x", "refresh=false", "upgrade", "head",
        ],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _hold_lock(settings, shard: str, tenant: str):
    conn = db.connect(settings.shard(shard), "admin")
    conn.cursor().execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (0x505050, tenant))
    return conn


def _waiting_for_lock(settings, shard: str) -> bool:
    rows = shard_sql(
        settings,
        shard,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ppp' "
        "AND wait_event_type = 'Lock'",
    )
    return rows[0][0] > 0


def test_killing_the_parent_takes_its_workers_and_rolls_back(fleet, settings, tmp_path):
    victim = sorted(t for t, s in fleet.items() if s == "bluth_co")[0]
    holder = _hold_lock(settings, "bluth_co", victim)
    proc = _alembic(tmp_path, sorted(fleet))
    try:
        _wait(lambda: _waiting_for_lock(settings, "bluth_co"), 30, "a worker blocked on the lock")
        workers = _children(proc.pid)
        assert workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        _wait(lambda: not any(_alive(w) for w in workers), 10, "the workers to exit")
        _wait(lambda: not _waiting_for_lock(settings, "bluth_co"), 10, "the session to end")
    finally:
        holder.close()
        if proc.poll() is None:
            proc.kill()
        if proc.stdout:
            proc.stdout.close()
    assert states(settings, "bluth_co", [victim])[victim].revision is None  # rolled back


def test_a_worker_killed_by_a_signal_is_named_and_a_rerun_finishes(fleet, settings, tmp_path):
    victim = sorted(t for t, s in fleet.items() if s == "bluth_co")[0]
    holder = _hold_lock(settings, "bluth_co", victim)
    proc = _alembic(tmp_path, sorted(fleet))
    try:
        _wait(lambda: _waiting_for_lock(settings, "bluth_co"), 30, "a worker blocked on the lock")
        pid = shard_sql(
            settings,
            "bluth_co",
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'ppp' "
            "AND wait_event_type = 'Lock'",
        )[0][0]
        # The worker is the client of that backend: the parent's child that is not idle.
        assert pid
        worker = next(w for w in _children(proc.pid) if _talks_to(w, settings, "bluth_co"))
        os.kill(worker, signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    finally:
        holder.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "FAILED shard bluth_co: its worker process was killed by SIGKILL" in out
    assert "shard(s) unreachable" not in out
    assert "1 shard(s) failed" in out
    command.upgrade(fleet_config(**opts(**only(fleet))), "head")
    for t, shard in fleet.items():
        assert states(settings, shard, [t])[t].revision == "f003"


def _talks_to(pid: int, settings, shard: str) -> bool:
    """Whether process ``pid`` has a TCP connection to the shard's port."""
    port = settings.shard(shard).port
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError:
        return False
    sockets = {i[8:-1] for i in inodes if i.startswith("socket:[")}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in sockets and int(fields[2].split(":")[1], 16) == port:
            return True
    return False


def test_a_lost_shard_logs_no_traceback_and_says_stopped(veneer_head, settings, tmp_path):
    tenants = {f"ft_gone_{i:02d}": "initech" for i in range(20)}
    register(settings, tenants)
    victim = sorted(tenants)[5]
    holder = _hold_lock(settings, "initech", victim)
    proc = _alembic(tmp_path, sorted(tenants))
    try:
        _wait(lambda: _waiting_for_lock(settings, "initech"), 30, "the worker to reach the lock")
        shard_sql(
            settings,
            "initech",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'ppp' AND wait_event_type = 'Lock'",
        )
        out, _ = proc.communicate(timeout=60)
        holder.close()
        assert proc.returncode != 0
        assert "Traceback" not in out and "Exception during reset" not in out, out
        assert "shard initech: stopped (20 tenants: 5 migrated, 1 failed, 14 not run)" in out
        assert "FAILED shard initech: connection to" in out
    finally:
        if proc.poll() is None:
            proc.kill()
        holder.close()
        unregister(settings, tenants)
        drop_schemas(settings, tenants)
