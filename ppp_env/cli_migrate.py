"""``ppp migrate``, ``ppp status`` and ``ppp demo``: the fleet's migrations and where it stands."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import click
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from rich.table import Table

from ppp_env import db
from ppp_env.catalog import list_tenants
from ppp_env.clitools import State, console, pass_state
from ppp_env.errors import PPPError
from ppp_env.fleet import fleet_status
from ppp_env.identifiers import quote_ident, validate_tenant
from ppp_env.runner import FleetResult, RunOptions

EXAMPLE_QUERY = "SELECT * FROM {schema}.authors WHERE first_name = 'Ernest'"


def alembic_config(path: str, section: str = "alembic", settings: Any = None) -> Config:
    if not Path(path).is_file():
        raise PPPError(
            f"no Alembic configuration at {path}: run ppp from the project folder or pass -c"
        )
    cfg = Config(path, ini_section=section)
    if settings is not None:
        cfg.attributes["ppp.settings"] = settings
    return cfg


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


F = TypeVar("F", bound=Callable[..., Any])


def fleet_options(f: F) -> F:
    for opt in reversed(
        [
            click.option(
                "-c",
                "--config",
                "config_path",
                default="alembic.ini",
                show_default=True,
                help="Alembic configuration file.",
            ),
            click.option("--shard", "shards", metavar="A,B", help="Only these shards."),
            click.option("--tenant", "tenants", metavar="X,Y", help="Only these tenants."),
            click.option("--json", "as_json", is_flag=True, help="Machine-readable output only."),
        ]
    ):
        f = opt(f)
    return f


@click.command("migrate")
@fleet_options
@click.option("--fail-fast", is_flag=True, help="Stop everything at the first failed tenant.")
@click.option("--jobs", type=click.IntRange(1, 64), help="Shards migrated at once (PPP_JOBS).")
@click.option(
    "--lock",
    type=click.Choice(["wait", "skip"]),
    default="wait",
    show_default=True,
    help="A tenant another run is migrating: wait (PPP_LOCK_TIMEOUT) or skip it.",
)
@click.option("--revision", default="head", show_default=True, help="Target tenant revision.")
@click.option("-v", "--verbose", is_flag=True, help="A line per migrated tenant.")
@pass_state
def migrate(
    state: State,
    config_path: str,
    shards: str | None,
    tenants: str | None,
    as_json: bool,
    fail_fast: bool,
    jobs: int | None,
    lock: str,
    revision: str,
    verbose: bool,
) -> None:
    """Veneer upgrade, tenant upgrade on every shard, veneer refresh, in that order."""
    from ppp_env.veneer import refresh

    settings = state.settings
    for shard in _csv(shards) or []:
        settings.shard(shard)  # unknown shards fail before anything runs
    out = console()

    def say(message: str) -> None:
        if not as_json:
            out.print(message)

    started = time.perf_counter()

    say("[bold]1/3 veneer[/]: alembic -n veneer upgrade head")
    try:
        command.upgrade(alembic_config(config_path, "veneer", settings), "head")
    except CommandError as exc:
        raise PPPError(f"veneer upgrade failed: {exc}") from None

    say(f"[bold]2/3 tenants[/]: alembic upgrade {revision}")
    cfg = alembic_config(config_path, "alembic", settings)
    cfg.attributes["ppp.options"] = RunOptions(
        shards=_csv(shards),
        tenants=_csv(tenants),
        fail_fast=fail_fast,
        jobs=jobs,
        lock=lock,
        refresh=False,
        output="json" if as_json else "auto",
        verbose=verbose,
    )
    failure = None
    try:
        command.upgrade(cfg, revision)
    except CommandError as exc:
        failure = str(exc)
    result: FleetResult | None = cfg.attributes.get("ppp.result")
    if result is None:
        raise PPPError(failure or "the tenant upgrade did not run")

    say("[bold]3/3 veneer refresh[/]")
    # The run saw every reachable tenant's revision: a tenant whose veneer was wired at
    # another revision (changed now, or stale from before) is refreshed.
    now = {
        t.tenant: t.after if t.status in ("migrated", "current") else t.before
        for t in result.tenants
    }
    catalog = list_tenants(settings, shards=_csv(shards), tenants=_csv(tenants))
    wanted = sorted(
        t.schema for t in catalog if t.schema in now and t.wired_revision != now[t.schema]
    )
    if wanted:
        try:
            report = refresh(settings, wanted)
            result.refreshed = list(report.refreshed)
            result.refresh_pending = list(report.pending)
            if report.errors:
                result.refresh_error = "; ".join(f"{k}: {v}" for k, v in report.errors.items())
        except PPPError as exc:
            result.refresh_error = str(exc)
    result.seconds = time.perf_counter() - started
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        say(result.veneer_summary() or "veneer: nothing to refresh")
        say(f"migrate: {result.summary()}")
    if not result.ok:
        raise PPPError(result.failure_message())


@click.command("status")
@fleet_options
@pass_state
def status(
    state: State, config_path: str, shards: str | None, tenants: str | None, as_json: bool
) -> None:
    """Per tenant: shard, revision, head or behind, veneer in step or stale."""
    settings = state.settings
    heads = ScriptDirectory.from_config(alembic_config(config_path)).get_heads()
    catalog = list_tenants(settings, shards=_csv(shards), tenants=_csv(tenants))
    rows, errors = fleet_status(settings, catalog, heads)
    if as_json:
        click.echo(json.dumps({"heads": heads, "tenants": [asdict(r) for r in rows]}, indent=2))
    else:
        table = Table(title=f"tenants (head: {', '.join(heads) or 'none'})")
        for col in ("shard", "tenant", "revision", "migrations", "veneer"):
            table.add_column(col)
        for r in rows:
            table.add_row(r.shard, r.tenant, r.revision or "-", r.migrations, r.veneer)
        console().print(table)
    if errors:
        raise PPPError("; ".join(errors.values()))


@click.command("demo")
@click.option("--tenant", "tenants", default="bluth_co,cyberdyne,initech", show_default=True)
@pass_state
def demo(state: State, tenants: str) -> None:
    """The example's queries through the veneer, as veneer_app, on one connection."""
    settings = state.settings
    out = console()
    names = _csv(tenants) or []
    with db.connection(settings.veneer, "app") as conn, conn.cursor() as cur:
        out.print(f"connected to {settings.veneer.masked_url('app')}")
        for schema in names:
            sql = EXAMPLE_QUERY.format(schema=quote_ident(validate_tenant(schema)))
            try:
                cur.execute(sql)
            except Exception as exc:
                conn.rollback()
                raise PPPError(f"{sql}: {db.first_line(exc)}") from None
            rows = cur.fetchall()
            cols = [d[0] for d in cur.description]
            table = Table(title=f"veneer=> {sql};")
            for col in cols:
                table.add_column(col)
            for row in rows:
                table.add_row(*[str(v) for v in row])
            out.print(table)
            if not rows:
                raise PPPError(f"{sql}: no rows (has `ppp migrate` run?)")
