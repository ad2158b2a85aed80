"""The settings of the compose stack (docker-compose.yml): its services, host ports and
passwords, as PPP writes them to ``.env`` or, for development only, finds them.

Two ways to the same stack:

- ``ppp local up --backend docker`` writes :func:`compose_values` (random passwords) into
  ``.env`` and starts the stack with them;
- ``docker compose up -d`` on a fresh clone, with no ``.env``: the compose file falls back to
  its development defaults (one fixed, public password). When no ``.env`` exists and that
  project runs from the project folder, PPP uses the same defaults
  (:func:`development_values`) and says so loudly on stderr.
"""

from __future__ import annotations

import re
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path

from ppp_env import docker

COMPOSE_FILE = "docker-compose.yml"
#: The instances docker-compose.yml defines, veneer first; service name = instance name.
SERVICES = ("veneer", "bluth_co", "cyberdyne", "initech")
#: Host ports: the veneer on 15432, the shards on the following ones, in SERVICES order.
FIRST_HOST_PORT = 15432
#: The port PostgreSQL listens on inside each container (and on the compose network).
CONTAINER_PORT = 5432
SUPERUSER = "postgres"
#: Which backend `ppp local up` used (local or docker), recorded in .env.
BACKEND_VARIABLE = "PPP_BACKEND"
#: The PostgreSQL image of every service (read by the compose file and by the test suite).
IMAGE_VARIABLE = "PPP_POSTGRES_IMAGE"
DEFAULT_IMAGE = "postgres:16-alpine"
#: The compose file's fallback for every password when no .env sets one: development only.
DEVELOPMENT_PASSWORD = "ppp-development-only"
#: A key of the values PPP found as development defaults: no variable can have this name.
DEVELOPMENT_MARKER = "ppp:development-defaults"


def env_prefix(kind: str, name: str) -> str:
    """Prefix of an instance's variables: ``PPP_VENEER_`` or ``PPP_SHARD_<NAME>_``."""
    return "PPP_VENEER_" if kind == "veneer" else f"PPP_SHARD_{name.upper()}_"


def service_prefix(service: str) -> str:
    return env_prefix("veneer" if service == "veneer" else "shard", service)


def default_port(service: str) -> int:
    """The host port docker-compose.yml uses for ``service`` when no variable overrides it."""
    return FIRST_HOST_PORT + SERVICES.index(service)


def _is_port(raw: str | None) -> bool:
    return bool(raw and raw.isdigit() and 1 <= int(raw) <= 65535)


def compose_values(
    previous: Mapping[str, str] | None = None, *, development: bool = False
) -> dict[str, str]:
    """The PPP_* settings that reach the compose stack from this machine.

    ``previous`` holds earlier settings (the .env file): passwords found there are kept, so
    the containers' data volumes (initialised with them) stay usable; host ports are kept
    unless they were written by the local backend (random free ports). ``development`` gives
    the compose file's development defaults instead of new random passwords.
    """
    prev = dict(previous or {})
    keep_ports = prev.get(BACKEND_VARIABLE) != "local"
    values: dict[str, str] = {"PPP_SHARDS": ",".join(SERVICES[1:])}
    if prev.get(IMAGE_VARIABLE):  # for `docker compose` run by hand later (it reads .env)
        values[IMAGE_VARIABLE] = prev[IMAGE_VARIABLE]

    def password(var: str) -> str:
        if prev.get(var):
            return prev[var]
        return DEVELOPMENT_PASSWORD if development else secrets.token_urlsafe(18)

    for service in SERVICES:
        p = service_prefix(service)
        port = str(default_port(service))
        if keep_ports and _is_port(prev.get(f"{p}PORT")):
            port = prev[f"{p}PORT"]
        values.update(
            {
                f"{p}HOST": "127.0.0.1",
                f"{p}PORT": port,
                f"{p}DB": service,
                f"{p}SUPERUSER": SUPERUSER,
                f"{p}SUPERUSER_PASSWORD": password(f"{p}SUPERUSER_PASSWORD"),
                f"{p}SUPERUSER_DB": "postgres",
                f"{p}ADMIN_PASSWORD": password(f"{p}ADMIN_PASSWORD"),
                f"{p}APP_PASSWORD": password(f"{p}APP_PASSWORD"),
            }
        )
        if service != "veneer":
            values[f"{p}FDW_HOST"] = service
            values[f"{p}FDW_PORT"] = str(CONTAINER_PORT)
    return values


def container_values(containers: Mapping[str, docker.Container]) -> dict[str, str]:
    """``PPP_*_CONTAINER`` of each service found: the client programs of a move run there."""
    return {
        f"{service_prefix(s)}CONTAINER": containers[s].name for s in SERVICES if s in containers
    }


def project_name(project: Path, env_name: str | None = None) -> str:
    """Compose project name: the folder's name (plus the environment), as compose makes it."""
    base = re.sub(r"[^a-z0-9_-]", "", project.name.lower()) or "ppp"
    if not base[0].isalnum():
        base = "ppp" + base
    return f"{base}-{env_name.lower().replace('_', '-')}" if env_name else base


_warned: set[Path] = set()


def development_values(project: Path) -> dict[str, str] | None:
    """The development defaults, when every service of the compose stack runs from the
    folder ``project`` (``docker compose up -d`` there); else None. Warns once on stderr."""
    if not (project / COMPOSE_FILE).is_file() or docker.which_docker() is None:
        return None
    containers = docker.project_containers(working_dir=project.resolve(), timeout=5.0)
    if not containers or any(
        s not in containers or containers[s].status != "running" for s in SERVICES
    ):
        return None
    values = compose_values(development=True)
    values.update(container_values(containers))
    values[BACKEND_VARIABLE] = "docker"
    values[DEVELOPMENT_MARKER] = "true"
    if project not in _warned:
        _warned.add(project)
        sys.stderr.write(
            f"WARNING: no .env in {project}: using the DEVELOPMENT DEFAULTS of {COMPOSE_FILE} "
            f"(its stack runs here, e.g. container {containers['veneer'].name}): a fixed, "
            "public password, for local development only. `ppp local up --backend docker` "
            "writes random passwords to .env (after `docker compose down -v`).\n"
        )
    return values
