"""Pacing a fleet run by replica lag (PPP_MAX_REPLICA_LAG), against a real streaming replica.

The replica is a ``pg_basebackup -R`` copy of shard bluth_co (tests/replica.py), started for
this module on the local backend; its replay is paused (``pg_wal_replay_pause()``) so that
its lag grows while a run goes on, then resumed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
import time
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.util import CommandError
from click.testing import CliRunner
from rich.console import Console

from ppp_env import db
from ppp_env.cli.main import cli
from ppp_env.fleet.options import OPTIONS_KEY, RunOptions
from ppp_env.fleet.pacing import LagClock, pacer_for
from ppp_env.fleet.progress import PlainDisplay, RichDisplay
from ppp_env.fleet.results import FleetResult, Pause
from ppp_env.servers.local import free_port
from ppp_env.settings import load_settings
from tests.conftest import (
    FLEET_SCRIPTS,
    ROOT,
    Topology,
    drop_schemas,
    fleet_config,
    opts,
    register,
    shard_sql,
    states,
    unregister,
)
from tests.replica import Replica, start_replica

SHARD = "bluth_co"
P = "PPP_SHARD_BLUTH_CO_"
#: PPP_MAX_REPLICA_LAG of the runs against the paused replica: well under the time the first
#: tenant's migration takes (f003 updates its 300k rows), so the shard waits after it at the
#: latest (a listed replica's lag counts from the run's first check; a discovered one's
#: replay_lag may make it wait before the first tenant already).
LIMIT = 0.2


@pytest.fixture(scope="module")
def replica(topology: Topology) -> Iterator[Replica]:
    if topology.servers is None:
        pytest.skip(
            "a streaming replica is started for the local backend only (PPP_TEST_BACKEND=local);"
            " the docker backend would need a replica container"
        )
    rep = start_replica(topology.workdir, topology.settings.shard(SHARD))
    try:
        yield rep
    finally:
        rep.stop()


@pytest.fixture
def tenants(veneer_head: Topology, request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Four tenants of shard bluth_co, registered for the test and removed afterwards."""
    settings = veneer_head.settings
    name = request.node.name.replace("test_", "")[:12]
    mine = {f"rp_{name}_{i}": SHARD for i in range(4)}
    register(settings, mine)
    yield sorted(mine)
    unregister(settings, mine)
    drop_schemas(settings, mine)


def revisions(settings, tenants: list[str]) -> list[str | None]:
    found = states(settings, SHARD, tenants)
    return [found[t].revision for t in tenants]


def run(tenants: list[str], target: str = "head", output: str = "quiet") -> FleetResult:
    """Migrate ``tenants`` one after the other (one worker): the run's result, even failed."""
    options = RunOptions(output=output, tenants=tenants, jobs=1)
    cfg = fleet_config(**{OPTIONS_KEY: options})
    with contextlib.suppress(CommandError):  # a failed run: its result says why
        command.upgrade(cfg, target)
    return cfg.attributes["ppp.result"]


def polling(settings) -> bool:
    """Whether the run's worker is between tenants, its last query a lag reading."""
    found = shard_sql(
        settings,
        SHARD,
        "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
        "AND application_name = 'ppp' AND state = 'idle' "
        "AND query ~ 'pg_current_wal_flush_lsn|pg_stat_replication'",
        role="superuser",
    )
    return bool(found and found[0][0])


def lagging_run(settings, replica: Replica, tenants: list[str]) -> tuple[FleetResult, list]:
    """Tenants at f002, the first with 300k rows that f003 updates, written after the
    replica's replay was paused: the run waits until replay is resumed."""
    run(tenants, "f002")
    replica.wait_caught_up()
    replica.sql("SELECT pg_wal_replay_pause()")
    shard_sql(
        settings,
        SHARD,
        f"INSERT INTO {tenants[0]}.items SELECT 'n' || g FROM generate_series(1, 300000) g",
    )
    seen: list[list[str | None]] = []

    def watch() -> None:
        """Two looks 1.5 s apart while the worker polls the replicas: nothing moved."""
        deadline = time.monotonic() + 60
        while not seen and time.monotonic() < deadline:
            before = revisions(settings, tenants)
            if polling(settings):
                time.sleep(1.5)
                after = revisions(settings, tenants)
                if polling(settings) and after == before:
                    seen.extend([before, after])
            time.sleep(0.1)
        replica.sql("SELECT pg_wal_replay_resume()")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = run(tenants, output="plain")
    finally:
        watcher.join()
        replica.sql("SELECT pg_wal_replay_resume()")
    return result, seen


