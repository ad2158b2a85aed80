"""What ``migrations/env.py`` runs: Alembic commands over every tenant of the fleet.

The command Alembic is running decides the shape:

- ``upgrade``, ``downgrade``, ``stamp``: the fleet runner (``pool``: a worker per shard),
  every tenant on every shard, then a veneer refresh of the tenants whose revision changed;
- ``current``: one line per tenant: shard, tenant, revision;
- ``--sql`` (offline): the SQL for every shard and tenant, with a header per tenant, on
  stdout or one file per shard (``-x sql_dir=DIR``);
- anything else (``revision --autogenerate``, ``check``, ``history -i``): one template
  tenant schema (``-x template=NAME``, else the first tenant whose schema exists).

``-x shard=a,b`` and ``-x tenant=x,y`` narrow every command; see RunOptions for the rest.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from logging.config import fileConfig
from pathlib import Path
from typing import Any, TextIO

from alembic.runtime.environment import EnvironmentContext
from alembic.util import CommandError
from sqlalchemy.pool import NullPool

from ppp_env import db
from ppp_env.alembic_env import command_name, environment
from ppp_env.errors import PPPError
from ppp_env.fleet.hooks import AlembicHooks, Rendered
from ppp_env.fleet.options import MUTATING, RunOptions
from ppp_env.fleet.pool import run_fleet
from ppp_env.fleet.progress import make_display
from ppp_env.fleet.rendering import (
    render_steps,
    run_steps_online,
    step_label,
    uses_autocommit,
    util_to_tuple,
)
from ppp_env.fleet.results import FleetResult
from ppp_env.fleet.status import shard_states
from ppp_env.identifiers import quote_ident
from ppp_env.settings import Settings, load_settings
from ppp_env.tenant_state import group_by_shard
from ppp_env.veneer.catalog import Tenant, in_service, list_tenants

log = logging.getLogger("ppp.migrations")


#: The names of Alembic's step functions, for in-process callers that say nothing else.


def run_migrations(target_metadata: Any = None, **configure_kw: Any) -> None:
    """Entry point for ``migrations/env.py``; PPPError becomes Alembic's ``FAILED: ...``."""
    env = environment()
    config = env.config
    if (
        config.config_file_name
        and config.file_config.has_section("loggers")
        and not config.attributes.get("ppp.configured_logging")
    ):
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    try:
        _dispatch(env, target_metadata, configure_kw)
    except PPPError as exc:
        raise CommandError(str(exc)) from None


def _command(env: EnvironmentContext) -> tuple[str, Callable[..., Any] | None]:
    """The command's name and its step function (what Alembic plans with; no getter exists,
    ``context_opts`` is the EnvironmentContext's public attribute)."""
    return command_name(env), env.context_opts.get("fn")


def _tenants(settings: Settings, options: RunOptions) -> list[Tenant]:
    """The tenants a command covers: the catalog's, narrowed by -x shard/tenant, without those
    ``ppp tenant remove`` retired."""
    return in_service(list_tenants(settings, shards=options.shards, tenants=options.tenants))


def _dispatch(env: EnvironmentContext, metadata: Any, kw: dict[str, Any]) -> None:
    config = env.config
    options = RunOptions.from_x(
        env.get_x_argument(as_dictionary=True), config.attributes.get("ppp.options")
    )
    settings: Settings = config.attributes.get("ppp.settings") or load_settings(options.env)
    command, fn = _command(env)
    if env.is_offline_mode():
        _offline(env, settings, options, metadata, kw)
    elif command == "current":
        _current(env, settings, options)
    elif command in MUTATING and fn is not None:
        result = _fleet(env, fn, command, settings, options, metadata, kw)
        config.attributes["ppp.result"] = result
        if not result.ok:
            raise PPPError(result.failure_message())
    else:
        _on_template(env, settings, options, metadata, kw)


# -- upgrade / downgrade / stamp ----------------------------------------------------------------
def _fleet(
    env: EnvironmentContext,
    fn: Callable[..., Any],
    command: str,
    settings: Settings,
    options: RunOptions,
    metadata: Any,
    kw: dict[str, Any],
) -> FleetResult:
    tenants = _tenants(settings, options)
    _ = env.script.revision_map.heads  # load every revision once, before the workers fork

    def steps(heads: tuple[str, ...]) -> list[Any]:
        return list(fn(heads, None))

    def render(todo: Sequence[Any], heads: tuple[str, ...]) -> Rendered:
        return render_steps(env, list(todo), heads, metadata, kw)

    def run_online(conn: Any, tenant: str, todo: Sequence[Any], own: bool = False) -> None:
        run_steps_online(env, conn, tenant, todo, metadata, kw, own)

    hooks = AlembicHooks(command, steps, render, run_online, uses_autocommit, step_label)
    display = make_display(options.output, options.verbose)
    result = run_fleet(settings, group_by_shard(tenants), options, hooks, display)
    if options.refresh and result.changed:
        _refresh(settings, result)
    display.summary(result)
    return result


