"""``ppp veneer ...``: the veneer's wiring (``ppp tenant ...`` is in :mod:`ppp_env.cli.tenant`).

Thin: parse, call the veneer room (env, tables, catalog, onboarding), print.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
from rich.table import Table

from ppp_env import veneer
from ppp_env.cli.common import CONFIG_OPTION, State, console, pass_state
from ppp_env.errors import PPPError
from ppp_env.veneer import catalog, views
from ppp_env.veneer import env as veneer_env
from ppp_env.veneer import onboarding as tenant_revision


def show_alembic_progress() -> None:
    """Alembic's `Running upgrade ...` lines and PPP's changes, as plain lines on stderr."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    for name in ("alembic.runtime.migration", "ppp"):
        logging.getLogger(name).setLevel(logging.INFO)


@click.group("veneer")
def veneer_group() -> None:
    """The veneer: catalog, foreign servers, per-tenant foreign tables."""


def print_wiring(result: veneer_env.UpgradeResult) -> None:
    out = console()
    report = result.wired
    if report is None:
        return
    if report.refreshed:
        out.print(f"wired {_count(report.refreshed)}: {_short(report.refreshed)}")
    if report.pending:
        out.print(
            f"pending (no schema on its shard yet; run `alembic upgrade head`): "
            f"{_short(report.pending)}"
        )


def _count(names: list[str]) -> str:
    return f"{len(names)} tenant{'s' if len(names) != 1 else ''}"


