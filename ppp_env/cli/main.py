"""The ``ppp`` command line: parse, call the library, print. No SQL lives here.

Every PPPError becomes ``Error: <message>`` on stderr and exit code 1; ``--traceback``
(or ``PPP_TRACEBACK=1``) shows the stack instead.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path

import click
from rich.table import Table

from ppp_env.cli.common import PPPGroup, State, console, pass_state
from ppp_env.compose_settings import (
    COMPOSE_FILE,
    DEVELOPMENT_MARKER,
    SERVICES,
    compose_values,
    container_values,
)
from ppp_env.docker import docker_available, find_compose
from ppp_env.errors import PPPError
from ppp_env.identifiers import validate_tenant
from ppp_env.servers import compose
from ppp_env.servers import local as local_servers
from ppp_env.servers import provision as provisioning
from ppp_env.settings import env_prefix, masked, parse_shard_names, read_environment

#: Subcommands imported only when they run (or for help), so that `ppp tenant add` or
#: `ppp psql` do not import the fleet runner, the lifecycle or the router first.
_LAZY: dict[str, tuple[str, str]] = {
    "veneer": ("ppp_env.cli.veneer", "veneer_group"),
    # tenant_move adds `move` and `cleanup` to the tenant group it imports.
    "tenant": ("ppp_env.cli.tenant_move", "tenant_group"),
    "doctor": ("ppp_env.cli.tenant", "doctor_command"),
    "migrate": ("ppp_env.cli.migrate", "migrate"),
    "status": ("ppp_env.cli.migrate", "status"),
    "demo": ("ppp_env.cli.migrate", "demo"),
    "rollout": ("ppp_env.cli.rollout", "rollout_group"),
    "new": ("ppp_env.cli.new", "new"),
}


class _LazyGroup(PPPGroup):
    """PPP's top-level group: the heavier subcommands load on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _LAZY and cmd_name not in self.commands:
            module, attr = _LAZY[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--env",
    "env_name",
    envvar="PPP_ENV",
    metavar="NAME",
    help="Environment: read .env.NAME instead of .env (also PPP_ENV).",
)
@click.option("--traceback", is_flag=True, help="Show the full stack on errors (PPP_TRACEBACK=1).")
@click.version_option(package_name="ppp-env", prog_name="ppp")
@click.pass_context
def cli(ctx: click.Context, env_name: str | None, traceback: bool) -> None:
    """PPP, the PostgreSQL Partition Proxy: tenants in schemas, schemas on shards, one veneer."""
    ctx.obj = State(env_name, traceback)


def _print_reports(reports: list[provisioning.Report], nothing: str) -> None:
    out = console()
    for report in reports:
        if report.changes:
            for change in report.changes:
                out.print(f"{report.instance}: {change}")
        else:
            out.print(f"{report.instance}: {nothing}")


# -- settings -----------------------------------------------------------------------------------
@cli.command("settings")
@pass_state
def show_settings(state: State) -> None:
    """Show the instances of the selected environment (passwords masked)."""
    s = state.settings
    table = Table(title=f"PPP settings ({s.source})")
    for col in ("instance", "kind", "admin URL", "app URL"):
        table.add_column(col)
    for inst in s.instances:
        table.add_row(inst.name, inst.kind, inst.masked_url("admin"), inst.masked_url("app"))
    console().print(table)
    for inst in s.shards.values():
        if inst.replicas:
            urls = ", ".join(masked(u) for u in inst.replicas)
            click.echo(f"replicas of {inst.name}: {urls}")


# -- local servers ------------------------------------------------------------------------------
BACKENDS = ("auto", "local", "docker")

backend_option = click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="auto",
    show_default=True,
    help="local: throwaway servers from this machine's binaries; docker: docker-compose.yml; "
    "auto: the backend `up` recorded in .env (PPP_BACKEND); for a first `up`, Docker when an "
    "engine answers, else local.",
)


def _environment(state: State) -> tuple[dict[str, str], str | None, Path]:
    return read_environment(state.env_name)