def _refresh(settings: Settings, result: FleetResult) -> None:
    from ppp_env.veneer.tables import refresh

    try:
        report = refresh(settings, result.changed)
    except PPPError as exc:
        result.refresh_error = str(exc)
        return
    result.refreshed = list(getattr(report, "refreshed", []))
    result.refresh_pending = list(getattr(report, "pending", []))
    errors = getattr(report, "errors", None)
    if errors:
        result.refresh_error = "; ".join(f"{k}: {v}" for k, v in dict(errors).items())


# -- current ------------------------------------------------------------------------------------
def _current(env: EnvironmentContext, settings: Settings, options: RunOptions) -> None:
    tenants = _tenants(settings, options)
    heads = set(env.script.get_heads())
    states, errors = shard_states(settings, tenants)
    for t in tenants:
        st = states.get(t.schema)
        if st is None:
            shown = "(unreachable)"
        elif not st.exists:
            shown = "(no schema yet)"
        elif not st.heads:
            shown = "(base)"
        else:
            shown = " ".join(h + (" (head)" if h in heads else "") for h in st.heads)
        env.config.print_stdout(f"{t.shard} {t.schema} {shown}")
    if errors:
        raise PPPError("; ".join(errors.values()))


# -- --sql --------------------------------------------------------------------------------------
def _offline(
    env: EnvironmentContext,
    settings: Settings,
    options: RunOptions,
    metadata: Any,
    kw: dict[str, Any],
) -> None:
    tenants = _tenants(settings, options)
    starting = env.get_starting_revision_argument()  # None: from base
    from_base = starting is None
    fn = env.context_opts["fn"]
    heads = tuple(env.script.get_revision(r).revision for r in util_to_tuple(starting))
    steps = list(fn(heads, None))  # an unknown revision fails here, as Alembic says it

    def render(tenant: str | None) -> Rendered:
        rendered = render_steps(env, steps, heads, metadata, kw, tenant)
        if rendered.stopped_at is not None and (tenant is not None or not rendered.per_tenant):
            raise PPPError(
                f"cannot render the SQL offline: {rendered.stopped_at}: {rendered.reason}; "
                "--sql cannot run it (PPP runs such a revision online during upgrade)"
            )
        return rendered

    shared = render(None)
    per_tenant = shared.stopped_at is not None  # a tenant-specific revision: render per tenant
    out_dir = Path(options.sql_dir) if options.sql_dir else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    by_shard = group_by_shard(tenants)
    for shard, schemas in by_shard.items():
        stream: TextIO
        if out_dir:
            stream = open(out_dir / f"{shard}.sql", "w")  # noqa: SIM115 - closed below
        else:
            stream = env.config.output_buffer or sys.stdout
        try:
            stream.write(f"-- PPP: shard {shard} ({len(schemas)} tenants)\n\n")
            for schema in schemas:
                q = quote_ident(schema)
                stream.write(f"-- PPP: shard {shard}, tenant {schema}\nBEGIN;\n")
                if from_base:
                    stream.write(f"CREATE SCHEMA IF NOT EXISTS {q};\n")
                stream.write(f"SET LOCAL search_path TO {q};\n\n")
                stream.write(render(schema).sql if per_tenant else shared.sql)
                stream.write("COMMIT;\n\n")
        finally:
            if out_dir:
                stream.close()
    if out_dir:
        print(f"wrote {len(by_shard)} file(s) to {out_dir}", file=sys.stderr)


# -- autogenerate, check, history -i ------------------------------------------------------------
def _on_template(
    env: EnvironmentContext,
    settings: Settings,
    options: RunOptions,
    metadata: Any,
    kw: dict[str, Any],
) -> None:
    """Commands that look at one database: use one template tenant's schema."""
    tenants = _tenants(settings, options)
    if options.template:
        chosen = [t for t in tenants if t.schema == options.template]
        if not chosen:
            raise PPPError(f"-x template={options.template}: no such tenant in the catalog")
    else:
        chosen = tenants
    for tenant in chosen:
        inst = settings.shard(tenant.shard)
        engine = db.engine(inst, "admin", poolclass=NullPool)
        try:
            with engine.connect() as conn:
                exists = conn.exec_driver_sql(
                    "SELECT 1 FROM pg_namespace WHERE nspname = %(s)s", {"s": tenant.schema}
                ).first()
                if not exists:
                    conn.rollback()
                    continue
                conn.exec_driver_sql(f"SET search_path TO {quote_ident(tenant.schema)}")
                conn.commit()
                # No version_table_schema: search_path already points at the tenant, and
                # autogenerate skips the version table only in the default schema.
                env.configure(connection=conn, target_metadata=metadata, **kw)
                with env.begin_transaction():
                    env.run_migrations()
                return
        finally:
            engine.dispose()
    raise PPPError(
        "no template tenant: no tenant in the catalog has its schema on its shard yet; "
        "run `alembic upgrade head` first or pass -x template=NAME"
    )
