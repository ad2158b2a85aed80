"""``ppp tenant ...`` (add, create, remove, list, repair) and ``ppp doctor``.

Thin: parse, call the veneer room (onboarding revisions) or the lifecycle room, print.
Other commands of the group (move, cleanup) register themselves on :data:`tenant_group`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from ppp_env.cli.common import CONFIG_OPTION, State, console, pass_state
from ppp_env.cli.veneer import print_wiring, revs, show_alembic_progress
from ppp_env.errors import PPPError
from ppp_env.veneer import env as veneer_env
from ppp_env.veneer import onboarding as tenant_revision
from ppp_env.veneer.catalog import parse_tags

TAG_OPTION = click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="KEY=VALUE",
    help="A tag of the tenant (repeat for more); rollouts select tenants by tags.",
)


@click.group("tenant")
def tenant_group() -> None:
    """Tenants: add (a revision), create and remove (at runtime), list, tag, repair."""


@tenant_group.command("add")
@click.argument("schema")
@click.option("--shard", required=True, metavar="NAME", help="The shard the tenant lives on.")
@click.option(
    "--no-catalog-check",
    is_flag=True,
    help="Do not look the tenant up in the veneer's catalog (no connection needed).",
)
@click.option("--upgrade", is_flag=True, help="Then apply it (`ppp veneer upgrade`).")
@TAG_OPTION
@CONFIG_OPTION
@pass_state
def tenant_add(
    state: State,
    schema: str,
    shard: str,
    no_catalog_check: bool,
    upgrade: bool,
    tags: tuple[str, ...],
    config_path: Path | None,
) -> None:
    """Write the onboarding revision of tenant SCHEMA on shard NAME.

    The file is veneer_migrations/versions/<rev>_<SCHEMA>.py: its upgrade registers the
    tenant in the catalog and wires it; its downgrade unwires and unregisters it.
    """
    settings = state.settings
    cfg = veneer_env.veneer_config(settings, config_path)
    path = tenant_revision.add_tenant_revision(
        settings,
        schema,
        shard,
        config=cfg,
        check_catalog=not no_catalog_check,
        tags=parse_tags(tags),
    )
    out = console()
    out.print(f"wrote {path}")
    if upgrade:
        show_alembic_progress()
        result = veneer_env.upgrade(
            settings, "head", veneer_env.veneer_config(settings, config_path)
        )
        print_wiring(result)
        out.print(f"veneer upgraded: {revs(result.before)} -> {revs(result.after)}")
    else:
        out.print("apply it with `ppp veneer upgrade`, then `alembic upgrade head` for its tables")


@tenant_group.command("create")
@click.argument("schema")
@click.option(
    "--shard",
    metavar="NAME",
    default=None,
    help="The shard to create it on (default: PPP_PLACEMENT chooses, fewest tenants).",
)
@TAG_OPTION
@CONFIG_OPTION
@pass_state
def tenant_create(
    state: State, schema: str, shard: str | None, tags: tuple[str, ...], config_path: Path | None
) -> None:
    """Create tenant SCHEMA now: catalog, schema and migrations on its shard, veneer wiring.

    No revision file. A create that failed half-way leaves the tenant 'provisioning': run
    the same command again to finish it.
    """
    from ppp_env.lifecycle import create_tenant

    result = create_tenant(state.settings, schema, shard, config_path, tags=parse_tags(tags))
    console().print(
        f"tenant {result.schema} {'finished' if result.resumed else 'created'} on shard "
        f"{result.shard} at {result.revision or 'base'} in {result.seconds * 1000:.0f} ms"
    )


@tenant_group.command("remove")
@click.argument("schema")
@click.option("--drop-data", is_flag=True, help="Also drop its schema on its shard (needs --yes).")
@click.option("--yes", is_flag=True, help="Confirm --drop-data.")
@click.option(
    "--archive",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="First write a verified pg_dump of its schema to this (new) file.",
)
@pass_state
def tenant_remove(
    state: State, schema: str, drop_data: bool, yes: bool, archive: Path | None
) -> None:
    """Unwire tenant SCHEMA from the veneer and mark it removed; its data stays on its shard
    unless --drop-data --yes (after a verified --archive, if given)."""
    from ppp_env.lifecycle import remove_tenant

    if drop_data and not yes:
        raise PPPError("--drop-data deletes the tenant's data: confirm with --yes")
    result = remove_tenant(state.settings, schema, drop_data=drop_data, archive=archive)
    out = console()
    if result.archive is not None:
        out.print(f"archived {schema} to {result.archive} ({result.archive_bytes} bytes, verified)")
    if result.dropped:
        out.print(f"tenant {schema} removed; its schema dropped on shard {result.shard}")
    else:
        out.print(f"tenant {schema} removed; its data stays on shard {result.shard}")


@tenant_group.command("tag")
@click.argument("schema")
@click.argument("pairs", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--remove", "remove", multiple=True, metavar="KEY", help="Remove this tag (repeat).")
@pass_state
def tenant_tag(state: State, schema: str, pairs: tuple[str, ...], remove: tuple[str, ...]) -> None:
    """Set (add or replace) tags of tenant SCHEMA, or --remove them; prints its tags after.

    Tags are kept in the veneer's catalog, shown by `ppp tenant list`, and select tenants
    for the stages of a rollout (`ppp migrate --rollout FILE`).
    """
    from ppp_env.lifecycle.listing import format_tags
    from ppp_env.veneer import catalog

    if not pairs and not remove:
        raise PPPError("nothing to do: give KEY=VALUE pairs and/or --remove KEY")
    add = parse_tags(pairs)
    both = sorted(set(add) & set(remove))
    if both:
        raise PPPError(f"tag {both[0]!r} is both set and removed: choose one")
    with catalog.admin_connection(state.settings) as conn:
        tags = catalog.set_tags(conn, schema, add, remove)
    console().print(f"tenant {schema}: {format_tags(tags)}", markup=False)


@tenant_group.command("list")
@click.argument("tenants", nargs=-1, metavar="[TENANT]...")
@click.option("--shard", "shards", multiple=True, metavar="NAME", help="Only these shards.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for pipelines.")
@click.option(
    "--exact-sizes",
    is_flag=True,
    help="Exact sizes for every tenant listed (opens each of their relations on the shards: "
    "slow for a large fleet). Default: exact for the TENANTs named, else estimated (~).",
)
@pass_state
def tenant_list(
    state: State,
    tenants: tuple[str, ...],
    shards: tuple[str, ...],
    as_json: bool,
    exact_sizes: bool,
) -> None:
    """The catalog's tenants: schema, shard, state, origin, revision and size on its shard,
    and their tags (a column when any tenant has tags; always in --json).

    Sizes are estimated from the planner's statistics (shown with ~, `size_estimate` in
    --json) unless TENANTs are named or --exact-sizes is given (`size` in --json)."""
    from ppp_env.lifecycle.listing import format_tags, human_size, tenant_rows

    found = tenant_rows(
        state.settings,
        shards=list(shards) or None,
        tenants=list(tenants) or None,
        exact=exact_sizes or bool(tenants),
    )
    if as_json:  # written row by row: no second copy of a large fleet in one string
        click.echo("[", nl=False)
        for i in range(0, len(found), 1000):
            chunk = ",".join(json.dumps(r.to_json()) for r in found[i : i + 1000])
            click.echo(("," if i else "") + chunk, nl=False)
        click.echo("]")
        return
    if not found:
        console().print("no tenants")
        return
    table = Table()
    columns = ["schema", "shard", "state", "origin", "revision", "size", "wired revision"]
    tagged = any(r.tags for r in found)
    for col in columns + (["tags"] if tagged else []):
        table.add_column(col)
    for r in found:
        revision = (
            "unreachable" if r.error else (r.revision or ("base" if r.exists else "no schema"))
        )
        table.add_row(
            r.schema,
            r.shard,
            r.state,
            r.origin,
            revision,
            human_size(r.size, r.size_estimate),
            r.wired_revision or "-",
            *([format_tags(r.tags)] if tagged else []),
        )
    console().print(table)
    for err in dict.fromkeys(r.error for r in found if r.error):
        console(stderr=True).print(f"warning: {err}")


@click.command("doctor")
@click.argument("tenants", nargs=-1, metavar="[TENANT]...")
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
@CONFIG_OPTION
@click.pass_context
def doctor_command(
    ctx: click.Context, tenants: tuple[str, ...], as_json: bool, config_path: Path | None
) -> None:
    """Compare the catalog, the shards and the veneer; report every difference (exit code
    1 when there is any): missing or orphan schemas, stale or missing foreign tables,
    tenants behind head, tenants a killed run left inside a revision outside a transaction,
    moves left half done, schema drift between tenants."""
    from ppp_env.lifecycle import doctor

    state = ctx.find_object(State)
    assert state is not None
    report = doctor(state.settings, config_path, tenants=list(tenants) or None)
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        out = console()
        for f in report.findings:
            out.print(f.line(), markup=False)
        counts = ", ".join(f"{n} {k}" for k, n in sorted(report.kinds().items()))
        out.print(
            f"{report.tenants} tenant(s) on {report.shards} shard(s): "
            + (f"{len(report.findings)} problem(s): {counts}" if report.findings else "all good")
        )
    if not report.ok:
        ctx.exit(1)


@tenant_group.command("repair")
@click.argument("schema", metavar="TENANT")
@click.option(
    "--stamp",
    is_flag=True,
    help="Mark the interrupted revision as done (you checked its work is complete and valid).",
)
@click.option(
    "--retry",
    is_flag=True,
    help="Drop the INVALID indexes it left and clear the record: the next run retries it.",
)
@pass_state
def tenant_repair(state: State, schema: str, stamp: bool, retry: bool) -> None:
    """Show, and with --stamp or --retry repair, a tenant that a killed run left inside a
    revision that runs outside a transaction (autocommit_block, e.g. CREATE INDEX
    CONCURRENTLY): the revision, since when, and the indexes it built (valid or INVALID).

    --stamp writes the revision as the tenant's version (refused while an index it built is
    INVALID); --retry drops the INVALID indexes it left (never a valid one: refused then) and
    clears the record, so the next `alembic upgrade` runs the revision again. Without either
    nothing changes.

    Exit codes: 0 repaired; 1 nothing changed: unknown tenant, nothing to repair, the revision
    running now, neither or both options, or the repair refused (the line says why).
    """
    from ppp_env.lifecycle.repair import find_interrupted, retry_interrupted, stamp_interrupted

    if stamp and retry:
        raise PPPError("choose one of --stamp and --retry, not both: nothing changed")
    record = find_interrupted(state.settings, schema)
    out = console()
    out.print(f"{record.shard}/{schema}: {record.describe()}", markup=False)
    if not (stamp or retry):
        raise PPPError(
            "nothing changed: choose --stamp (the revision's work is complete and valid: mark "
            f"it done, {' '.join(record.heads_after)}) or --retry (drop its INVALID indexes, "
            "the next run retries it)"
        )
    if stamp:
        stamp_interrupted(state.settings, record)
        out.print(
            f"stamped {schema} at {' '.join(record.heads_after)}; its record is cleared "
            f"(`ppp veneer refresh {schema}` brings its foreign tables in step)",
            markup=False,
        )
        return
    result = retry_interrupted(state.settings, record)
    dropped = f"dropped INVALID index {', '.join(result.dropped)}; " if result.dropped else ""
    out.print(
        f"{dropped}record cleared: the next `alembic upgrade` runs {record.label} again",
        markup=False,
    )