LOCAL_DIR_VARIABLE = "PPP_LOCAL_DIR"


def _local_dir(values: dict[str, str], env_name: str | None, path: Path) -> Path:
    """Where this project's local servers live: PPP_LOCAL_DIR (`up` records it in .env),
    else a folder in /tmp."""
    base = values.get(LOCAL_DIR_VARIABLE)
    return Path(base) if base else local_servers.default_base_dir(path.parent, env_name)


def _local(values: dict[str, str], env_name: str | None, path: Path) -> local_servers.LocalServers:
    """The local servers of this project (PostgreSQL's binaries needed)."""
    return local_servers.LocalServers(
        _local_dir(values, env_name, path), local_servers.find_bindir(values)
    )


def _backend_for_up(choice: str, values: dict[str, str] | None = None, local: bool = False) -> str:
    """--backend, else the backend an earlier `up` recorded, else local when this project
    has local servers already (``local``: an `up` again never switches, even without its
    .env), else Docker when an engine and Compose answer, else local."""
    if choice != "auto":
        return choice
    if values and values.get(compose.BACKEND_VARIABLE):
        return _backend_in_use(choice, values)
    if local:
        return "local"
    return "docker" if docker_available() and find_compose() is not None else "local"


def _backend_in_use(choice: str, values: dict[str, str]) -> str:
    """What `up` started: the --backend given, else PPP_BACKEND as `up` recorded it."""
    if choice != "auto":
        return choice
    recorded = values.get(compose.BACKEND_VARIABLE, "local")
    if recorded not in ("local", "docker"):
        raise PPPError(
            f"{compose.BACKEND_VARIABLE}={recorded!r} is not valid: expected local or docker"
        )
    return recorded


def _prefixes(names: list[str]) -> list[str]:
    return [env_prefix("veneer" if n == "veneer" else "shard", n) for n in names]


@cli.group("local")
def local_group() -> None:
    """PostgreSQL servers for development: veneer + shards, local or in Docker."""


@local_group.command("up")
@click.option(
    "--shards",
    default=None,
    metavar="A,B,...",
    help="Shard names (default: PPP_SHARDS, else bluth_co,cyberdyne,initech; local only).",
)
@backend_option
@pass_state
def local_up(state: State, shards: str | None, backend: str) -> None:
    """Start one server per instance (created on first use) and write their settings to .env.

    With Docker: random passwords written to .env first, `docker compose up -d`, then success
    only once every service runs and is healthy (read from the engine; Compose v2 or v1).
    """
    values, env_name, path = _environment(state)
    has_local = any(_local_dir(values, env_name, path).glob("*/data/PG_VERSION"))
    if _backend_for_up(backend, values, has_local) == "docker":
        _up_docker(values, env_name, path, shards)
    else:
        _up_local(values, env_name, path, shards)
    console().print(f"settings written to {path}")


def _up_docker(
    values: dict[str, str], env_name: str | None, path: Path, shards: str | None
) -> None:
    """The compose stack: settings (passwords) to .env first, then up and healthy."""
    expected = ",".join(s for s in SERVICES if s != "veneer")
    if shards is not None and parse_shard_names(shards, "--shards") != expected.split(","):
        raise PPPError(
            f"--shards={shards!r}: the compose stack has the shards {expected}; "
            "other shards need --backend local"
        )
    out = console()
    new_values = compose_values(values)
    stack = compose.ComposeStack(path.parent, new_values, env_name)
    stack.compose()  # Docker and compose answer, the file is there: before touching .env
    if not path.is_file() and stack.volumes() and not values.get(DEVELOPMENT_MARKER):
        raise PPPError(
            f"compose project {stack.name} already has data volumes, made without {path} "
            "(their passwords are not known here): remove them with `docker compose down "
            "-v`, or write their settings to .env"
        )
    if values.get(DEVELOPMENT_MARKER):
        out.print(
            f"[bold yellow]the stack runs with the DEVELOPMENT DEFAULTS of "
            f"{COMPOSE_FILE}: they are kept in {path} (its volumes were made with them); "
            "for real passwords: `docker compose down -v`, then this command again[/]"
        )
    local_servers.write_dotenv(path, {**new_values, compose.BACKEND_VARIABLE: "docker"})
    containers = stack.up()
    local_servers.write_dotenv(path, container_values(containers))
    for service in SERVICES:
        p = _prefixes([service])[0]
        out.print(
            f"{service}: running in Docker on 127.0.0.1:{new_values[p + 'PORT']}, "
            f"{containers[service].describe()} (container {containers[service].name})"
        )


