"""``ppp rollout status|resume|abort``: the staged rollout kept in the veneer's catalog
(``ppp migrate --rollout FILE`` starts one)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from ppp_env.cli.common import CONFIG_OPTION, State, console, pass_state
from ppp_env.errors import PPPError
from ppp_env.rollout import store
from ppp_env.rollout.run import RolloutRun
from ppp_env.rollout.store import Rollout


@click.group("rollout")
def rollout_group() -> None:
    """Staged rollouts (`ppp migrate --rollout FILE`): status, resume, abort."""


def stage_table(r: Rollout) -> Table:
    table = Table()
    for col in ("stage", "tenants", "status", "migrated", "current", "failed", "check", "seconds"):
        table.add_column(col)
    for i, s in enumerate(r.stages):
        mark = "> " if i == r.stage and r.state in store.OPEN else ""
        table.add_row(
            f"{mark}{s.name}",
            str(len(s.tenants)),
            s.status,
            str(s.migrated),
            str(s.current),
            str(len(s.failed)),
            s.check or "-",
            f"{s.seconds:.1f}",
        )
    return table


def describe(r: Rollout, running: bool) -> str:
    state = r.state + (" (its process is running)" if running and r.state == "running" else "")
    if r.state == "running" and not running:
        state = "running, but no process is running it (interrupted): `ppp rollout resume`"
    line = f"rollout #{r.id} ({r.file}, to {r.revision}): {state}"
    if r.state in store.OPEN:
        line += f", at stage {r.current_stage.name!r}"
    return line + (f"; {r.reason}" if r.reason else "")


def finish_rollout(
    run: RolloutRun,
    as_json: bool,
    report: str | None = None,
    say: Callable[[str], None] | None = None,
) -> None:
    """Print what a rollout invocation did and write its report (if asked); PPPError (exit
    1) when it halted or failed, or its report could not be written."""
    from ppp_env.cli.migrate import _write_report
    from ppp_env.report import rollout_data

    problems = _write_report(report, rollout_data(run.to_json()), say or (lambda _: None))
    if as_json:
        click.echo(json.dumps(run.to_json(), indent=2, default=str))
    else:
        out = console()
        out.print(stage_table(run.rollout))
        out.print(escape(describe(run.rollout, False)) + f" ({run.seconds:.1f} s)")
    if not run.ok:
        problems.insert(0, run.failure_message())
    if problems:
        raise PPPError("\n".join(problems))


@rollout_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="The rollout as one JSON object.")
@pass_state
def rollout_status(state: State, as_json: bool) -> None:
    """Where the open rollout stands (else the last one): its stages, their tenants, failures
    and checks. Exit code 0 whatever its state (1 only when the catalog cannot be read)."""
    r, running = store.status(state.settings)
    if as_json:
        data = r.to_json() if r else None
        click.echo(json.dumps({"rollout": data, "running": running}, indent=2, default=str))
        return
    out = console()
    if r is None:
        out.print("no rollout yet (`ppp migrate --rollout FILE` starts one)")
        return
    out.print(escape(describe(r, running)))
    out.print(stage_table(r))
    failed = r.current_stage.failed if r.state in store.OPEN else {}
    for tenant, why in list(failed.items())[:20]:
        out.print(f"  {tenant}: {why}", markup=False)


@rollout_group.command("resume")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output only.")
@click.option(
    "--report",
    "report",
    metavar="FILE.html",
    help="Also write the report of this invocation's stages (as `ppp migrate --report`).",
)
@CONFIG_OPTION
@pass_state
def rollout_resume(
    state: State, as_json: bool, report: str | None, config_path: Path | None
) -> None:
    """Go on with the halted (or interrupted) rollout, from the stage it stopped at (that
    stage runs again: its tenants already migrated are current). Refused when the tenant
    chain changed since the rollout started. Exit code 1 when it halts again."""
    from ppp_env.cli.migrate import _sayer, _veneer_step
    from ppp_env.operations import MigrateOptions
    from ppp_env.report import check_target
    from ppp_env.rollout.run import resume_rollout

    if report is not None:
        check_target(report)  # before anything runs
    say = _sayer(as_json)
    run = resume_rollout(
        state.settings,
        config_path,
        MigrateOptions(output="json" if as_json else "auto"),
        veneer_step=_veneer_step(state.settings, config_path, as_json),
        say=lambda step, detail: say(f"[bold]{escape(step)}[/]: {escape(detail)}"),
    )
    finish_rollout(run, as_json, report, say)


@rollout_group.command("abort")
@pass_state
def rollout_abort(state: State) -> None:
    """Forget the open rollout: no stage runs any more; every tenant stays as it is (a later
    `ppp migrate` migrates the rest). Refused while a process runs it."""
    r = store.abort(state.settings)
    console().print(escape(f"rollout #{r.id} aborted at stage {r.current_stage.name!r}"))
