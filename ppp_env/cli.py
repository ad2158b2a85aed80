"""The ``ppp`` command line: parse, call the library, print. No SQL lives here.

Every PPPError becomes ``Error: <message>`` on stderr and exit code 1; ``--traceback``
(or ``PPP_TRACEBACK=1``) shows the stack instead.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click
from rich.table import Table

from ppp_env import local as local_servers
from ppp_env import provision as provisioning
from ppp_env.clitools import PPPGroup, State, console, pass_state
from ppp_env.errors import PPPError
from ppp_env.identifiers import validate_identifier
from ppp_env.settings import project_dir, read_environment


@click.group(cls=PPPGroup, context_settings={"help_option_names": ["-h", "--help"]})
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


# -- local servers ------------------------------------------------------------------------------
def _local(state: State) -> tuple[local_servers.LocalServers, Path, dict[str, str]]:
    values, env_name, path = read_environment(state.env_name)
    base = values.get("PPP_LOCAL_DIR") or str(
        local_servers.default_base_dir(project_dir(), env_name)
    )
    return local_servers.LocalServers(Path(base), local_servers.find_bindir(values)), path, values


@cli.group("local")
def local_group() -> None:
    """Throwaway PostgreSQL servers on this machine (veneer + shards), no Docker needed."""


@local_group.command("up")
@click.option(
    "--shards",
    default=None,
    metavar="A,B,...",
    help="Shard names (default: PPP_SHARDS, else bluth_co,cyberdyne,initech).",
)
@pass_state
def local_up(state: State, shards: str | None) -> None:
    """Start (initdb on first use) one server per instance and write their settings to .env."""
    servers, path, values = _local(state)
    names = (shards or values.get("PPP_SHARDS") or ",".join(local_servers.EXAMPLE_SHARDS)).split(
        ","
    )
    wanted = ["veneer", *[n.strip() for n in names if n.strip()]]
    for name in wanted:
        validate_identifier(name, "shard name")
    before = {n: servers.status(n).running for n in wanted}
    new_values = servers.up(wanted, values)
    local_servers.write_dotenv(path, new_values)
    out = console()
    for name in wanted:
        st = servers.status(name)
        what = "already running" if before[name] else "started"
        out.print(f"{name}: {what} on 127.0.0.1:{st.port} (data {st.data_dir})")
    out.print(f"settings written to {path}")


@local_group.command("down")
@click.option("--purge", is_flag=True, help="Also delete the servers' data folders.")
@pass_state
def local_down(state: State, purge: bool) -> None:
    """Stop every local server of this project (and with --purge, delete their data)."""
    servers, _path, _values = _local(state)
    names = servers.instances()
    stopped = servers.down(purge=purge)
    out = console()
    if not names:
        out.print("no local servers")
    for name in names:
        verb = "stopped" if name in stopped else "was not running"
        out.print(f"{name}: {verb}" + (", data deleted" if purge else ""))


@local_group.command("status")
@pass_state
def local_status(state: State) -> None:
    """Show each local server: port, running or stopped, data folder, log file."""
    servers, _path, _values = _local(state)
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
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
@pass_state
def psql(state: State, instance: str, role: str, psql_args: tuple[str, ...]) -> None:
    """Open psql on INSTANCE (veneer or a shard) as its app role, search_path = the tenant."""
    inst = state.settings.instance(instance)
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
        env["PGOPTIONS"] = f"-c search_path={inst.name},public"
    os.execvpe(exe, [exe, *psql_args], env)


@cli.command("logs")
@click.argument("instance")
@click.option("-n", "--lines", type=int, default=0, help="Only the last N lines.")
@pass_state
def logs(state: State, instance: str, lines: int) -> None:
    """Show the statements INSTANCE ran (its server log; log_statement=all)."""
    servers, _path, values = _local(state)
    names = servers.instances()
    if instance not in names:
        shards = values.get("PPP_SHARDS", "")
        if instance != "veneer" and instance not in shards.split(","):
            raise PPPError(f"unknown instance {instance!r}: expected veneer or one of {shards}")
        raise PPPError(
            f"no local server log for {instance!r} under {servers.base_dir}; with Docker use "
            f"`docker compose logs {instance.replace('_', '-')}`"
        )
    text = servers.log_file(instance).read_text(errors="replace").splitlines()
    for line in text[-lines:] if lines else text:
        click.echo(line)


from ppp_env.cli_migrate import migrate, status  # noqa: E402
from ppp_env.cli_veneer import tenant_group, veneer_group  # noqa: E402

cli.add_command(veneer_group)
cli.add_command(tenant_group)
cli.add_command(migrate)
cli.add_command(status)


def main() -> None:
    cli(prog_name="ppp")
