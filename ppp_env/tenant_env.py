"""What ``migrations/env.py`` runs: Alembic commands over every tenant of the fleet.

The command Alembic is running decides the shape:

- ``upgrade``, ``downgrade``, ``stamp``: the fleet runner (ppp_env.runner), every tenant
  on every shard, then a veneer refresh of the tenants whose revision changed;
- ``current``: one line per tenant: shard, tenant, revision;
- ``--sql`` (offline): the SQL for every shard and tenant, with a header per tenant, on
  stdout or one file per shard (``-x sql_dir=DIR``);
- anything else (``revision --autogenerate``, ``check``, ``history -i``): one template
  tenant schema (``-x template=NAME``, else the first tenant whose schema exists).

``-x shard=a,b`` and ``-x tenant=x,y`` narrow every command; see RunOptions for the rest.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from logging.config import fileConfig
from pathlib import Path
from typing import Any, TextIO

from alembic import context as alembic_context
from alembic.runtime.environment import EnvironmentContext
from alembic.util import CommandError
from sqlalchemy.exc import NoInspectionAvailable
from sqlalchemy.pool import NullPool

from ppp_env import db
from ppp_env.catalog import list_tenants
from ppp_env.errors import PPPError
from ppp_env.fleet import group_by_shard, shard_states
from ppp_env.identifiers import quote_ident
from ppp_env.progress import make_display
from ppp_env.runner import (
    MUTATING,
    AlembicHooks,
    FleetResult,
    NeedsOnline,
    Rendered,
    RunOptions,
    StepFailed,
    migrating,
    rendering,
    run_fleet,
)
from ppp_env.settings import Settings, load_settings

log = logging.getLogger("ppp.migrations")


def run_migrations(target_metadata: Any = None, **configure_kw: Any) -> None:
    """Entry point for ``migrations/env.py``; PPPError becomes Alembic's ``FAILED: ...``."""
    env: EnvironmentContext = alembic_context._proxy  # type: ignore[attr-defined]
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
    fn = env.context_opts.get("fn")
    return (fn.__qualname__.split(".")[0] if fn else "unknown"), fn


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


# -- rendering and running steps ---------------------------------------------------------------
@contextmanager
def _opts(env: EnvironmentContext, **overrides: Any) -> Iterator[None]:
    """Run with some of the command's context options changed (the migration function, offline
    mode, the starting revision), restoring them afterwards: ``configure`` reads them."""
    saved = dict(env.context_opts)
    env.context_opts.update(overrides)
    try:
        yield
    finally:
        env.context_opts.clear()
        env.context_opts.update(saved)


def step_label(step: Any) -> str:
    """``revision <id> (<its message>)`` for a migration step, as errors and reports name it."""
    script = getattr(step, "revision", None)
    if script is not None and getattr(script, "revision", None):
        doc = (getattr(script, "doc", "") or "").strip().splitlines()
        return f"revision {script.revision}" + (f" ({doc[0]})" if doc and doc[0] else "")
    return str(getattr(step, "short_log", step))


def uses_autocommit(step: Any) -> bool:
    """Whether a step's revision runs statements outside a transaction (Alembic's
    ``autocommit_block``, e.g. for CREATE INDEX CONCURRENTLY): it cannot share the tenant's
    transaction, so PPP commits before it and runs it alone."""
    script = getattr(step, "revision", None)
    path = getattr(script, "path", None)
    if not path:
        return False
    if path not in _AUTOCOMMIT:
        try:
            _AUTOCOMMIT[path] = "autocommit_block" in Path(path).read_text(errors="replace")
        except OSError:
            _AUTOCOMMIT[path] = False
    return _AUTOCOMMIT[path]


_AUTOCOMMIT: dict[str, bool] = {}


def _flagged_online(step: Any) -> bool:
    module = getattr(getattr(step, "revision", None), "module", None)
    return bool(getattr(module, "ppp_online", False))


def _why_not_rendered(exc: BaseException) -> str:
    """Why a step could not be rendered offline, in words a revision author can act on."""
    if isinstance(exc, NeedsOnline):
        return str(exc) or "it needs a live connection"
    text = f"{type(exc).__name__}: {db.first_line(exc)}"
    reads = (
        isinstance(exc, NoInspectionAvailable)
        or (isinstance(exc, AttributeError) and "'NoneType' object has no attribute" in str(exc))
        or "MockConnection" in str(exc)
    )
    if reads:
        return f"it reads from the database ({text})"
    return f"it cannot be rendered offline ({text})"


#: What the default schema answers while rendering: a schema-neutral rendering cannot know the
#: tenant, so a step whose SQL carries this name needs the tenant (rendered or run per tenant).
UNKNOWN_SCHEMA = "ppp_default_schema_unknown_while_rendering"


def _set_default_schema(env: EnvironmentContext, schema: str) -> None:
    """What ``default_schema_name`` answers in the offline dialects while rendering."""
    ctx = env.get_context()
    for dialect in (ctx.dialect, getattr(ctx.bind, "dialect", None)):
        if dialect is not None:
            dialect.default_schema_name = schema


