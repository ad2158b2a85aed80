"""The Docker Compose stack (docker-compose.yml): veneer + the example's shards in containers.

``ppp local up --backend docker`` (or ``auto`` when a Docker engine answers) writes the
settings from :func:`compose_values` into ``.env`` and runs ``docker compose up -d --wait``
with them in the environment, so the compose file takes its host ports and passwords from
the same variables PPP reads. Containers publish their port on 127.0.0.1 only; the veneer
container reaches the shards on the compose network by service name on port 5432, which
the shards' ``FDW_HOST``/``FDW_PORT`` settings say.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from ppp_env.errors import PPPError
from ppp_env.settings import env_prefix

COMPOSE_FILE = "docker-compose.yml"
#: The instances docker-compose.yml defines, veneer first; service name = instance name.
SERVICES = ("veneer", "bluth_co", "cyberdyne", "initech")
#: Host ports: the veneer on 15432, the shards on the following ones, in SERVICES order.
FIRST_HOST_PORT = 15432
#: The port PostgreSQL listens on inside each container (and on the compose network).
CONTAINER_PORT = 5432
SUPERUSER = "postgres"
#: Settings that only make sense for the backend that wrote them (dropped when switching).
BACKEND_VARIABLE = "PPP_BACKEND"


def _which_docker() -> str | None:
    return shutil.which("docker")


def _run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float,
    capture: bool = True,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd),
        env=None if env is None else dict(env),
        capture_output=capture,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def docker_problem(timeout: float = 5.0) -> str | None:
    """Why Docker cannot be used here (no CLI, no engine answering), or None when it can."""
    docker = _which_docker()
    if docker is None:
        return "the docker command is not on PATH"
    try:
        res = _run([docker, "info", "--format", "{{.ServerVersion}}"], timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"`docker info` did not answer within {timeout:.0f} s"
    except OSError as exc:
        return f"cannot run docker: {exc}"
    if res.returncode != 0:
        lines = (res.stderr or res.stdout).strip().splitlines()
        return (
            "no Docker engine answers (`docker info`: " + (lines[-1] if lines else "failed") + ")"
        )
    return None


def docker_available(timeout: float = 5.0) -> bool:
    """True when the docker CLI is on PATH and ``docker info`` reaches an engine in time."""
    return docker_problem(timeout) is None


def compose_command(timeout: float = 10.0) -> list[str] | None:
    """``docker compose`` (the plugin) or the standalone ``docker-compose``; None if neither."""
    docker = _which_docker()
    if docker is not None:
        try:
            if _run([docker, "compose", "version"], timeout=timeout).returncode == 0:
                return [docker, "compose"]
        except (subprocess.TimeoutExpired, OSError):
            pass
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


def default_port(service: str) -> int:
    """The host port docker-compose.yml uses for ``service`` when no variable overrides it."""
    return FIRST_HOST_PORT + SERVICES.index(service)


def compose_values(previous: Mapping[str, str] | None = None) -> dict[str, str]:
    """The PPP_* settings that reach the compose stack from this machine.

    ``previous`` holds earlier settings (the .env file): passwords found there are kept, so
    the containers' data volumes (initialised with them) stay usable; host ports are kept
    unless they were written by the local backend (random free ports).
    """
    prev = dict(previous or {})
    keep_ports = prev.get(BACKEND_VARIABLE) != "local"
    shards = [s for s in SERVICES if s != "veneer"]
    values: dict[str, str] = {"PPP_SHARDS": ",".join(shards)}
    for service in SERVICES:
        kind = "veneer" if service == "veneer" else "shard"
        p = env_prefix(kind, service)

        def keep(var: str, prev: dict[str, str] = prev) -> str:
            return prev.get(var) or secrets.token_urlsafe(18)

        port = str(default_port(service))
        if keep_ports and _is_port(prev.get(f"{p}PORT")):
            port = prev[f"{p}PORT"]
        values.update(
            {
                f"{p}HOST": "127.0.0.1",
                f"{p}PORT": port,
                f"{p}DB": service,
                f"{p}SUPERUSER": SUPERUSER,
                f"{p}SUPERUSER_PASSWORD": keep(f"{p}SUPERUSER_PASSWORD"),
                f"{p}SUPERUSER_DB": "postgres",
                f"{p}ADMIN_PASSWORD": keep(f"{p}ADMIN_PASSWORD"),
                f"{p}APP_PASSWORD": keep(f"{p}APP_PASSWORD"),
            }
        )
        if kind == "shard":
            values[f"{p}FDW_HOST"] = service
            values[f"{p}FDW_PORT"] = str(CONTAINER_PORT)
    return values


def _is_port(raw: str | None) -> bool:
    return bool(raw and raw.isdigit() and 1 <= int(raw) <= 65535)


def project_name(project: Path, env_name: str | None = None) -> str:
    """Compose project name: the folder's name (plus the environment), as compose allows."""
    base = re.sub(r"[^a-z0-9_-]", "", project.name.lower()) or "ppp"
    if not base[0].isalnum():
        base = "ppp" + base
    return f"{base}-{env_name.lower().replace('_', '-')}" if env_name else base


