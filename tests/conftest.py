"""One real PostgreSQL topology (veneer + 3 shards) for the whole test session.

Backends, chosen with PPP_TEST_BACKEND:
- ``local`` (default): throwaway servers from this machine's binaries (ppp_env.servers.local),
  the same code as ``ppp local up``; as root they run as the ``postgres`` OS user.
- ``docker``: four testcontainers PostgreSQL containers on one Docker network, of the image
  ``PPP_POSTGRES_IMAGE`` (the veneer's: ``PPP_TEST_VENEER_IMAGE``), with the compose file's
  server settings.
- ``env``: servers already described by PPP_* settings in the environment.

The session fixture provisions the example's instances (``ppp init``) and exports the
settings into ``os.environ`` (with PPP_PROJECT_DIR pointing at an empty folder, so no
developer's ``.env`` leaks in); tests that need other databases build them on the same
servers with :meth:`Topology.variant`.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from alembic.config import Config

from ppp_env import db
from ppp_env.fleet.options import RunOptions
from ppp_env.servers.local import EXAMPLE_SHARDS, LocalServers
from ppp_env.servers.provision import provision
from ppp_env.settings import Settings, env_prefix, load_settings
from ppp_env.tenant_state import read_states
from ppp_env.veneer.catalog import admin_connection, register_tenant, unregister_tenant

ROOT = Path(__file__).resolve().parent.parent

# Fixtures shared by several modules live in plugins, never in a test module.
pytest_plugins = ["tests.plugins.veneer", "tests.plugins.routing"]
INSTANCES = ["veneer", *EXAMPLE_SHARDS]


@dataclass
class Topology:
    environ: dict[str, str]
    settings: Settings
    servers: LocalServers | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))

    def variant(self, **overrides: str) -> dict[str, str]:
        """The session's settings with some variables changed (e.g. other database names)."""
        env = dict(self.environ)
        env.update(overrides)
        return env

    def settings_for(self, environ: dict[str, str]) -> Settings:
        return load_settings(environ=environ)


def _local_backend(workdir: Path) -> tuple[dict[str, str], LocalServers]:
    base = workdir / "servers"
    servers = LocalServers(base)
    values = servers.up(INSTANCES)
    return values, servers


#: The image of every container (PPP_POSTGRES_IMAGE, as docker-compose.yml reads it); the
#: veneer's may differ (PPP_TEST_VENEER_IMAGE), as during an upgrade of the veneer first.
DEFAULT_IMAGE = "postgres:16-alpine"


def _server_args() -> list[str]:
    """The server settings of docker-compose.yml (logical replication, statement logging):
    the suite's containers run exactly what the compose stack runs."""
    import yaml

    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return [str(a) for a in spec["x-postgres"]["command"]]


def _docker_backend(stack: list[Any]) -> dict[str, str]:
    """Four containers on one Docker network: PPP reaches each on a published port of
    127.0.0.1, the veneer's postgres_fdw reaches the shards by network alias on 5432, and the
    client programs of a move run inside the containers (PPP_*_CONTAINER)."""
    import secrets

    from testcontainers.core.network import Network

    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers before 4.15
        from testcontainers.postgres import PostgresContainer

    image = os.environ.get("PPP_POSTGRES_IMAGE") or DEFAULT_IMAGE
    veneer_image = os.environ.get("PPP_TEST_VENEER_IMAGE") or image
    network = Network().create()
    stack.append(network)
    command = _server_args()
    values: dict[str, str] = {"PPP_SHARDS": ",".join(EXAMPLE_SHARDS)}
    for name in INSTANCES:
        password = secrets.token_urlsafe(12)
        container = (
            PostgresContainer(
                veneer_image if name == "veneer" else image,
                username="postgres",
                password=password,
                dbname="postgres",
            )
            .with_env("POSTGRES_INITDB_ARGS", "--auth-host=scram-sha-256")
            .with_command(command)
            .with_network(network)
            .with_network_aliases(name)
        )
        stack.insert(0, container)  # containers stop before their network goes
        container.start()
        p = env_prefix("veneer" if name == "veneer" else "shard", name)
        values.update(
            {
                f"{p}HOST": container.get_container_host_ip(),
                f"{p}PORT": str(container.get_exposed_port(5432)),
                f"{p}DB": name,
                f"{p}SUPERUSER": "postgres",
                f"{p}SUPERUSER_PASSWORD": password,
                f"{p}ADMIN_PASSWORD": f"{name}-admin-pw",
                f"{p}APP_PASSWORD": f"{name}-app-pw",
                f"{p}CONTAINER": container.get_wrapped_container().name,
            }
        )
        if name != "veneer":
            values[f"{p}FDW_HOST"] = name
            values[f"{p}FDW_PORT"] = "5432"
    return values