def render_steps(
    env: EnvironmentContext,
    steps: list[Any],
    heads: tuple[str, ...],
    metadata: Any,
    kw: dict[str, Any],
    tenant: str | None = None,
) -> Rendered:
    """Render ``steps`` (the path from ``heads``) offline, as far as they can be rendered.

    Without ``tenant`` the SQL is schema-neutral (search_path decides); a step that needs a
    tenant (``current_tenant()``, the default schema) or a live connection (it reads data)
    stops the rendering there, and the result says which step and why.
    """
    wanted = steps
    for i, step in enumerate(steps):
        if _flagged_online(step):
            wanted = steps[:i]
            break
    out = Rendered()
    if not wanted:
        if steps:
            out.stopped_at, out.reason = step_label(steps[0]), "it sets ppp_online = True"
        return out
    buf = io.StringIO()
    marks: list[int] = [0]

    def after(**_: Any) -> None:
        marks.append(buf.tell())

    options = _offline_options(buf, metadata, kw)
    options["on_version_apply"] = (*util_to_tuple(kw.get("on_version_apply")), after)
    with _opts(
        env,
        as_sql=True,
        starting_rev=list(heads) if heads else None,
        fn=lambda _heads, _ctx: list(wanted),
    ):
        env.configure(**options)
        _set_default_schema(env, tenant or UNKNOWN_SCHEMA)
        try:
            with rendering() if tenant is None else migrating(tenant):
                env.run_migrations()
        except Exception as exc:
            out.stopped_at, out.reason = step_label(wanted[len(marks) - 1]), _why_not_rendered(exc)
            out.per_tenant = isinstance(exc, NeedsOnline)
    text = buf.getvalue()
    out.chunks = [
        (step_label(step), text[marks[i] : marks[i + 1]])
        for i, step in enumerate(wanted[: len(marks) - 1])
    ]
    for i, (label, sql) in enumerate(out.chunks):
        if UNKNOWN_SCHEMA in sql:
            out.chunks = out.chunks[:i]
            out.stopped_at, out.per_tenant = label, True
            out.reason = "it uses the default schema (the tenant)"
            break
    if out.stopped_at is None and len(wanted) < len(steps):
        out.stopped_at, out.reason = step_label(steps[len(wanted)]), "it sets ppp_online = True"
    return out


def util_to_tuple(value: Any) -> tuple[Any, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def run_steps_online(
    env: EnvironmentContext,
    conn: Any,
    tenant: str,
    steps: Sequence[Any],
    metadata: Any,
    kw: dict[str, Any],
    own_transaction: bool = False,
) -> None:
    """Run ``steps`` through Alembic online on ``conn`` for ``tenant`` (search_path already
    set): the tenant's version table, the tenant as the default schema. StepFailed names the
    step that failed. With ``own_transaction``, Alembic begins and commits the transaction
    itself (steps with ``autocommit_block`` need that); otherwise it runs in the caller's."""
    done: list[int] = []
    options = dict(kw)
    options["on_version_apply"] = (
        *util_to_tuple(kw.get("on_version_apply")),
        lambda **_: done.append(1),
    )
    dialect = conn.dialect
    previous = dialect.default_schema_name
    with _opts(env, fn=lambda _heads, _ctx: list(steps)):
        env.configure(
            connection=conn, target_metadata=metadata, version_table_schema=tenant, **options
        )
        dialect.default_schema_name = tenant
        try:
            if own_transaction:
                with env.begin_transaction():
                    env.run_migrations()
            else:
                env.run_migrations()
        except Exception as exc:
            failed = steps[min(len(done), len(steps) - 1)]
            raise StepFailed(step_label(failed), exc) from exc
        finally:
            dialect.default_schema_name = previous


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
    tenants = list_tenants(settings, shards=options.shards, tenants=options.tenants)
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
    from ppp_env.veneer import refresh

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


def _offline_options(buf: io.StringIO, metadata: Any, kw: dict[str, Any]) -> dict[str, Any]:
    """How PPP renders SQL: PostgreSQL, literal values, no BEGIN/COMMIT (PPP adds them)."""
    return {
        **kw,
        "dialect_name": "postgresql",
        # Literal SQL as written: with the driver's paramstyle a '%' would come out as '%%'.
        "dialect_opts": {"paramstyle": "named"},
        "output_buffer": buf,
        "literal_binds": True,
        "transactional_ddl": False,
        "target_metadata": metadata,
    }


# -- current ------------------------------------------------------------------------------------
def _current(env: EnvironmentContext, settings: Settings, options: RunOptions) -> None:
    tenants = list_tenants(settings, shards=options.shards, tenants=options.tenants)
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
    tenants = list_tenants(settings, shards=options.shards, tenants=options.tenants)
    starting = env.context_opts.get("starting_rev")
    from_base = starting in (None, "base")
    fn = env.context_opts["fn"]
    heads: tuple[str, ...] = ()
    if not from_base:
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
    tenants = list_tenants(settings, shards=options.shards, tenants=options.tenants)
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