def assert_paused_then_finished(settings, tenants, result, seen, replica_name) -> None:
    # The run waited: while its worker polled the replicas nothing moved for 1.5 s, and not
    # every tenant was done.
    assert len(seen) == 2 and "f002" in seen[0]
    assert result.ok, result.failure_message()
    assert revisions(settings, tenants) == ["f003"] * 4
    first = max(result.pauses, key=lambda p: p.seconds)
    assert first.shard == SHARD and replica_name in first.replica
    assert first.lag is not None and first.lag > LIMIT and first.seconds > 1.5
    assert "pause(s) for replicas" in result.summary()
    (shown,) = [p for p in result.to_json()["pauses"] if p["seconds"] == first.seconds]
    assert shown["shard"] == SHARD and shown["replica"] == first.replica
    assert shown["lag"] == first.lag


def test_a_lagging_listed_replica_pauses_the_shard_until_it_replays(
    replica, tenants, settings, monkeypatch, capsys
):
    monkeypatch.setenv("PPP_MAX_REPLICA_LAG", str(LIMIT))
    monkeypatch.setenv(f"{P}REPLICA_URLS", replica.url())  # the admin role's password
    result, seen = lagging_run(settings, replica, tenants)
    masked = f"postgresql://bluth_co_admin:***@127.0.0.1:{replica.port}/bluth_co"
    assert_paused_then_finished(settings, tenants, result, seen, masked)
    out = capsys.readouterr().out
    assert f"shard bluth_co: waiting for replica lag ({masked}: " in out
    longest = max(result.pauses, key=lambda p: p.seconds)
    assert f"{longest.line()}\n" in out
    assert f"paused {longest.seconds:.1f} s for replica lag ({masked}: " in out
    assert "pause(s) for replicas" in out
    secret = settings.shard(SHARD).admin_password
    assert secret not in str(result.to_json()) and secret not in out


def test_a_lagging_discovered_replica_pauses_the_shard(replica, tenants, settings, monkeypatch):
    """No REPLICA_URLS: the primary's pg_stat_replication, which the admin role reads through
    pg_read_all_stats (granted by `ppp init`)."""
    monkeypatch.setenv("PPP_MAX_REPLICA_LAG", str(LIMIT))
    result, seen = lagging_run(settings, replica, tenants)
    assert_paused_then_finished(settings, tenants, result, seen, "walreceiver at 127.0.0.1")


def test_discovery_without_pg_read_all_stats_says_so_and_runs_nothing(
    tenants, settings, monkeypatch
):
    monkeypatch.setenv("PPP_MAX_REPLICA_LAG", "1")
    grant = "pg_read_all_stats {} bluth_co_admin"
    shard_sql(settings, SHARD, "REVOKE " + grant.format("FROM"), role="superuser")
    try:
        result = run(tenants)
    finally:
        shard_sql(settings, SHARD, "GRANT " + grant.format("TO"), role="superuser")
    assert "GRANT pg_read_all_stats (or pg_monitor) TO bluth_co_admin" in result.shard_errors[SHARD]
    assert f"{P}REPLICA_URLS" in result.shard_errors[SHARD]
    assert result.count("not_run") == 4 and revisions(settings, tenants) == [None] * 4


def closed_url() -> str:
    return f"postgresql://127.0.0.1:{free_port()}"


def test_an_unreachable_replica_holds_the_shard_until_the_wait_timeout(
    tenants, settings, monkeypatch
):
    url = closed_url()
    monkeypatch.setenv("PPP_MAX_REPLICA_LAG", "0.5")
    monkeypatch.setenv("PPP_REPLICA_WAIT_TIMEOUT", "1.5")
    monkeypatch.setenv(f"{P}REPLICA_URLS", url)
    started = time.monotonic()
    result = run(tenants)
    assert time.monotonic() - started < 20
    error = result.shard_errors[SHARD]
    assert "unreachable" in error and "PPP_REPLICA_WAIT_TIMEOUT=1.5 s" in error
    assert "bluth_co_admin:***@127.0.0.1" in error
    assert settings.shard(SHARD).admin_password not in error
    (pause,) = result.pauses
    assert pause.lag is None and pause.seconds >= 1.5 and "refused" in pause.error
    assert result.count("not_run") == 4 and revisions(settings, tenants) == [None] * 4


def test_an_unreachable_replica_is_given_up_with_a_warning_when_told_to_proceed(
    tenants, settings, monkeypatch
):
    monkeypatch.setenv("PPP_MAX_REPLICA_LAG", "0.5")
    monkeypatch.setenv("PPP_REPLICA_UNREACHABLE", "proceed")
    monkeypatch.setenv(f"{P}REPLICA_URLS", closed_url())
    result = run(tenants)
    assert result.ok, result.failure_message()
    assert revisions(settings, tenants) == ["f003"] * 4
    (warning,) = result.warnings
    assert "bluth_co_admin:***@127.0.0.1" in warning and "going on without it" in warning
    (pause,) = result.pauses  # once: the replica is not waited for again in this run
    assert 0.5 <= pause.seconds < 5


