"""``ppp migrate``, ``ppp status`` and ``ppp demo``: the fleet's migrations and where it stands."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
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
from ppp_env.report import check_target, write_run_report, write_status_report
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
    "--jobs-per-shard",
    type=click.IntRange(1, 64),
    help="Tenants of one shard migrated at once, each on its own connection "
    "(PPP_JOBS_PER_SHARD, default 1).",
)
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
@click.option(
    "--rollout",
    "rollout_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="Migrate the tenants in the stages of this rollout file (TOML; see docs/"
    "release-pipelines.md): a halted rollout exits 1 and waits for `ppp rollout resume`.",
)
@click.option("-v", "--verbose", is_flag=True, help="A line per migrated tenant.")
@click.option(
    "--report",
    "report",
    metavar="FILE.html",
    help="Also write the run's report: one self-contained HTML file (timeline per shard, "
    "lock waits and retries, failures, slowest tenants, revisions; a rollout's stages). The "
    "path is checked before anything runs; the report never changes the exit code, except "
    "when it cannot be written: `Error: cannot write the report to FILE...`, exit code 1.",
)
@pass_state
def migrate(
    state: State,
    config_path: str | None,
    shards: str | None,
    tenants: str | None,
    as_json: bool,
    fail_fast: bool,
    jobs: int | None,
    jobs_per_shard: int | None,
    lock: str,
    lock_timeout: float | None,
    retries: int | None,
    statement_timeout: float | None,
    revision: str,
    rollout_file: Path | None,
    verbose: bool,
    report: str | None,
) -> None:
    """Veneer upgrade, shared migrations per shard, tenant upgrade, veneer refresh, in order.

    With --rollout FILE, the tenant step runs stage by stage (each stage: shared, tenants,
    refresh), with each stage's error policy, check and soak time in between."""
    settings = state.settings
    if report is not None:
        check_target(report)  # before anything runs
    say, veneer_step = _sayer(as_json), _veneer_step(settings, config_path, as_json)
    options = MigrateOptions(
        shards=_csv(shards),
        tenants=_csv(tenants),
        revision=revision,
        fail_fast=fail_fast,
        jobs=jobs,
        jobs_per_shard=jobs_per_shard,
        lock=lock,
        lock_timeout=lock_timeout,
        retries=retries,
        statement_timeout=statement_timeout,
        output="json" if as_json else "auto",
        verbose=verbose,
    )
    if rollout_file is not None:
        from ppp_env.cli.rollout import finish_rollout
        from ppp_env.rollout.run import start_rollout

        run = start_rollout(
            settings,
            config_path,
            rollout_file,
            options,
            veneer_step=veneer_step,
            say=lambda step, detail: say(f"[bold]{escape(step)}[/]: {escape(detail)}"),
        )
        finish_rollout(run, as_json, report, say)
        return
    result = operations.migrate(
        settings,
        config_path,
        options,
        veneer_step=veneer_step,
        say=lambda step, detail: say(f"[bold]{escape(step)}[/]: {escape(detail)}"),
    )
    _note_open_rollout(settings)
    data = result.to_json()
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        say(result.tenants.veneer_summary() or "veneer: nothing to refresh")
        say(f"migrate: {result.summary()}")
    problems = [] if result.ok else [result.failure_message()]
    problems += _write_report(report, data, say)
    if problems:
        raise PPPError("\n".join(problems))


def _write_report(path: str | None, data: dict[str, Any], say: Callable[[str], None]) -> list[str]:
    """Write the run's report to ``path`` (if any); its error, if it could not be written."""
    if path is None:
        return []
    try:
        say(f"report: {escape(str(write_run_report(path, data)))}")
    except PPPError as exc:
        return [str(exc)]
    return []


def _note_open_rollout(settings: Any) -> None:
    """A plain run while a rollout is open: say so on stderr (the run itself is not held)."""
    from ppp_env.rollout import store
    from ppp_env.veneer import catalog

    try:
        with catalog.admin_connection(settings) as conn:
            found = store.open_rollout(conn) if catalog.has_release(conn) else None
    except PPPError:
        return
    if found is not None:
        console(stderr=True).print(
            f"note: {store.describe_open(found)}; this run did not wait for it "
            "(`ppp rollout status`)",
            markup=False,
        )


def _sayer(as_json: bool) -> Callable[[str], None]:
    out = console()

    def say(message: str) -> None:
        if not as_json:
            out.print(message)

    return say


def _veneer_step(
    settings: Any, config_path: str | Path | None, as_json: bool
) -> Callable[[], None]:
    """``ppp migrate``'s step 1 (also a rollout's, once): the veneer's revisions."""
    say = _sayer(as_json)

    def veneer_step() -> None:
        say("[bold]1/4 veneer[/]: alembic -n veneer upgrade heads")
        try:  # every onboarding revision is a head; new tenants are wired by the refresh step
            cfg = alembic_config(config_path, "veneer")
            veneer_env.upgrade(settings, "heads", cfg, wire=False)
        except PPPError as exc:
            raise PPPError(f"veneer upgrade failed: {exc}") from None

    return veneer_step


@click.command("status")
@fleet_options
@click.option(
    "--html",
    "html",
    metavar="FILE.html",
    help="Also write the status report: one self-contained HTML file (tenants by revision per "
    "shard; behind, stale and unreachable tenants). It never changes the exit code, except "
    "when it cannot be written: `Error: cannot write the report to FILE...`, exit code 1.",
)
@pass_state
def status(
    state: State,
    config_path: str | None,
    shards: str | None,
    tenants: str | None,
    as_json: bool,
    html: str | None,
) -> None:
    """Per tenant: shard, revision, head or behind, veneer in step or stale; per shard: shared."""
    settings = state.settings
    if html is not None:
        check_target(html)  # before anything runs
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
    data = {"heads": heads, "tenants": [asdict(r) for r in rows], "shared": shared}
    data["errors"] = errors
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        _print_status(data)
    problems = list(errors.values())
    if html is not None:
        try:
            path = write_status_report(html, data)
            if not as_json:
                console().print(f"report: {escape(str(path))}")
        except PPPError as exc:
            problems.append(str(exc))
    if problems:
        raise PPPError("; ".join(problems))


def _print_status(data: dict[str, Any]) -> None:
    out = console()
    shared = data["shared"]
    if shared is not None:
        table = Table(title=f"shared (head: {', '.join(shared['heads']) or 'none'})")
        for col in ("shard", "revision", "migrations"):
            table.add_column(col)
        for r in shared["shards"]:
            table.add_row(r["shard"], r["revision"] or "(base)", r["migrations"])
        out.print(table)
    table = Table(title=f"tenants (head: {', '.join(data['heads']) or 'none'})")
    for col in ("shard", "tenant", "revision", "migrations", "veneer"):
        table.add_column(col)
    for r in data["tenants"]:
        table.add_row(r["shard"], r["tenant"], r["revision"] or "-", r["migrations"], r["veneer"])
    out.print(table)


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