def _short(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def revs(revs: tuple[str, ...]) -> str:
    if len(revs) > 6:
        return f"{len(revs)} heads"
    return ", ".join(revs) or "base"


@veneer_group.command("upgrade")
@click.argument("revision", default="head")
@CONFIG_OPTION
@pass_state
def veneer_upgrade(state: State, revision: str, config_path: Path | None) -> None:
    """Apply the veneer's revisions (same as `alembic -n veneer upgrade head`).

    Every tenant's onboarding revision is a head of its own: `head` and `heads` both apply
    all of them. Also reconciles the foreign servers and user mappings with the settings.
    """
    show_alembic_progress()
    cfg = veneer_env.veneer_config(state.settings, config_path)
    result = veneer_env.upgrade(state.settings, revision, cfg)
    out = console()
    for change in result.changes:
        out.print(change)
    print_wiring(result)
    if result.before == result.after:
        out.print(f"veneer at {revs(result.after)}: no revision to apply")
    else:
        out.print(f"veneer upgraded: {revs(result.before)} -> {revs(result.after)}")


@veneer_group.command("downgrade")
@click.argument("revision", required=False)
@click.option(
    "--tenant",
    metavar="NAME",
    help="Take back only this tenant's onboarding revision (= REV@-1); the others stay.",
)
@CONFIG_OPTION
@pass_state
def veneer_downgrade(
    state: State, revision: str | None, tenant: str | None, config_path: Path | None
) -> None:
    """Revert veneer revisions down to REVISION (`alembic -n veneer downgrade REVISION`).

    One tenant: `--tenant NAME`, or `<its revision>@-1`. Downgrading a tenant's onboarding
    revision unwires it and removes it from the catalog; its data on the shard stays, and
    so does its revision file (delete it, or the next upgrade onboards the tenant again).
    """
    if tenant is not None and revision is None:
        show_alembic_progress()
        result = tenant_revision.downgrade_tenant(
            state.settings, tenant, veneer_env.veneer_config(state.settings, config_path)
        )
    elif revision is not None and tenant is None:
        show_alembic_progress()
        result = veneer_env.downgrade(
            state.settings, revision, veneer_env.veneer_config(state.settings, config_path)
        )
    else:
        raise click.UsageError("give a REVISION or --tenant NAME (one of the two)")
    out = console()
    for change in result.changes:
        out.print(change)
    out.print(f"veneer downgraded: {revs(result.before)} -> {revs(result.after)}")


@veneer_group.command("refresh")
@click.argument("tenants", nargs=-1, metavar="[TENANT]...")
@pass_state
def veneer_refresh(state: State, tenants: tuple[str, ...]) -> None:
    """Re-import the foreign tables of TENANTs (default: every tenant), atomically. With
    PPP_VENEER_WIRING=on-demand the default is every tenant wired now, and a TENANT named is
    wired (its first use through the veneer)."""
    settings = state.settings
    report = veneer.refresh(
        settings, list(tenants) or None, wired_only=settings.wires_on_demand and not tenants
    )
    out = console()
    if report.refreshed:
        out.print(
            f"refreshed {len(report.refreshed)} tenant{'s' if len(report.refreshed) != 1 else ''}"
            f" in {report.seconds:.2f} s: {', '.join(report.refreshed)}"
        )
    if report.pending:
        out.print(
            f"pending (no schema on its shard yet; run `alembic upgrade head`): "
            f"{', '.join(report.pending)}"
        )
    if not (report.refreshed or report.pending or report.errors):
        out.print("no tenants in the catalog")
    for schema, error in report.errors.items():
        click.echo(f"Error: tenant {schema}: {error}", err=True)
    if report.errors:
        sys.exit(1)


@veneer_group.command("unwire")
@click.argument("tenants", nargs=-1, required=True, metavar="TENANT...")
@pass_state
def veneer_unwire(state: State, tenants: tuple[str, ...]) -> None:
    """Drop TENANTs' foreign tables from the veneer; their data stays on their shards and the
    router still reaches them. They go back to pending: with PPP_VENEER_WIRING=on-demand runs
    leave them unwired until `ppp veneer refresh TENANT` wires one again. An unknown tenant,
    or one being created, moved or removed, changes nothing (exit code 1)."""
    veneer.unwire_tenants(state.settings, list(tenants))
    console().print(
        f"unwired {len(tenants)} tenant{'s' if len(tenants) != 1 else ''}: {', '.join(tenants)} "
        "(data kept on the shards; `ppp veneer refresh TENANT` wires one again)",
        markup=False,
    )


@veneer_group.command("status")
@CONFIG_OPTION
@pass_state
def veneer_status(state: State, config_path: Path | None) -> None:
    """The veneer's revision (against head) and its shards' foreign servers."""
    st = veneer_env.status(state.settings, veneer_env.veneer_config(state.settings, config_path))
    out = console()
    where = "at head" if st.at_head else f"head is {revs(st.heads)}: run `ppp veneer upgrade`"
    out.print(f"veneer revision: {revs(st.current)} ({where})")
    if st.servers:
        table = Table()
        for col in ("shard", "foreign server address", "tenants", "pending", "in settings"):
            table.add_column(col)
        for s in st.servers:
            table.add_row(
                s.shard, s.address, str(s.tenants), str(s.pending), "yes" if s.in_settings else "NO"
            )
        out.print(table)


@veneer_group.group("cross-tenant")
def cross_tenant_group() -> None:
    """Opt-in views ppp_all.<table>: a table over every active tenant, with a tenant column."""


@cross_tenant_group.command("add")
@click.argument("table")
@pass_state
def cross_tenant_add(state: State, table: str) -> None:
    """Build ppp_all.TABLE over every tenant that has TABLE (kept by every refresh)."""
    with catalog.admin_connection(state.settings) as conn:
        report = views.add_table(conn, state.settings, table)
    out = console()
    tenants = report.built.get(table, [])
    out.print(f"ppp_all.{table}: {_count(tenants)}")
    for tenant, why in report.left_out.get(table, {}).items():
        out.print(f"left out {tenant}: {why}")


@cross_tenant_group.command("remove")
@click.argument("table")
@pass_state
def cross_tenant_remove(state: State, table: str) -> None:
    """Drop ppp_all.TABLE and stop keeping it."""
    with catalog.admin_connection(state.settings) as conn:
        removed = views.remove_table(conn, state.settings, table)
    if not removed:
        raise PPPError(f"{table!r} has no cross-tenant view (see `ppp veneer cross-tenant list`)")
    console().print(f"ppp_all.{table}: dropped")


@cross_tenant_group.command("list")
@pass_state
def cross_tenant_list(state: State) -> None:
    """The tables that have a cross-tenant view."""
    with catalog.admin_connection(state.settings) as conn:
        tables = views.list_tables(conn)
    console().print("\n".join(f"ppp_all.{t}" for t in tables) or "no cross-tenant views")
