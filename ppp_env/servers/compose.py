"""The Docker Compose stack (docker-compose.yml): veneer + the example's shards in containers.

``ppp local up --backend docker`` (or ``auto`` when a Docker engine answers) writes the
settings from :func:`compose_values` into ``.env`` and runs ``docker compose up -d`` with them
in the environment, so the compose file takes its host ports and passwords from the same
variables PPP reads. Whatever Compose says, PPP then reads every service's state from the
engine and reports success only when all of them run and pass their health check (Compose v1
has no ``up --wait``: PPP's own wait is the only one there). Containers publish their port on
127.0.0.1 only; the veneer container reaches the shards on the compose network by service
name on port 5432, which the shards' ``FDW_HOST``/``FDW_PORT`` settings say.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from ppp_env.compose_settings import (
    BACKEND_VARIABLE as BACKEND_VARIABLE,
)
from ppp_env.compose_settings import (
    COMPOSE_FILE,
    DEFAULT_IMAGE,
    IMAGE_VARIABLE,
    SERVICES,
    container_values,
    project_name,
)
from ppp_env.docker import (
    Compose,
    Container,
    docker_problem,
    find_compose,
    last_log_lines,
    which_docker,
)
from ppp_env.docker import project_containers as project_containers
from ppp_env.docker import project_volumes as project_volumes
from ppp_env.docker import run as _run
from ppp_env.errors import PPPError

#: Seconds `up` waits for every service to be healthy (the compose file's start_period is 60).
HEALTH_TIMEOUT = 180.0


class ComposeStack:
    """``docker compose`` on the project's docker-compose.yml with PPP's settings."""

    def __init__(
        self,
        project: Path,
        values: Mapping[str, str],
        env_name: str | None = None,
        timeout: float = 300.0,
        health_timeout: float = HEALTH_TIMEOUT,
    ) -> None:
        self.project = Path(project)
        self.file = self.project / COMPOSE_FILE
        self.values = dict(values)
        self.name = project_name(self.project, env_name)
        self.timeout = timeout
        self.health_timeout = health_timeout
        self._compose: Compose | None = None

    def _secrets(self) -> list[str]:
        return [v for k, v in self.values.items() if k.endswith("PASSWORD") and v]

    def scrub(self, text: str) -> str:
        """``text`` with every password replaced by ``***``."""
        for secret in sorted(self._secrets(), key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def compose(self) -> Compose:
        """The Compose to use; PPPError when Docker, Compose or the compose file is missing."""
        if self._compose is not None:
            return self._compose
        problem = docker_problem()
        if problem is not None:
            raise PPPError(
                f"Docker is not available: {problem}. Start Docker, or use the local servers: "
                "`ppp local up --backend local`"
            )
        found = find_compose()
        if found is None:
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
        self._compose = found
        return found

    def command(self, *args: str) -> list[str]:
        """The full compose command line for ``args`` (no secrets: those go in the env)."""
        base = self.compose().command
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
            raise PPPError(f"`docker compose {what}` failed: {self._explain(lines)}")
        return res.stdout or ""

    def _explain(self, lines: list[str]) -> str:
        """What went wrong, from compose's last lines, with what to do for the usual causes."""
        if not lines:
            return "no message"
        detail = " | ".join(dict.fromkeys(ln.strip() for ln in lines[-5:]))
        if "already allocated" in detail or "address already in use" in detail:
            return (
                f"{detail}; a host port is taken: free it, or set PPP_VENEER_PORT / "
                "PPP_SHARD_<NAME>_PORT in .env to free ports"
            )
        image = self.env().get(IMAGE_VARIABLE) or DEFAULT_IMAGE
        if not self._has_image(image):
            return (
                f"the image {image!r} ({IMAGE_VARIABLE}) is not on this Docker engine and could "
                f"not be pulled ({lines[-1].strip()}): pull or build it, or set "
                f"{IMAGE_VARIABLE} to an image the engine has"
            )
        return detail

    def _has_image(self, image: str) -> bool:
        docker = which_docker() or "docker"
        return _run([docker, "image", "inspect", image], timeout=30).returncode == 0

    def up(self) -> dict[str, Container]:
        """Create and start the containers, then wait (PPP itself, whatever Compose's version)
        until every service runs and is healthy; their containers by service."""
        wait = ["--wait"] if self.compose().has_wait else []
        try:
            self.run("up", "up", "-d", *wait)
        except PPPError as exc:
            failed = self._failed(project_containers(project=self.name))
            raise PPPError(f"{exc}{'; ' + failed if failed else ''}") from None
        return self.wait_healthy()

    def wait_healthy(self) -> dict[str, Container]:
        deadline = time.monotonic() + self.health_timeout
        while True:
            found = project_containers(project=self.name)
            failed = self._failed(found)
            if failed:
                raise PPPError(f"compose project {self.name} did not come up: {failed}")
            if all(s in found and found[s].ready for s in SERVICES):
                return found
            if time.monotonic() > deadline:
                states = ", ".join(
                    f"{s} {found[s].describe() if s in found else 'missing'}" for s in SERVICES
                )
                raise PPPError(
                    f"compose project {self.name} is not healthy after "
                    f"{self.health_timeout:.0f} s: {states} (see `ppp logs <service>`)"
                )
            time.sleep(0.5)

    def _failed(self, found: Mapping[str, Container]) -> str:
        """One clause per service that exited, restarts or failed its health check, with its
        last log lines; "" when none did."""
        clauses = []
        for service in SERVICES:
            c = found.get(service)
            if c is None or not (c.failed or c.status == "restarting"):
                continue
            logs = self.scrub(" | ".join(last_log_lines(c.name, 3)))
            clauses.append(
                f"service {service} is {c.describe()}"
                + (f" (last log lines: {logs})" if logs else "")
            )
        return "; ".join(clauses)

    def containers(self) -> dict[str, str]:
        """``PPP_*_CONTAINER`` of each running service (moves run client programs there)."""
        return container_values(project_containers(project=self.name))

    def volumes(self) -> list[str]:
        return project_volumes(self.name)

    def down(self, purge: bool = False) -> None:
        """Stop and remove the containers (and with ``purge`` their data volumes)."""
        self.run("down", "down", *(["--volumes"] if purge else []))

    def status(self) -> str:
        return self.run("ps", "ps", "--all")

    def logs(self, service: str, lines: int = 0) -> None:
        """Print a service's log (its statements: log_statement=all) to this stdout."""
        tail = ["--tail", str(lines)] if lines else []
        self.run("logs", "logs", "--no-color", "--no-log-prefix", *tail, service, capture=False)


def compose_down(
    project: Path, values: Mapping[str, str], env_name: str | None = None, purge: bool = False
) -> ComposeStack:
    """``docker compose down`` (``--volumes`` with ``purge``); PPPError on failure."""
    stack = ComposeStack(project, values, env_name)
    stack.down(purge)
    return stack