class ComposeStack:
    """``docker compose`` on the project's docker-compose.yml with PPP's settings."""

    def __init__(
        self,
        project: Path,
        values: Mapping[str, str],
        env_name: str | None = None,
        timeout: float = 300.0,
    ) -> None:
        self.project = Path(project)
        self.file = self.project / COMPOSE_FILE
        self.values = dict(values)
        self.name = project_name(self.project, env_name)
        self.timeout = timeout

    def _secrets(self) -> list[str]:
        return [v for k, v in self.values.items() if k.endswith("PASSWORD") and v]

    def scrub(self, text: str) -> str:
        """``text`` with every password replaced by ``***``."""
        for secret in sorted(self._secrets(), key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def command(self, *args: str) -> list[str]:
        """The full compose command line for ``args`` (no secrets: those go in the env)."""
        problem = docker_problem()
        if problem is not None:
            raise PPPError(
                f"Docker is not available: {problem}. Start Docker, or use the local servers: "
                "`ppp local up --backend local`"
            )
        base = compose_command()
        if base is None:
            raise PPPError(
                "Docker Compose is not installed: neither `docker compose` nor `docker-compose` "
                "works. Install the compose plugin (apt-get install docker-compose-plugin), or "
                "use `ppp local up --backend local`"
            )
        if not self.file.is_file():
            raise PPPError(
                f"no {COMPOSE_FILE} in {self.project}: run ppp from the project folder "
                "or set PPP_PROJECT_DIR"
            )
        return [
            *base,
            "--project-directory",
            str(self.project),
            "-f",
            str(self.file),
            "-p",
            self.name,
            *args,
        ]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.values)
        return env

    def run(self, what: str, *args: str, capture: bool = True) -> str:
        cmd = self.command(*args)
        try:
            res = _run(cmd, env=self.env(), timeout=self.timeout, capture=capture)
        except subprocess.TimeoutExpired:
            raise PPPError(
                f"`docker compose {what}` did not finish within {self.timeout:.0f} s"
            ) from None
        if res.returncode != 0:
            lines = self.scrub((res.stderr or "") + (res.stdout or "")).strip().splitlines()
            detail = " | ".join(lines[-5:]) if lines else f"exit code {res.returncode}"
            raise PPPError(f"`docker compose {what}` failed: {detail}")
        return res.stdout or ""

    def up(self) -> None:
        """Create and start the containers; wait until every health check passes."""
        self.run("up", "up", "-d", "--wait")

    def down(self, purge: bool = False) -> None:
        """Stop and remove the containers (and with ``purge`` their data volumes)."""
        self.run("down", "down", *(["--volumes"] if purge else []))

    def status(self) -> str:
        return self.run("ps", "ps", "--all")

    def logs(self, service: str, lines: int = 0) -> None:
        """Print a service's log (its statements: log_statement=all) to this stdout."""
        tail = ["--tail", str(lines)] if lines else []
        self.run("logs", "logs", "--no-color", "--no-log-prefix", *tail, service, capture=False)


def compose_up(
    project: Path, values: Mapping[str, str], env_name: str | None = None
) -> ComposeStack:
    """``docker compose up -d --wait`` with ``values`` in the environment; PPPError on failure."""
    stack = ComposeStack(project, values, env_name)
    stack.up()
    return stack


def compose_down(
    project: Path, values: Mapping[str, str], env_name: str | None = None, purge: bool = False
) -> ComposeStack:
    """``docker compose down`` (``--volumes`` with ``purge``); PPPError on failure."""
    stack = ComposeStack(project, values, env_name)
    stack.down(purge)
    return stack