def test_no_pacing_and_no_pacing_query_without_max_replica_lag(
    topology, tenants, settings, monkeypatch
):
    monkeypatch.delenv("PPP_MAX_REPLICA_LAG", raising=False)
    monkeypatch.setenv(f"{P}REPLICA_URLS", closed_url())  # would hold the shard if paced
    log = topology.servers.log_file(SHARD) if topology.servers else None
    size = log.stat().st_size if log else 0
    result = run(tenants)
    assert result.ok and not result.pauses and not result.warnings
    assert revisions(settings, tenants) == ["f003"] * 4
    if log:
        ran = log.read_bytes()[size:].decode(errors="replace")
        for query in ("pg_current_wal_flush_lsn", "pg_stat_get_wal_senders", "pg_stat_activity"):
            assert query not in ran


@pytest.mark.parametrize(
    ("var", "value", "expects"),
    [
        ("PPP_MAX_REPLICA_LAG", "soon", "PPP_MAX_REPLICA_LAG='soon' is not valid"),
        ("PPP_MAX_REPLICA_LAG", "-1", "PPP_MAX_REPLICA_LAG='-1' is not valid"),
        ("PPP_MAX_REPLICA_LAG", "nan", "PPP_MAX_REPLICA_LAG='nan' is not valid"),
        ("PPP_REPLICA_UNREACHABLE", "maybe", "expected wait or proceed"),
        ("PPP_REPLICA_WAIT_TIMEOUT", "long", "PPP_REPLICA_WAIT_TIMEOUT='long' is not valid"),
        (f"{P}REPLICA_URLS", "mysql://u:s3cret@db", f"{P}REPLICA_URLS: URL 1 is not valid"),
        (f"{P}REPLICA_URLS", "postgresql://h:1,postgresql://u:s3cret@", "URL 2 is not valid"),
        (f"{P}REPLICA_URLS", "postgresql://u:s3cret@h:port", "URL 1 is not valid"),
    ],
)
def test_a_bad_setting_is_named_and_nothing_runs(
    tenants, settings, monkeypatch, var, value, expects
):
    monkeypatch.setenv(var, value)
    cfg = fleet_config(**opts(tenants=tenants))
    with pytest.raises(CommandError) as caught:  # FAILED: ... from alembic
        command.upgrade(cfg, "head")
    assert expects in str(caught.value) and "s3cret" not in str(caught.value)
    assert revisions(settings, tenants) == [None] * 4


def test_replica_urls_take_the_shards_role_password_and_database_unless_given(topology):
    env = topology.variant(**{f"{P}REPLICA_URLS": "postgresql://r1, postgres://me:pw@r2:6/x"})
    shard = load_settings(environ=env).shard(SHARD)
    first, second = shard.replicas
    assert (first.username, first.host, first.port, first.database) == (
        "bluth_co_admin",
        "r1",
        5432,
        "bluth_co",
    )
    assert first.password == shard.admin_password
    assert (second.username, second.password, second.port, second.database) == (
        "me",
        "pw",
        6,
        "x",
    )
    assert "pw" not in repr(shard)
    plain = load_settings(environ=topology.variant())
    assert plain.max_replica_lag == 0 and plain.replica_unreachable == "wait"
    assert plain.replica_wait_timeout == 600 and plain.shard(SHARD).replicas == ()


def test_lag_counts_from_the_first_position_a_replica_has_not_replayed() -> None:
    lags = LagClock()
    lags.sample(10.0, 100)
    lags.sample(11.0, 100)  # no new WAL: no new sample
    lags.sample(12.0, 200)
    assert lags.lag(13.0, 50) == 3.0
    assert lags.lag(13.0, 100) == 1.0
    assert lags.lag(13.0, 200) == 0.0
    lags.forget(100)
    assert list(lags.samples) == [(12.0, 200)]


