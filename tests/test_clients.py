"""ppp_env.servers.clients: which pg_dump/psql/pg_restore PPP runs against an instance (in its
container, or local programs at least as new as its server), and how the password travels."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from ppp_env import db
from ppp_env.errors import PPPError
from ppp_env.lifecycle.move import check_versions
from ppp_env.servers import clients
from ppp_env.servers.compose import docker_problem
from ppp_env.settings import Instance
from tests.client_programs import (
    assert_one_sentence,
    fake_client_programs,
    secrets_of,
    without_containers,
)


def shard(container: str = "", name: str = "bluth_co") -> Instance:
    return Instance(
        name=name,
        kind="shard",
        host="127.0.0.1",
        port=5999,
        dbname=name,
        admin_password="adm-secret-1",
        app_password="app-secret-2",
        superuser_password="su-secret-3",
        env_prefix=f"PPP_SHARD_{name.upper()}_",
        container=container,
    )


SECRETS = ("adm-secret-1", "app-secret-2", "su-secret-3")


def test_versions() -> None:
    assert clients.parse_version("pg_dump (PostgreSQL) 17.12 (Debian 17.12-0+deb13u1)") == 170012
    assert clients.parse_version("psql (PostgreSQL) 15.18") == 150018
    assert clients.parse_version("pg_dump (PostgreSQL) 9.6.0") == 90600
    assert clients.parse_version("pg_dump (PostgreSQL) 18beta1") == 180000
    assert clients.parse_version("no version here") is None
    assert clients.major(170012) == 170000 and clients.major(90624) == 90600
    assert clients.major(90624) < clients.major(150000)
    assert (clients.show(170012), clients.show(170012, full=False)) == ("17.12", "17")
    assert (clients.show(90624), clients.show(90624, full=False)) == ("9.6.24", "9.6")


def layout(tmp_path: Path, versions: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Versioned folders ``<tmp>/postgresql/<major>/bin`` of fake programs; an environment
    whose PATH holds none of this machine's."""
    for major, version in versions.items():
        fake_client_programs(tmp_path / "postgresql" / major / "bin", version)
    empty = tmp_path / "empty"
    empty.mkdir()
    return str(tmp_path / "postgresql" / "*" / "bin"), {"PATH": str(empty)}


def test_the_newest_local_programs_that_fit(tmp_path: Path) -> None:
    pattern, env = layout(tmp_path, {"9.6": "9.6.24", "15": "15.4", "17": "17.2"})
    assert [p.parent.name for p in clients.local_bindirs(env, [pattern])] == ["17", "15", "9.6"]
    for server in (150003, 170002, 90600):
        found = clients.client_for(shard(), server, environ=env, patterns=[pattern])
        assert found.bindir == tmp_path / "postgresql" / "17" / "bin" and found.version == 170002
    # PPP_PG_BINDIR is the only place looked at when set: an explicit choice
    pinned = {**env, "PPP_PG_BINDIR": str(tmp_path / "postgresql" / "15" / "bin")}
    assert clients.client_for(shard(), 150018, environ=pinned, patterns=[pattern]).version == 150004
    with pytest.raises(PPPError) as caught:
        clients.client_for(shard(), 170002, environ=pinned, patterns=[pattern])
    message = str(caught.value)
    assert message.startswith(
        "no pg_dump/psql/pg_restore in PPP_PG_BINDIR can work with shard 'bluth_co' "
        "(PostgreSQL 17.2): found 15.4 in "
    )
    assert_one_sentence(message, SECRETS)


def test_nothing_fits_names_the_versions_and_what_to_install(tmp_path: Path) -> None:
    pattern, env = layout(tmp_path, {"13": "13.9", "15": "15.18"})
    with pytest.raises(PPPError) as caught:
        clients.client_for(shard(), 170012, environ=env, patterns=[pattern])
    message = str(caught.value)
    bindir = tmp_path / "postgresql"
    assert message == (
        "no pg_dump/psql/pg_restore in this machine can work with shard 'bluth_co' (PostgreSQL "
        f"17.12): found 15.18 in {bindir}/15/bin, 13.9 in {bindir}/13/bin; install "
        "postgresql-client-17 (or newer) and set PPP_PG_BINDIR to its bin folder, or set "
        "PPP_SHARD_BLUTH_CO_CONTAINER to the Docker container that runs that server"
    )
    assert_one_sentence(message, SECRETS)
    with pytest.raises(PPPError, match="found none; install postgresql-client-15"):
        clients.client_for(shard(), 150000, environ=env, patterns=[str(tmp_path / "none")])
    # a folder without every program does not count
    (bindir / "15" / "bin" / "pg_restore").unlink()
    assert [p.parent.name for p in clients.local_bindirs(env, [pattern])] == ["13"]


