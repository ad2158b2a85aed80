"""Escalating lock waits against a real blocker: a tenant's first attempts wait for their
locks only briefly (so an application query queued behind a waiting statement waits about
that long), it retries with longer waits while the other tenants go on, and it finishes once
the blocker ends. Bad values of the first wait are clear errors that change nothing."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from alembic import command
from alembic.util import CommandError
from click.testing import CliRunner

from ppp_env import db
from ppp_env.cli.main import cli
from ppp_env.fleet.options import RunOptions
from tests.conftest import ROOT, fleet_config, only, opts, states

#: The first attempt's lock wait in these tests, doubled by each retry up to 2 s.
START = 0.2

WAITING = (
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ppp' "
    "AND wait_event_type = 'Lock'"
)


@dataclass
class Watch:
    """What a watcher saw while the migration ran: how long the migration's lock waits lasted,
    and how long an application query queued behind the first one took."""

    waits: list[float] = field(default_factory=list)
    app_query: float | None = None
    released: bool = False


def _watch(settings: Any, shard: str, tenant: str, reader: Any, seen: Watch) -> None:
    """Time the migration's first two lock waits (an application query sent during the first
    one), then end the reader that blocks it. Bounded: 30 s."""
    admin = db.connect(settings.shard(shard), "admin", autocommit=True)
    app = db.connect(settings.shard(shard), "app", autocommit=True)
    try:
        cur, since = admin.cursor(), None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(seen.waits) < 2:
            cur.execute(WAITING)
            waiting, now = cur.fetchone()[0] > 0, time.monotonic()
            if waiting and since is None:
                since = now
                if seen.app_query is None:  # queues behind the waiting ALTER
                    app.cursor().execute(f"SELECT count(*) FROM {tenant}.items")
                    seen.app_query = time.monotonic() - now
            elif not waiting and since is not None:
                seen.waits.append(now - since)
                since = None
            time.sleep(0.005)
    finally:
        reader.rollback()
        seen.released = True
        admin.close()
        app.close()


@pytest.mark.parametrize("target", ["f002", "head"], ids=["at-once", "careful"])
def test_short_waits_first_then_longer_until_the_blocker_ends(fleet, settings, capsys, target):
    """``f002`` alone is one rendered round trip (``migrate_at_once``); ``head`` includes a
    revision that runs online, so the tenant takes the careful path (``begin``)."""
    command.upgrade(fleet_config(**opts(**only(fleet))), "f001")
    victim = sorted(t for t, s in fleet.items() if s == "cyberdyne")[0]
    reader = db.connect(settings.shard("cyberdyne"), "app", application_name="test-reader")
    reader.cursor().execute(f"SELECT count(*) FROM {victim}.items")
    seen = Watch()
    watcher = threading.Thread(
        target=_watch, args=(settings, "cyberdyne", victim, reader, seen), daemon=True
    )
    watcher.start()
    try:
        options = RunOptions(**only(fleet), lock_timeout_start=START, output="plain", verbose=True)
        cfg = fleet_config(**{"ppp.options": options})
        command.upgrade(cfg, target)
    finally:
        watcher.join(timeout=60)
        reader.close()
    assert seen.released and len(seen.waits) == 2, seen
    # The server gave up after the first step (0.2 s), then the second (0.4 s): far below the
    # full timeout (2 s) each time. Loose bounds: the machine is shared.
    assert seen.waits[0] < 1.0 and seen.waits[1] < 1.5, seen
    # The application query waited for the ALTER's first step at most, not the 2 s.
    assert seen.app_query is not None and seen.app_query < 1.0, seen
    result = cfg.attributes["ppp.result"]
    by_name = {t.tenant: t for t in result.tenants}
    assert by_name[victim].status == "migrated" and by_name[victim].attempts >= 3
    assert all(t.attempts == 1 for n, t in by_name.items() if n != victim)
    revision = "f003" if target == "head" else "f002"
    for t, shard in fleet.items():
        assert states(settings, shard, [t])[t].revision == revision
    out = capsys.readouterr().out
    assert f"retry cyberdyne/{victim}: attempt 1 hit the lock timeout (lock_timeout 0.2 s: " in out
    assert f"retry cyberdyne/{victim}: attempt 2 hit the lock timeout (lock_timeout 0.4 s: " in out


def test_a_tenant_is_given_up_only_after_a_wait_at_the_full_timeout(fleet, settings):
    """0 retries asked, but the waits escalate 0.1, 0.2, 0.4 s: the tenant gets all three
    attempts, the message says which waits it had and who blocked it."""
    command.upgrade(fleet_config(**opts(**only(fleet))), "f001")
    victim = sorted(t for t, s in fleet.items() if s == "initech")[0]
    reader = db.connect(settings.shard("initech"), "app", application_name="test-reader")
    reader.cursor().execute(f"SELECT count(*) FROM {victim}.items")
    x = {"lock_timeout": 0.4, "lock_timeout_start": 0.1, "retries": 0}
    try:
        cfg = fleet_config(**opts(**only(fleet), **x))
        with pytest.raises(CommandError) as err:
            command.upgrade(cfg, "f002")
    finally:
        reader.close()
    assert (
        f"initech/{victim}: could not get its locks in 3 attempt(s) (lock_timeout 0.1 s "
        "doubling to 0.4 s, 1 attempt(s) at 0.4 s): blocked by pid "
    ) in str(err.value)
    (locked,) = [t for t in cfg.attributes["ppp.result"].tenants if t.status == "locked"]
    assert (locked.tenant, locked.attempts) == (victim, 3)
    assert states(settings, "initech", [victim])[victim].revision == "f001"


def test_a_bad_first_wait_option_is_a_clear_error_that_changes_nothing(fleet, settings):
    cfg = fleet_config(**opts(**only(fleet)))
    cfg.cmd_opts = type("O", (), {"x": ["lock_timeout_start=0"]})()
    with pytest.raises(
        CommandError,
        match=r"-x lock_timeout_start='0': expected a number of seconds \(0.001-86400\)",
    ):
        command.upgrade(cfg, "head")
    for t, shard in fleet.items():
        assert not states(settings, shard, [t])[t].exists


@pytest.mark.parametrize("value", ["0", "soon", "-0.5"])
def test_a_bad_first_wait_setting_is_one_error_line_and_nothing_runs(
    fleet, settings, tmp_path, value
):
    ini = tmp_path / "fleet.ini"
    ini.write_text(
        f"[alembic]\nscript_location = {fleet_config().get_main_option('script_location')}\n"
        f"prepend_sys_path = {ROOT}\npath_separator = os\n"
    )
    result = CliRunner().invoke(
        cli,
        ["migrate", "-c", str(ini), "--tenant", ",".join(sorted(fleet))],
        env={"PPP_MIGRATION_LOCK_TIMEOUT_START": value},
    )
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[-1] == (
        f"Error: PPP_MIGRATION_LOCK_TIMEOUT_START={value!r} is not valid: expected seconds, "
        "at least 0.001, the first attempt's lock wait"
    )
    for t, shard in fleet.items():
        assert not states(settings, shard, [t])[t].exists