def _up_local(values: dict[str, str], env_name: str | None, path: Path, shards: str | None) -> None:
    """Throwaway servers from this machine's binaries, their settings to .env."""
    raw = shards or values.get("PPP_SHARDS") or ",".join(local_servers.EXAMPLE_SHARDS)
    wanted = ["veneer", *parse_shard_names(raw, "--shards" if shards else "PPP_SHARDS")]
    servers = _local(values, env_name, path)
    before = {n: servers.status(n).running for n in wanted}
    new_values = servers.up(wanted, values)
    stale = [
        p + var
        for p in _prefixes(sorted({*wanted, *SERVICES}))
        for var in ("FDW_HOST", "FDW_PORT", "CONTAINER")
    ]
    # The servers' folder too: `down`, `status` and `logs` must find them without the
    # PPP_LOCAL_DIR that `up` may have been given.
    recorded = {
        **new_values,
        compose.BACKEND_VARIABLE: "local",
        LOCAL_DIR_VARIABLE: str(servers.base_dir.resolve()),
    }
    local_servers.write_dotenv(path, recorded, remove=stale)
    out = console()
    for name in wanted:
        st = servers.status(name)
        what = "already running" if before[name] else "started"
        out.print(f"{name}: {what} on 127.0.0.1:{st.port} (data {st.data_dir})")


@local_group.command("down")
@click.option("--purge", is_flag=True, help="Also delete the servers' data (folders, volumes).")
@backend_option
@pass_state
def local_down(state: State, purge: bool, backend: str) -> None:
    """Stop every server of this project (and with --purge, delete their data)."""
    values, env_name, path = _environment(state)
    out = console()
    if _backend_in_use(backend, values) == "docker":
        stack = compose.compose_down(path.parent, values, env_name, purge=purge)
        out.print(
            f"compose project {stack.name}: containers removed"
            + (", data volumes deleted" if purge else ", data volumes kept")
        )
        return
    servers = _local(values, env_name, path)
    names = servers.instances()
    stopped = servers.down(purge=purge)
    if not names:
        out.print(f"no local servers under {servers.base_dir}")
    for name in names:
        verb = "stopped" if name in stopped else "was not running"
        out.print(f"{name}: {verb}" + (", data deleted" if purge else ""))


@local_group.command("status")
@backend_option
@pass_state
def local_status(state: State, backend: str) -> None:
    """Show each server: port, running or stopped, data folder, log file."""
    values, env_name, path = _environment(state)
    if _backend_in_use(backend, values) == "docker":
        stack = compose.ComposeStack(path.parent, values, env_name)
        click.echo(stack.status().rstrip())
        return
    servers = _local(values, env_name, path)
    names = servers.instances()
    if not names:
        console().print(f"no local servers under {servers.base_dir}; run `ppp local up`")
        return
    table = Table()
    for col in ("instance", "state", "address", "pid", "data", "log"):
        table.add_column(col)
    for name in names:
        st = servers.status(name)
        table.add_row(
            name,
            "running" if st.running else "stopped",
            f"127.0.0.1:{st.port}",
            str(st.pid or "-"),
            str(st.data_dir),
            str(st.log_file),
        )
    console().print(table)


# -- provisioning -------------------------------------------------------------------------------
@cli.command("init")
@pass_state
def init(state: State) -> None:
    """Create databases, roles, grants and the veneer's postgres_fdw in every instance."""
    _print_reports(provisioning.provision(state.settings), "already provisioned, nothing to do")