@pytest.fixture(scope="session")
def topology() -> Iterator[Topology]:
    backend = os.environ.get("PPP_TEST_BACKEND", "local")
    workdir = Path(tempfile.mkdtemp(prefix="ppp-test-"))
    workdir.chmod(0o755)
    dotenv_dir = workdir / "project"
    dotenv_dir.mkdir()
    saved = dict(os.environ)
    containers: list[Any] = []
    servers = None
    try:
        if backend == "local":
            values, servers = _local_backend(workdir)
        elif backend == "docker":
            values = _docker_backend(containers)
        elif backend == "env":
            values = {k: v for k, v in os.environ.items() if k.startswith("PPP_")}
        else:
            raise pytest.UsageError(f"PPP_TEST_BACKEND={backend!r}: expected local, docker or env")
        values["PPP_PROJECT_DIR"] = str(dotenv_dir)
        values.setdefault("PPP_LOCK_TIMEOUT", "5")
        os.environ.update(values)
        os.environ.pop("PPP_ENV", None)
        settings = load_settings()
        provision(settings)
        yield Topology(values, settings, servers, workdir)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for c in containers:
            with contextlib.suppress(Exception):  # every cleanup step runs
                c.stop() if hasattr(c, "stop") else c.remove()
        if servers is not None:
            with contextlib.suppress(Exception):
                servers.down(purge=True)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def settings(topology: Topology) -> Settings:
    return topology.settings


def alembic_config(section: str = "alembic", **attributes: Any) -> Any:
    """An in-process Alembic Config on the project's alembic.ini, output captured."""
    import io

    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"), ini_section=section, stdout=io.StringIO())
    cfg.attributes.update(attributes)
    return cfg


@pytest.fixture(scope="session")
def veneer_head(topology: Topology) -> Topology:
    """The veneer at head: catalog, foreign servers, the example tenants registered."""
    from alembic import command

    command.upgrade(alembic_config("veneer"), "head")
    return topology


# -- a small fleet of test tenants over the test-only chain tests/scripts/fleet ------------------
FLEET_SCRIPTS = ROOT / "tests" / "scripts" / "fleet"


def fleet_config(script_location: Path = FLEET_SCRIPTS, **attributes) -> Config:
    """A Config for the test-only script directory (its own tenants, prefix ft_)."""
    cfg = Config(stdout=io.StringIO(), output_buffer=io.StringIO())
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("prepend_sys_path", str(ROOT))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes.update(attributes)
    return cfg


def opts(**kw) -> dict:
    return {"ppp.options": RunOptions(output="quiet", **kw)}


def states(settings, shard: str, schemas: list[str]) -> dict:
    with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
        return read_states(conn.cursor(), schemas)


def shard_sql(settings, shard: str, sql: str, params=None, role="admin"):
    with db.connection(settings.shard(shard), role, autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else None


def register(settings, tenants: dict[str, str]) -> None:
    with admin_connection(settings) as conn:
        for schema, shard in tenants.items():
            register_tenant(conn, schema, shard)


def unregister(settings, tenants) -> None:
    with admin_connection(settings) as conn:
        for schema in tenants:
            unregister_tenant(conn, schema)


def drop_schemas(settings, tenants: dict[str, str]) -> None:
    for schema, shard in tenants.items():
        shard_sql(settings, shard, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def fleet(veneer_head, request):
    """Two test tenants per shard, registered for the test and removed afterwards."""
    settings = veneer_head.settings
    prefix = request.node.name.split("[")[0].replace("test_", "")[:20]
    tenants = {f"ft_{prefix}_{shard[:3]}{i}": shard for shard in settings.shards for i in range(2)}
    register(settings, tenants)
    yield tenants
    unregister(settings, tenants)
    drop_schemas(settings, tenants)


def only(tenants) -> dict:
    return {"tenants": sorted(tenants)}