def test_the_password_is_never_on_a_command_line() -> None:
    inside = clients.Client(shard("pg-box"), 170012, container="pg-box")
    argv = inside.command("pg_dump", "-n", "acme")
    assert argv[1:3] == ["exec", "-i"] and "pg-box" in argv
    assert argv[argv.index("pg-box") + 1 :] == [
        "pg_dump", "-h", "127.0.0.1", "-p", "5432", "-U", "bluth_co_admin", "-d", "bluth_co",
        "-n", "acme",
    ]  # fmt: skip
    assert argv[argv.index("PGPASSWORD") - 1 : argv.index("PGPASSWORD") + 1] == ["-e", "PGPASSWORD"]
    assert inside.environment()["PGPASSWORD"] == "adm-secret-1"
    here = clients.Client(shard(), 170012, bindir=Path("/opt/pg/bin"))
    assert here.command("psql", "-X") == [
        "/opt/pg/bin/psql", "-h", "127.0.0.1", "-p", "5999", "-U", "bluth_co_admin",
        "-d", "bluth_co", "-X",
    ]  # fmt: skip
    assert here.command("pg_restore", "--list", connect=False) == [
        "/opt/pg/bin/pg_restore",
        "--list",
    ]
    for argv in (inside.command("psql"), here.command("psql")):
        assert not any(secret in arg for arg in argv for secret in SECRETS)


def test_a_dump_never_goes_to_an_older_major_version() -> None:
    src, dst = shard(name="bluth_co"), shard(name="initech")
    check_versions("acme", src, dst, 150018, 170012)  # older to newer: fine
    check_versions("acme", src, dst, 170002, 170012)
    with pytest.raises(PPPError) as caught:
        check_versions("acme", src, dst, 170012, 150018)
    assert str(caught.value) == (
        "cannot move 'acme' from shard 'bluth_co' (PostgreSQL 17.12) to shard 'initech' "
        "(PostgreSQL 15.18): a dump of a newer major version is not guaranteed to load into an "
        "older one, so move it to a shard of PostgreSQL 17 or later"
    )
    assert_one_sentence(str(caught.value), SECRETS)


def test_a_container_that_is_not_there() -> None:
    problem = docker_problem()
    if problem:
        pytest.skip(f"needs a Docker engine: {problem}")
    inst = shard("ppp-test-no-such-container")
    with pytest.raises(PPPError) as caught:
        clients.client_for(inst, 150000)
    message = str(caught.value)
    assert message.startswith(
        "cannot run pg_dump in container 'ppp-test-no-such-container' "
        "(PPP_SHARD_BLUTH_CO_CONTAINER): "
    )
    assert_one_sentence(message, SECRETS)


# -- against the session's servers ----------------------------------------------------------------
def test_each_shard_gets_programs_that_fit_its_server(topology) -> None:
    """In the server's container when it has one (docker backend), else local programs; a
    running program's command line (what ps shows) holds no password."""
    settings = topology.settings
    for inst in settings.shards.values():
        with db.connection(inst, "admin", autocommit=True) as conn:
            server = clients.server_version(conn.cursor())
        client = clients.for_instance(inst)
        assert clients.major(client.version) >= clients.major(server)
        assert (client.container, client.bindir is None) == (
            (inst.container, True) if inst.container else ("", False)
        )
        running = client.start("psql", "-X", "-At", "-c", "SELECT pg_sleep(0.3), current_user")
        cmdline = _exec_cmdline(running.pid)
        out, err = running.communicate(timeout=30)
        assert running.returncode == 0, err
        assert out.decode().strip() == f"|{inst.admin_role}"
        assert not any(secret in arg for arg in cmdline for secret in secrets_of(settings))


def test_local_programs_too_old_for_the_server(topology, tmp_path, monkeypatch) -> None:
    old = fake_client_programs(tmp_path / "bin")
    monkeypatch.setenv("PPP_PG_BINDIR", str(old))
    local = without_containers(topology)
    inst = local.shard("initech")
    with pytest.raises(PPPError) as caught:
        clients.for_instance(inst)
    message = str(caught.value)
    assert message.startswith(
        "no pg_dump/psql/pg_restore in PPP_PG_BINDIR can work with shard 'initech' (PostgreSQL "
    )
    assert f"found 9.6.0 in {old}; install postgresql-client-" in message
    assert_one_sentence(message, secrets_of(local))


def _exec_cmdline(pid: int) -> list[str]:
    """The command line of ``pid`` once it runs the client (not this interpreter's fork)."""
    deadline = time.monotonic() + 10
    while True:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        if sys.executable not in args[0] or time.monotonic() > deadline:
            return args
        time.sleep(0.005)