@cli.command("teardown")
@click.option("--yes", is_flag=True, help="Do not ask; required when not on a terminal.")
@pass_state
def teardown(state: State, yes: bool) -> None:
    """Drop every instance's database and roles (all tenant data is lost)."""
    settings = state.settings
    if not yes:
        if not sys.stdin.isatty():
            raise PPPError("teardown drops every database and role PPP made: pass --yes")
        names = ", ".join(i.name for i in settings.instances)
        click.confirm(f"Drop the databases and roles of {names}?", abort=True)
    _print_reports(provisioning.teardown(settings), "nothing to tear down")


# -- psql and logs ------------------------------------------------------------------------------
@cli.command("psql", context_settings={"ignore_unknown_options": True})
@click.argument("instance")
@click.option("--role", type=click.Choice(["app", "admin"]), default="app", show_default=True)
@click.option(
    "--tenant",
    metavar="SCHEMA",
    help="On a shard: search_path = SCHEMA,public (default: the shard's own name, as the "
    "example's tenants are named after their shards).",
)
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
@pass_state
def psql(
    state: State, instance: str, role: str, tenant: str | None, psql_args: tuple[str, ...]
) -> None:
    """Open psql on INSTANCE (veneer or a shard) as its app role (or --role admin).

    On a shard, search_path is --tenant, else the shard's name; on the veneer, the default."""
    inst = state.settings.instance(instance)
    if tenant is not None:
        validate_tenant(tenant)
        if inst.kind != "shard":
            raise PPPError("--tenant applies to a shard; on the veneer use the tenant's schema")
    exe = shutil.which("psql")
    if exe is None:
        raise PPPError(
            "psql is not on PATH: install the PostgreSQL client (apt-get install postgresql-client)"
        )
    env = dict(os.environ)
    user, password = inst.user_and_password("app" if role == "app" else "admin")
    env.update(
        PGHOST=inst.host,
        PGPORT=str(inst.port),
        PGDATABASE=inst.dbname,
        PGUSER=user,
        PGPASSWORD=password or "",
        PGAPPNAME="ppp-psql",
    )
    if inst.kind == "shard":
        env["PGOPTIONS"] = f"-c search_path={tenant or inst.name},public"
    os.execvpe(exe, [exe, *psql_args], env)


@cli.command("logs")
@click.argument("instance")
@click.option("-n", "--lines", type=int, default=0, help="Only the last N lines.")
@backend_option
@pass_state
def logs(state: State, instance: str, lines: int, backend: str) -> None:
    """Show the statements INSTANCE ran (its server log; log_statement=all)."""
    values, env_name, path = _environment(state)
    shards = values.get("PPP_SHARDS", "")
    known = ["veneer", *[s.strip() for s in shards.split(",") if s.strip()]]
    if _backend_in_use(backend, values) == "docker":
        if instance not in SERVICES:
            raise PPPError(
                f"unknown instance {instance!r}: the compose stack has " + ", ".join(SERVICES)
            )
        compose.ComposeStack(path.parent, values, env_name).logs(instance, lines)
        return
    servers = _local(values, env_name, path)
    if instance not in servers.instances():
        if instance not in known:
            raise PPPError(f"unknown instance {instance!r}: expected one of {', '.join(known)}")
        raise PPPError(
            f"no local server log for {instance!r} under {servers.base_dir}: start the servers "
            "with `ppp local up` (with Docker: `ppp logs --backend docker " + instance + "`)"
        )
    text = servers.log_file(instance).read_text(errors="replace").splitlines()
    for line in text[-lines:] if lines else text:
        click.echo(line)


def main() -> None:
    """The ``ppp`` console script: a command line, so alembic.ini's logging applies (an
    application calling the library keeps its own)."""
    from ppp_env.alembic_env import use_ini_logging
    from ppp_env.gc_tuning import fewer_collections

    use_ini_logging()
    with fewer_collections():
        cli(prog_name="ppp")
