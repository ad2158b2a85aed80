"""The Docker command line, asked what runs: whether an engine answers, which Compose is
installed, and the state of a compose project's containers.

PPP never trusts a compose exit code alone (Compose v1 exits 0 on options it does not know):
what runs is read from the engine, by the labels Compose v1 and v2 both put on containers.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Labels Compose (v1 and v2) puts on every container of a project.
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
WORKING_DIR_LABEL = "com.docker.compose.project.working_dir"


def which_docker() -> str | None:
    return shutil.which("docker")


def run(
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
    docker = which_docker()
    if docker is None:
        return "the docker command is not on PATH"
    try:
        res = run([docker, "info", "--format", "{{.ServerVersion}}"], timeout=timeout)
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


@dataclass(frozen=True)
class Compose:
    """An installed Docker Compose: its command line and version."""

    command: tuple[str, ...]
    version: str

    @property
    def major(self) -> int:
        """2 for "2.26.1-4", "v2.29.7" or "Docker Compose version v2.29.7"; 0 if unknown."""
        words = self.version.split()
        head = words[-1].lstrip("v").split(".", 1)[0] if words else ""
        return int(head) if head.isdigit() else 0

    @property
    def has_wait(self) -> bool:
        """``up --wait`` exists from Compose v2 on (v1 prints its help and exits 0)."""
        return self.major >= 2


def _version(cmd: Sequence[str], timeout: float) -> str | None:
    try:
        res = run([*cmd, "version", "--short"], timeout=timeout)
    except (subprocess.TimeoutExpired, OSError):
        return None
    if res.returncode != 0:
        return None
    lines = res.stdout.strip().splitlines()
    return lines[0].strip() if lines else None


def find_compose(timeout: float = 10.0) -> Compose | None:
    """``docker compose`` (the v2 plugin), else the standalone ``docker-compose``; None if
    neither answers ``version``."""
    docker = which_docker()
    candidates: list[list[str]] = [[docker, "compose"]] if docker else []
    standalone = shutil.which("docker-compose")
    if standalone:
        candidates.append([standalone])
    for cmd in candidates:
        version = _version(cmd, timeout)
        if version is not None:
            return Compose(tuple(cmd), version)
    return None


@dataclass(frozen=True)
class Container:
    """One container of a compose project, as the engine reports it."""

    service: str
    name: str
    #: created, running, restarting, exited, dead, ...
    status: str
    #: healthy, unhealthy, starting, or "" without a health check.
    health: str

    @property
    def ready(self) -> bool:
        return self.status == "running" and self.health in ("healthy", "")

    @property
    def failed(self) -> bool:
        return self.status in ("exited", "dead") or self.health == "unhealthy"

    def describe(self) -> str:
        return self.status + (f", {self.health}" if self.health else "")


_INSPECT = (
    '{{index .Config.Labels "' + SERVICE_LABEL + '"}}|{{.Name}}|{{.State.Status}}|'
    "{{if .State.Health}}{{.State.Health.Status}}{{end}}"
)


def project_containers(
    *, project: str | None = None, working_dir: Path | None = None, timeout: float = 10.0
) -> dict[str, Container]:
    """The containers of a compose project (by its name or its folder), by service; empty
    when Docker does not answer."""
    docker = which_docker()
    if docker is None:
        return {}
    filters = []
    if project is not None:
        filters += ["--filter", f"label={PROJECT_LABEL}={project}"]
    if working_dir is not None:
        filters += ["--filter", f"label={WORKING_DIR_LABEL}={working_dir}"]
    try:
        ids = run([docker, "ps", "--all", "--quiet", *filters], timeout=timeout)
        if ids.returncode != 0 or not ids.stdout.split():
            return {}
        res = run([docker, "inspect", "--format", _INSPECT, *ids.stdout.split()], timeout=timeout)
    except (subprocess.TimeoutExpired, OSError):
        return {}
    found: dict[str, Container] = {}
    for line in res.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 4 and parts[0]:
            found[parts[0]] = Container(parts[0], parts[1].lstrip("/"), parts[2], parts[3])
    return found


def project_volumes(project: str, timeout: float = 10.0) -> list[str]:
    """The named volumes of a compose project (they outlive its containers)."""
    docker = which_docker()
    if docker is None:
        return []
    try:
        res = run(
            [docker, "volume", "ls", "--quiet", "--filter", f"label={PROJECT_LABEL}={project}"],
            timeout=timeout,
        )
    except (subprocess.TimeoutExpired, OSError):
        return []
    return res.stdout.split() if res.returncode == 0 else []


def last_log_lines(container: str, lines: int = 5, timeout: float = 10.0) -> list[str]:
    """The last ``lines`` lines a container wrote (stdout and stderr)."""
    docker = which_docker()
    if docker is None:
        return []
    try:
        res = subprocess.run(
            [docker, "logs", "--tail", str(lines), container],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # in the order the server wrote them
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (subprocess.TimeoutExpired, OSError):
        return []
    return [ln for ln in (res.stdout or "").splitlines() if ln.strip()][-lines:]
