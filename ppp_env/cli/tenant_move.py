"""``ppp tenant move`` and ``ppp tenant cleanup``: parse, call ppp_env.lifecycle.move, print."""

from __future__ import annotations

import click

from ppp_env.cli.common import State, console, pass_state
from ppp_env.cli.tenant import tenant_group
from ppp_env.lifecycle.move import MODES, cleanup_tenant, move_tenant


@tenant_group.command("move")
@click.argument("schema")
@click.option("--to", "target", metavar="SHARD", help="The shard to move the tenant to.")
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default=None,
    help="block (default): writes refused during the whole copy; online: logical "
    "replication, writes refused only at the cutover (PostgreSQL 15: the shards' superusers; "
    "16 and later: what `ppp init` grants).",
)
@click.option(
    "--abort",
    is_flag=True,
    help="Take back the unfinished move of SCHEMA (before its switch): the tenant stays on its "
    "source, writable again.",
)
@pass_state
def tenant_move(
    state: State, schema: str, target: str | None, mode: str | None, abort: bool
) -> None:
    """Move tenant SCHEMA to another shard: copy, verify, switch the veneer, keep the source.

    The source copy stays, renamed ppp_moved_<SCHEMA>_<time> and closed to the app role,
    until `ppp tenant cleanup SCHEMA`. An interrupted move resumes when the same command
    runs again.
    """
    out = console()
    report = move_tenant(
        state.settings,
        schema,
        target,
        mode=mode,  # type: ignore[arg-type]
        abort=abort,
        say=out.print,
    )
    if report.aborted:
        return
    rows = sum(report.rows.values())
    out.print(
        f"moved {schema} from {report.source} to {report.target} ({report.mode} mode): "
        f"{len(report.rows)} table(s), {rows} row(s) verified in {report.seconds:.1f} s; "
        f"writes refused for {report.blocked_seconds:.2f} s"
    )
    out.print(
        f"the source copy is {report.moved_copy} on {report.source} (read-only): "
        f"`ppp tenant cleanup {schema}` drops it"
    )


@tenant_group.command("cleanup")
@click.argument("schema")
@pass_state
def tenant_cleanup(state: State, schema: str) -> None:
    """Drop the source copies that moves of tenant SCHEMA left behind (ppp_moved_...)."""
    out = console()
    report = cleanup_tenant(state.settings, schema)
    if not report.dropped:
        out.print(f"{schema}: no moved copy on any shard, nothing to drop")
    for shard, copy in report.dropped:
        out.print(f"{schema}: dropped {copy} on {shard}")
