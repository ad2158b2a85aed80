"""`ppp local up|down|status`: real throwaway servers in a private folder, twice each.

Every test here has its own base folder under /tmp (mode 755, so the ``postgres`` OS user
can reach it when we run as root) and its own project folder with its own .env; the
session's topology and the developer's servers are never touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from click.testing import CliRunner, Result
from dotenv import dotenv_values

from ppp_env.cli.main import cli
from ppp_env.db import connection
from ppp_env.errors import PPPError
from ppp_env.servers.local import EXAMPLE_SHARDS, LocalServers, find_bindir, port_is_free
from ppp_env.settings import Settings, load_settings

INSTANCES = ["veneer", *EXAMPLE_SHARDS]


class Workdir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.project = root / "project"
        self.servers = root / "servers"
        self.project.mkdir()

    @property
    def env(self) -> dict[str, str]:
        return {"PPP_PROJECT_DIR": str(self.project), "PPP_LOCAL_DIR": str(self.servers)}

    def ppp(self, *args: str) -> Result:
        return CliRunner().invoke(cli, list(args), env=self.env)

    def settings(self) -> Settings:
        return load_settings(environ={"PPP_PROJECT_DIR": str(self.project)})

    def dotenv(self) -> str:
        return (self.project / ".env").read_text()


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> Iterator[Workdir]:
    for key in list(os.environ):
        if key.startswith("PPP_"):
            monkeypatch.delenv(key)
    root = Path(tempfile.mkdtemp(prefix="ppp-test-local-"))
    root.chmod(0o755)
    w = Workdir(root)
    try:
        yield w
    finally:
        if w.servers.is_dir():
            with contextlib.suppress(PPPError):
                LocalServers(w.servers).down(purge=True)
        shutil.rmtree(root, ignore_errors=True)


def lines(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def pid_alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def test_up_down_status_twice_each(work: Workdir) -> None:
    out = lines(work.ppp("local", "status"))
    assert out == [f"no local servers under {work.servers}; run `ppp local up`"]

    # up: four servers, settings in .env (private), reachable as the superuser.
    out = lines(work.ppp("local", "up", "--backend", "local"))
    assert [line.split(":")[0] for line in out[:4]] == INSTANCES
    assert all(": started on 127.0.0.1:" in line for line in out[:4]), out
    assert out[4] == f"settings written to {work.project / '.env'}"
    assert (work.project / ".env").stat().st_mode & 0o777 == 0o600
    first_env = work.dotenv()
    assert "PPP_BACKEND=local" in first_env
    settings = work.settings()
    assert list(settings.shards) == list(EXAMPLE_SHARDS)
    ports = {i.name: i.port for i in settings.instances}
    assert len(set(ports.values())) == 4
    for inst in settings.instances:
        with connection(inst, "superuser") as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT current_setting('log_statement'), current_setting('listen_addresses'), "
                "current_setting('server_version_num')::int"
            )
            assert cur.fetchone()[:2] == ("all", "127.0.0.1")
        # TCP asks for the password (scram-sha-256), it does not trust.
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(
                host=inst.host, port=inst.port, user="postgres", password="wrong", dbname="postgres"
            )

    # up again: harmless, same ports, same passwords, same file.
    out = lines(work.ppp("local", "up"))
    for name in INSTANCES:
        assert f"{name}: already running on 127.0.0.1:{ports[name]} (" in "\n".join(out)
    assert work.dotenv() == first_env

    # status twice: all running, with a live pid.
    pids: dict[str, int] = {}
    for _ in range(2):
        out = lines(work.ppp("local", "status"))
        for name in INSTANCES:
            row = next(line for line in out if re.search(rf"\b{name}\b", line))
            assert "running" in row and f"127.0.0.1:{ports[name]}" in row
            pids[name] = int(re.search(rf"{ports[name]}\D+(\d+)", row).group(1))
    assert all(pid_alive(pid) for pid in pids.values())

    # down: no process, no port left; the second down has nothing to stop.
    out = lines(work.ppp("local", "down"))
    assert sorted(out) == sorted(f"{name}: stopped" for name in INSTANCES)
    for name in INSTANCES:
        assert not pid_alive(pids[name])
        assert not listening(ports[name])
        assert port_is_free(ports[name])
    out = lines(work.ppp("local", "down"))
    assert sorted(out) == sorted(f"{name}: was not running" for name in INSTANCES)

    # status twice after down: stopped, data kept.
    for _ in range(2):
        out = lines(work.ppp("local", "status"))
        for name in INSTANCES:
            row = next(line for line in out if re.search(rf"\b{name}\b", line))
            assert "stopped" in row

    # up after down: same ports and passwords, data still there.
    out = lines(work.ppp("local", "up"))
    assert all(": started on 127.0.0.1:" in line for line in out[:4])
    assert work.dotenv() == first_env
    for inst in work.settings().instances:
        with connection(inst, "superuser") as conn:
            assert conn.server_version > 0

    # down --purge: data and folder gone.
    out = lines(work.ppp("local", "down", "--purge"))
    assert sorted(out) == sorted(f"{name}: stopped, data deleted" for name in INSTANCES)
    assert not work.servers.exists()
    for port in ports.values():
        assert not listening(port)


def test_lost_dotenv_and_other_backend_settings(work: Workdir) -> None:
    """Settings left by the Docker backend are replaced; a lost superuser password is reset."""
    (work.project / ".env").write_text(
        "# mine\nPPP_BACKEND=docker\nPPP_SHARD_SOLO_FDW_HOST=solo\nPPP_SHARD_SOLO_FDW_PORT=5432\n"
    )
    lines(work.ppp("local", "up", "--backend", "local", "--shards", "solo"))
    text = work.dotenv()
    assert text.startswith("# mine\nPPP_BACKEND=local\n")
    assert "FDW_" not in text
    solo = work.settings().shard("solo")
    assert (solo.fdw_host, solo.fdw_port) == (solo.host, solo.port)

    (work.project / ".env").unlink()
    if os.geteuid() != 0:
        result = work.ppp("local", "up", "--shards", "solo")
        assert result.exit_code == 1
        assert "its superuser password is not in the settings" in result.stderr
        return
    lines(work.ppp("local", "up", "--shards", "solo"))
    settings = work.settings()
    for inst in settings.instances:
        with connection(inst, "superuser") as conn:
            assert conn.server_version > 0
        # The new password never reaches the server's log.
        log = (work.servers / inst.name / "postgresql.log").read_text()
        assert inst.superuser_password and inst.superuser_password not in log
        assert "SCRAM-SHA-256$" not in log


def test_bad_shard_names_refused_before_anything_starts(work: Workdir) -> None:
    for arg, line in (
        (
            "a,A",
            "Error: --shards='a,A': invalid shard name 'A': use lower-case letters, digits and "
            "underscores, starting with a letter or underscore",
        ),
        ("a,a", "Error: --shards='a,a': shard 'a' is listed twice"),
        ("veneer", "Error: --shards='veneer': 'veneer' is the veneer, not a shard"),
    ):
        result = work.ppp("local", "up", "--backend", "local", "--shards", arg)
        assert result.exit_code == 1
        assert result.stderr.splitlines() == [line]
    assert not work.servers.exists()
    assert not (work.project / ".env").exists()


def test_find_bindir_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(PPPError) as info:
        find_bindir(
            {"PPP_PG_BINDIR": str(tmp_path), "PATH": str(tmp_path)}, patterns=["/nope/*/bin"]
        )
    message = str(info.value)
    assert message.startswith(
        "cannot find PostgreSQL server binaries (initdb, pg_ctl). Looked at: "
    )
    assert f"{tmp_path} (PPP_PG_BINDIR: no initdb/pg_ctl there)" in message
    assert "pg_config on PATH (not found)" in message
    assert "/nope/*/bin (nothing there)" in message
    assert "initdb on PATH (not found)" in message
    assert "apt-get install postgresql postgresql-contrib" in message
    assert "set PPP_PG_BINDIR" in message


def test_find_bindir_honours_the_setting() -> None:
    found = find_bindir()
    assert (found / "initdb").is_file() and (found / "pg_ctl").is_file()
    assert find_bindir({"PPP_PG_BINDIR": str(found)}) == found


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the servers as another user")
def test_private_parent_folder_is_explained(work: Workdir) -> None:
    private = work.root / "private"
    private.mkdir(mode=0o700)
    base = private / "servers"
    result = CliRunner().invoke(
        cli,
        ["local", "up", "--backend", "local", "--shards", "solo"],
        env={**work.env, "PPP_LOCAL_DIR": str(base)},
    )
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Error: the 'postgres' OS user, which runs the local servers, cannot reach {base}: "
        f"{private} is not searchable by others. Set PPP_LOCAL_DIR to a folder under "
        f"{tempfile.gettempdir()}, or `chmod o+x {private}`"
    ]


def test_up_records_the_local_dir_for_down_and_status(work: Workdir) -> None:
    """`up` with PPP_LOCAL_DIR; `status` and `down` without it find the same servers."""
    out = lines(work.ppp("local", "up", "--backend", "local", "--shards", "solo"))
    assert out[-1] == f"settings written to {work.project / '.env'}"
    assert dotenv_values(work.project / ".env")["PPP_LOCAL_DIR"] == str(work.servers.resolve())
    ports = {name: LocalServers(work.servers).status(name).port for name in ("veneer", "solo")}
    no_dir = {"PPP_PROJECT_DIR": str(work.project)}

    result = CliRunner().invoke(cli, ["local", "status"], env=no_dir)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("running") == 2 and str(work.servers) in result.stdout
    result = CliRunner().invoke(cli, ["logs", "solo", "-n", "1"], env=no_dir)
    assert result.exit_code == 0, result.output

    result = CliRunner().invoke(cli, ["local", "down"], env=no_dir)
    assert sorted(lines(result)) == ["solo: stopped", "veneer: stopped"]
    for port in ports.values():
        assert port is not None and not listening(port)