def test_pauses_are_printed_and_in_the_json() -> None:
    out = io.StringIO()
    display = PlainDisplay(out)
    pause = Pause(SHARD, 3.24, "postgresql://u:***@r:5432/bluth_co", 12.1, 5.0)
    display.shard_pausing(pause)
    display.shard_paused(pause)
    display.warning("shard bluth_co: replica x unreachable")
    assert out.getvalue().splitlines() == [
        "shard bluth_co: waiting for replica lag (postgresql://u:***@r:5432/bluth_co: "
        "12.1 s > 5 s)",
        "shard bluth_co: paused 3.2 s for replica lag (postgresql://u:***@r:5432/bluth_co: "
        "12.1 s > 5 s)",
        "WARNING shard bluth_co: replica x unreachable",
    ]
    result = FleetResult("upgrade", pauses=[pause], warnings=["w"])
    assert result.to_json()["pauses"] == [
        {
            "shard": SHARD,
            "seconds": 3.24,
            "replica": "postgresql://u:***@r:5432/bluth_co",
            "lag": 12.1,
            "limit": 5.0,
            "error": "",
        }
    ]
    assert result.to_json()["warnings"] == ["w"]
    gone = Pause(SHARD, 1.0, "postgresql://u:***@r:1/b", None, 5.0, "connection refused")
    assert gone.line() == (
        "shard bluth_co: paused 1.0 s for an unreachable replica "
        "(postgresql://u:***@r:1/b: connection refused)"
    )


def test_a_pause_ends_at_once_when_the_run_stops(settings, monkeypatch):
    """Ctrl-C or --fail-fast set the run's stop event: a waiting shard stops waiting."""
    monkeypatch.setenv("PPP_MAX_REPLICA_LAG", "0.5")
    monkeypatch.setenv(f"{P}REPLICA_URLS", closed_url())
    paced = load_settings()
    events: list[tuple] = []
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    with db.connection(paced.shard(SHARD), autocommit=True) as conn:
        pacer = pacer_for(paced, SHARD, conn.cursor())
        started = time.monotonic()
        assert pacer.wait(events.append, stop) is False
    assert time.monotonic() - started < 2.0
    kinds = [e[0] for e in events]
    assert kinds == ["pausing", "paused"] and events[1][2].seconds >= 0.5
    assert pacer_for(
        load_settings(environ={**os.environ, "PPP_MAX_REPLICA_LAG": "0"}), SHARD, None
    ).wait(events.append, stop)  # no pacing: no cursor needed, nothing queried


def test_the_rich_display_notes_a_waiting_shard() -> None:
    console = Console(file=io.StringIO(), width=200)
    display = RichDisplay(console)
    pause = Pause(SHARD, 3.24, "walreceiver at 10.0.0.7 (pid 42)", 12.1, 5.0)
    with display:
        display.shard_started(SHARD, 4, 4)
        display.shard_pausing(pause)
        assert display.progress.tasks[0].fields["note"] == "[yellow]waiting for replicas"
        display.shard_paused(pause)
        assert display.progress.tasks[0].fields["note"] == ""
    assert pause.line() in console.file.getvalue()


def test_ppp_migrate_json_carries_the_pauses_and_warnings(tenants, settings, monkeypatch, tmp_path):
    monkeypatch.setenv("PPP_MAX_REPLICA_LAG", "0.3")
    monkeypatch.setenv("PPP_REPLICA_UNREACHABLE", "proceed")
    monkeypatch.setenv(f"{P}REPLICA_URLS", closed_url())
    ini = tmp_path / "fleet.ini"
    ini.write_text(
        f"[alembic]\nscript_location = {FLEET_SCRIPTS}\nprepend_sys_path = {ROOT}\n"
        f"path_separator = os\n\n[veneer]\nscript_location = {ROOT / 'veneer_migrations'}\n"
        f"prepend_sys_path = {ROOT}\npath_separator = os\n"
    )
    args = ["migrate", "-c", str(ini), "--tenant", ",".join(tenants), "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    (pause,) = report["pauses"]
    assert pause["shard"] == SHARD and pause["lag"] is None and pause["seconds"] >= 0.3
    assert pause["replica"].startswith("postgresql://bluth_co_admin:***@127.0.0.1:")
    (warning,) = report["warnings"]
    assert pause["replica"] in warning and "going on without it" in warning
    assert settings.shard(SHARD).admin_password not in result.stdout
    assert revisions(settings, tenants) == ["f003"] * 4


def test_ppp_settings_lists_a_shards_replicas_masked(settings, monkeypatch):
    urls = "postgresql://reader:s3cret@10.0.0.7/bluth_co,postgresql://10.0.0.8:5433"
    monkeypatch.setenv(f"{P}REPLICA_URLS", urls)
    result = CliRunner().invoke(cli, ["settings"])
    assert result.exit_code == 0, result.output
    assert (
        "replicas of bluth_co: postgresql://reader:***@10.0.0.7:5432/bluth_co, "
        "postgresql://bluth_co_admin:***@10.0.0.8:5433/bluth_co"
    ) in result.output
    assert "s3cret" not in result.output
