"""``ppp migrate``, ``ppp status`` and ``ppp demo``: the fleet's migrations and where it stands."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

import click
from alembic.script import ScriptDirectory
from rich.markup import escape
from rich.table import Table

from ppp_env import db, operations
from ppp_env.cli.common import State, console, pass_state
from ppp_env.errors import PPPError
from ppp_env.fleet.status import fleet_status
from ppp_env.identifiers import quote_ident, validate_tenant
from ppp_env.operations import MigrateOptions, alembic_config
from ppp_env.shared import env as shared_env
from ppp_env.veneer import env as veneer_env
from ppp_env.veneer.catalog import in_service, list_tenants

EXAMPLE_QUERY = "SELECT * FROM {schema}.authors WHERE first_name = 'Ernest'"


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
                default=None,
                metavar="INI",
                help="Alembic configuration file (default: ALEMBIC_CONFIG, ./alembic.ini, "
                "the project's).",
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
@click.option(
    "--lock-timeout",
    type=click.FloatRange(0, 86_400),
    metavar="SECONDS",
    help="A fixed longest wait of a migration statement for a table lock, every attempt: the "
    "longest an application query queues behind the migration (default: escalating per "
    "attempt, PPP_MIGRATION_LOCK_TIMEOUT_START 0.02 doubling to PPP_MIGRATION_LOCK_TIMEOUT 2).",
)
@click.option(
    "--retries",
    type=click.IntRange(0, 100),
    help="Further attempts for a tenant that hit its lock wait (PPP_LOCK_RETRIES, default 5; "
    "never fewer than it takes to reach the full timeout once).",
)
@click.option(
    "--statement-timeout",
    type=click.FloatRange(0, 86_400),
    metavar="SECONDS",
    help="Longest run of a migration statement, 0 no limit (PPP_STATEMENT_TIMEOUT, default 0).",
)
@click.option("--revision", default="head", show_default=True, help="Target tenant revision.")
@click.option("-v", "--verbose", is_flag=True, help="A line per migrated tenant.")
@pass_state
def migrate(
    state: State,
    config_path: str | None,
    shards: str | None,
    tenants: str | None,
    as_json: bool,
    fail_fast: bool,
    jobs: int | None,
    lock: str,
    lock_timeout: float | None,
    retries: int | None,
    statement_timeout: float | None,
    revision: str,
    verbose: bool,
) -> None:
    """Veneer upgrade, shared migrations per shard, tenant upgrade, veneer refresh, in order."""
    settings = state.settings
    out = console()

    def say(message: str) -> None:
        if not as_json:
            out.print(message)

    def veneer_step() -> None:
        say("[bold]1/4 veneer[/]: alembic -n veneer upgrade heads")
        try:  # every onboarding revision is a head; new tenants are wired by the refresh step
            cfg = alembic_config(config_path, "veneer")
            veneer_env.upgrade(settings, "heads", cfg, wire=False)
        except PPPError as exc:
            raise PPPError(f"veneer upgrade failed: {exc}") from None

    options = MigrateOptions(
        shards=_csv(shards),
        tenants=_csv(tenants),
        revision=revision,
        fail_fast=fail_fast,
        jobs=jobs,
        lock=lock,
        lock_timeout=lock_timeout,
        retries=retries,
        statement_timeout=statement_timeout,
        output="json" if as_json else "auto",
        verbose=verbose,
    )
    result = operations.migrate(
        settings,
        config_path,
        options,
        veneer_step=veneer_step,
        say=lambda step, detail: say(f"[bold]{escape(step)}[/]: {escape(detail)}"),
    )
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        say(result.tenants.veneer_summary() or "veneer: nothing to refresh")
        say(f"migrate: {result.summary()}")
    if not result.ok:
        raise PPPError(result.failure_message())


@click.command("status")
@fleet_options
@pass_state
def status(
    state: State, config_path: str | None, shards: str | None, tenants: str | None, as_json: bool
) -> None:
    """Per tenant: shard, revision, head or behind, veneer in step or stale; per shard: shared."""
    settings = state.settings
    ini = veneer_env.find_alembic_ini(config_path)
    heads = ScriptDirectory.from_config(alembic_config(ini)).get_heads()
    catalog = in_service(list_tenants(settings, shards=_csv(shards), tenants=_csv(tenants)))
    rows, errors = fleet_status(settings, catalog, heads)
    shared: dict[str, Any] | None = None
    if shared_env.has_shared_section(ini):
        names = list(dict.fromkeys(t.shard for t in catalog)) if tenants else _csv(shards)
        shared_heads, shared_rows, shared_errors = shared_env.status(settings, ini, names)
        shared = {"heads": shared_heads, "shards": [asdict(r) for r in shared_rows]}
        for shard, error in shared_errors.items():
            errors.setdefault(shard, error)
    if as_json:
        click.echo(
            json.dumps(
                {"heads": heads, "tenants": [asdict(r) for r in rows], "shared": shared},
                indent=2,
            )
        )
    else:
        out = console()
        if shared is not None:
            table = Table(title=f"shared (head: {', '.join(shared['heads']) or 'none'})")
            for col in ("shard", "revision", "migrations"):
                table.add_column(col)
            for r in shared["shards"]:
                table.add_row(r["shard"], r["revision"] or "(base)", r["migrations"])
            out.print(table)
        table = Table(title=f"tenants (head: {', '.join(heads) or 'none'})")
        for col in ("shard", "tenant", "revision", "migrations", "veneer"):
            table.add_column(col)
        for r in rows:
            table.add_row(r.shard, r.tenant, r.revision or "-", r.migrations, r.veneer)
        out.print(table)
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
