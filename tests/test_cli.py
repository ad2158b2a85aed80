"""The `ppp` command line in-process (CliRunner): exit codes and exact lines; psql for real."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from ppp_env.cli.main import cli
from ppp_env.db import connection

ROOT = Path(__file__).resolve().parent.parent
PPP = Path(sys.executable).with_name("ppp")


def ppp(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


def commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, click.Command]]:
    found = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # loads the lazily imported ones too
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        found.append((" ".join((*path, name)), cmd))
        if isinstance(cmd, click.Group):
            found.extend(commands(cmd, (*path, name)))
    return found


def test_every_command_has_help() -> None:
    result = ppp("--help")
    assert result.exit_code == 0, result.output
    for name in ("local", "init", "teardown", "psql", "logs", "settings", "migrate"):
        assert f"  {name} " in result.stdout
    for path, cmd in commands(cli):
        assert (cmd.help or "").strip(), f"`ppp {path}` has no help text"
        result = ppp(*path.split(), "--help")
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("Usage: ")


def test_local_commands_offer_the_backends() -> None:
    for sub in ("up", "down", "status"):
        out = ppp("local", sub, "--help").stdout
        assert "--backend [auto|local|docker]" in out


@pytest.fixture
def topo_env(topology) -> dict[str, str | None]:
    return dict(topology.environ)


def run_psql(env: dict[str, str | None], *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("PPP_")}
    full.update({k: v for k, v in env.items() if v is not None})
    return subprocess.run(
        [str(PPP), "psql", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.parametrize(
    ("instance", "extra", "expected"),
    [
        ("bluth_co", [], "bluth_co_app|bluth_co|bluth_co,public"),
        ("initech", [], "initech_app|initech|initech,public"),
        ("veneer", [], 'veneer_app|veneer|"$user", public'),
        ("cyberdyne", ["--role", "admin"], "cyberdyne_admin|cyberdyne|cyberdyne,public"),
        ("initech", ["--tenant", "acme"], "initech_app|initech|acme,public"),
    ],
)
def test_psql_opens_as_the_app_role_with_the_tenant_search_path(
    topo_env: dict[str, str | None], instance: str, extra: list[str], expected: str
) -> None:
    sql = "SELECT current_user, current_database(), current_setting('search_path')"
    res = run_psql(topo_env, instance, *extra, "-At", "-c", sql)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == expected
    for key, value in topo_env.items():
        if key.endswith("PASSWORD") and value:
            assert value not in res.stdout + res.stderr


def test_psql_tenant_must_be_a_valid_name_on_a_shard(topo_env: dict[str, str | None]) -> None:
    result = ppp("psql", "initech", "--tenant", "Acme", env=topo_env)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: invalid tenant schema name 'Acme'")
    result = ppp("psql", "veneer", "--tenant", "acme", env=topo_env)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: --tenant applies to a shard")


def test_psql_unknown_instance(topo_env: dict[str, str | None]) -> None:
    result = ppp("psql", "nope", env=topo_env)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: unknown instance 'nope': expected one of veneer, bluth_co, cyberdyne, initech"
    ]


def test_logs_show_the_statements_an_instance_ran(topology, topo_env) -> None:
    if topology.servers is None:
        pytest.skip("local backend only")
    env = {**topo_env, "PPP_LOCAL_DIR": str(topology.servers.base_dir), "PPP_BACKEND": None}
    marker = f"ppp-marker-{secrets.token_hex(4)}"
    with connection(topology.settings.shard("cyberdyne"), "app") as conn, conn.cursor() as cur:
        cur.execute("SELECT %s", (marker,))
    result = ppp("logs", "cyberdyne", env=env)
    assert result.exit_code == 0, result.output
    assert any(
        marker in line and "cyberdyne_app@cyberdyne" in line for line in result.stdout.splitlines()
    )
    assert marker not in ppp("logs", "bluth_co", env=env).stdout
    tail = ppp("logs", "cyberdyne", "-n", "3", env=env).stdout.splitlines()
    assert len(tail) == 3


def test_logs_errors(topology, topo_env, tmp_path: Path) -> None:
    env = {**topo_env, "PPP_LOCAL_DIR": str(tmp_path / "empty"), "PPP_BACKEND": None}
    result = ppp("logs", "nope", env=env)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: unknown instance 'nope': expected one of veneer, bluth_co, cyberdyne, initech"
    ]
    result = ppp("logs", "initech", env=env)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Error: no local server log for 'initech' under {tmp_path / 'empty'}: start the servers "
        "with `ppp local up` (with Docker: `ppp logs --backend docker initech`)"
    ]
    result = ppp("logs", "initech", env={**env, "PPP_BACKEND": "podman"})
    assert result.stderr.splitlines() == [
        "Error: PPP_BACKEND='podman' is not valid: expected local or docker"
    ]


def test_settings_command_masks_every_password(topo_env: dict[str, str | None]) -> None:
    result = ppp("settings", env=topo_env)
    assert result.exit_code == 0, result.output
    assert result.stdout.count(":***@") == 8
    for key, value in topo_env.items():
        if key.endswith("PASSWORD") and value:
            assert value not in result.output


# -- exit codes of the real console scripts (the README's table) --------------------------------
def console_script(name: str) -> str:
    """A console script installed next to this interpreter (the venv's bin folder)."""
    path = Path(sys.executable).parent / name
    assert path.is_file(), f"{name} is not installed next to {sys.executable}"
    return str(path)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["ppp", "--version"], 0, ""),
        (["ppp", "settings"], 1, "Error: PPP_SHARDS is not set: "),
        (["ppp", "tenant", "add", "acme\n", "--shard", "a"], 1, "Error: PPP_SHARDS is not set"),
        (["ppp", "no-such-command"], 2, "Usage: ppp [OPTIONS] COMMAND [ARGS]..."),
        (["ppp", "veneer", "downgrade"], 2, "Usage: ppp veneer downgrade"),
        (["alembic", "-n", "veneer", "heads"], 0, ""),
        (["alembic", "-n", "veneer", "upgrade", "head"], 255, "FAILED: PPP_SHARDS is not set: "),
        (["alembic", "upgrade", "head"], 255, "FAILED: PPP_SHARDS is not set: "),
        (["alembic", "--no-such-option"], 2, "usage: alembic"),
    ],
)
def test_exit_codes_of_the_console_scripts(
    tmp_path: Path, argv: list[str], code: int, message: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PPP_", "ALEMBIC_"))}
    env.update(PPP_PROJECT_DIR=str(tmp_path), ALEMBIC_CONFIG=str(ROOT / "alembic.ini"))
    done = subprocess.run(
        [console_script(argv[0]), *argv[1:]],
        cwd=ROOT if argv[0] == "alembic" else tmp_path,  # alembic from the project folder
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == code, (done.stdout, done.stderr)
    if message:  # ppp writes its errors to stderr; Alembic prints `FAILED:` on stdout
        shown = (done.stderr if argv[0] == "ppp" else done.stdout + done.stderr).splitlines()
        assert any(line.startswith(message) for line in shown), done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written
