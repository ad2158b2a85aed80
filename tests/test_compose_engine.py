"""docker-compose.yml and `ppp local up --backend docker` against a real Docker engine.

Skipped (with the reason) when no engine answers or the image is not on it: CI starts an
engine and builds the image (PPP_POSTGRES_IMAGE) before the suite. Every test runs its own
compose project in a temporary folder, on free host ports, and removes it with its volumes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ppp_env.compose_settings import (
    DEFAULT_IMAGE,
    DEVELOPMENT_PASSWORD,
    IMAGE_VARIABLE,
    SERVICES,
    service_prefix,
)
from ppp_env.docker import docker_problem, find_compose
from ppp_env.servers.local import free_port
from ppp_env.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
PPP = str(Path(sys.executable).with_name("ppp"))
PROJECT_FILES = (
    "docker-compose.yml",
    "alembic.ini",
    "migrations",
    "veneer_migrations",
    "shared_migrations",
)
IMAGE = os.environ.get(IMAGE_VARIABLE) or DEFAULT_IMAGE


def _engine_problem() -> str | None:
    problem = docker_problem()
    if problem is not None:
        return problem
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode:
        return f"the image {IMAGE} is not on the engine (set {IMAGE_VARIABLE})"
    if find_compose() is None:
        return "Docker Compose is not installed"
    return None


pytestmark = pytest.mark.skipif(
    bool(_engine_problem()), reason=f"needs a Docker engine: {_engine_problem()}"
)


class Project:
    """A project folder with the repository's compose file and migrations, on free ports."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "proj"
        self.dir.mkdir()
        for name in PROJECT_FILES:
            src = ROOT / name
            if src.is_dir():
                shutil.copytree(src, self.dir / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(src, self.dir / name)
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith("PPP_") or k == IMAGE_VARIABLE
        }
        self.env[IMAGE_VARIABLE] = IMAGE
        self.env["PPP_PROJECT_DIR"] = str(self.dir)
        for service in SERVICES:
            self.env[f"{service_prefix(service)}PORT"] = str(free_port())

    def run(self, *cmd: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(cmd),
            cwd=self.dir,
            env={**self.env, **extra},
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=600,
        )

    def ppp(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return self.run(PPP, *args, **extra)

    def compose(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        found = find_compose()
        assert found is not None
        return self.run(*found.command, *args, **extra)

    def edit_service(self, service: str, **changes: object) -> None:
        path = self.dir / "docker-compose.yml"
        spec = yaml.safe_load(path.read_text())
        spec["services"][service].update(changes)
        path.write_text(yaml.safe_dump(spec))


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    proj = Project(tmp_path)
    yield proj
    proj.compose("down", "--volumes", "--timeout", "1")
    # A v1 project (its containers carry the same labels) is removed the same way.
    if shutil.which("docker-compose"):
        proj.run("docker-compose", "down", "--volumes", "--timeout", "1")


def error_lines(res: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")]


def test_fresh_clone_compose_up_then_init_migrate_demo(project: Project) -> None:
    """`docker compose up -d` with no .env: the development defaults, said loudly."""
    up = project.compose("up", "-d", "--wait")
    assert up.returncode == 0, up.stderr
    assert not (project.dir / ".env").exists()
    for args in (["init"], ["migrate"], ["demo"]):
        res = project.ppp(*args)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "DEVELOPMENT DEFAULTS of docker-compose.yml" in res.stderr
        assert DEVELOPMENT_PASSWORD not in res.stdout + res.stderr
    assert "Hemingway" in res.stdout
    settings = load_settings(environ=project.env)
    assert settings.source == "DEVELOPMENT DEFAULTS of docker-compose.yml"
    assert settings.veneer.superuser_password == DEVELOPMENT_PASSWORD
    assert settings.shard("initech").container.endswith("initech-1")
    # Alembic itself finds the same settings.
    alembic = str(Path(sys.executable).with_name("alembic"))
    res = project.run(alembic, "-n", "veneer", "current")
    assert res.returncode == 0, res.stderr
    # `ppp local up` now keeps the passwords the volumes were made with, and says why.
    res = project.ppp("local", "up", "--backend", "docker")
    assert res.returncode == 0, res.stderr
    assert "DEVELOPMENT DEFAULTS" in res.stdout
    assert load_settings(environ=project.env).veneer.superuser_password == DEVELOPMENT_PASSWORD


def _check_up(project: Project, res: subprocess.CompletedProcess[str]) -> None:
    assert res.returncode == 0, res.stdout + res.stderr
    for service in SERVICES:
        port = project.env[f"{service_prefix(service)}PORT"]
        assert f"{service}: running in Docker on 127.0.0.1:{port}, running, healthy" in res.stdout
    settings = load_settings(environ=project.env)
    passwords = {i.superuser_password for i in settings.instances}
    assert DEVELOPMENT_PASSWORD not in passwords and len(passwords) == 4
    assert all(i.container for i in settings.instances)
    for password in passwords:
        assert str(password) not in res.stdout + res.stderr
    init = project.ppp("init")
    assert init.returncode == 0, init.stderr


def test_local_up_waits_for_every_service_and_writes_real_passwords(project: Project) -> None:
    _check_up(project, project.ppp("local", "up", "--backend", "docker"))
    again = project.ppp("local", "up", "--backend", "docker")  # idempotent, same passwords
    assert again.returncode == 0, again.stderr
    down = project.ppp("local", "down", "--purge")
    assert down.returncode == 0, down.stderr
    assert "data volumes deleted" in down.stdout


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="Compose v1 (docker-compose) not installed"
)
def test_compose_v1_without_wait_is_waited_for_by_ppp(project: Project, tmp_path: Path) -> None:
    """Compose v1 has no `up --wait`: PPP starts without it and waits itself."""
    no_plugins = tmp_path / "docker-config"
    no_plugins.mkdir()
    project.env["DOCKER_CONFIG"] = str(no_plugins)
    found = subprocess.run(
        ["docker-compose", "version", "--short"], capture_output=True, text=True, env=project.env
    )
    assert found.stdout.startswith("1."), found.stdout
    _check_up(project, project.ppp("local", "up", "--backend", "docker"))


def test_a_service_that_cannot_start_is_named_with_its_log(project: Project) -> None:
    project.edit_service(
        "initech", command=["postgres", "-c", "shared_buffers=not-a-size"], restart="no"
    )
    res = project.ppp("local", "up", "--backend", "docker")
    assert res.returncode == 1
    (line,) = error_lines(res)
    assert "service initech is exited" in line, line
    assert "shared_buffers" in line  # its last log lines
    assert "running in Docker" not in res.stdout


def test_a_taken_port_is_one_clear_error(project: Project) -> None:
    port = int(project.env["PPP_SHARD_CYBERDYNE_PORT"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        res = project.ppp("local", "up", "--backend", "docker")
    assert res.returncode == 1
    (line,) = error_lines(res)
    assert "a host port is taken" in line and str(port) in line, line
    assert "running in Docker" not in res.stdout


def test_an_image_that_does_not_exist(project: Project) -> None:
    res = project.ppp("local", "up", "--backend", "docker", PPP_POSTGRES_IMAGE="ppp-local/nope:1")
    assert res.returncode == 1
    (line,) = error_lines(res)
    assert "the image 'ppp-local/nope:1' (PPP_POSTGRES_IMAGE) is not on this Docker engine" in line
    assert "running in Docker" not in res.stdout


def test_volumes_made_without_env_are_not_reused_with_new_passwords(project: Project) -> None:
    assert project.compose("up", "-d", "--wait").returncode == 0
    assert project.compose("stop").returncode == 0  # volumes stay, containers stopped
    res = project.ppp("local", "up", "--backend", "docker")
    assert res.returncode == 1
    (line,) = error_lines(res)
    assert "already has data volumes" in line and "docker compose down -v" in line
    assert not (project.dir / ".env").exists()


def test_no_engine_answering(project: Project, tmp_path: Path) -> None:
    res = project.ppp(
        "local", "up", "--backend", "docker", DOCKER_HOST=f"unix://{tmp_path}/none.sock"
    )
    assert res.returncode == 1
    (line,) = error_lines(res)
    assert line.startswith("Error: Docker is not available: no Docker engine answers")
    assert not (project.dir / ".env").exists()
