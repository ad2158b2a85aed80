"""Alembic steps rendered offline once (schema-neutral SQL), or run online for one tenant.

A step that reads from the database, needs the tenant, or commits mid-way cannot be
rendered; :func:`render_steps` says which and why, and :func:`run_steps_online` runs it
through Alembic on the tenant's connection."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic.runtime.environment import EnvironmentContext
from sqlalchemy.exc import NoInspectionAvailable

from ppp_env import db
from ppp_env.fleet.hooks import (
    NeedsOnline,
    Rendered,
    StepFailed,
    migrating,
    rendering,
)


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
    heads_after: list[tuple[str, ...]] = []

    def after(**kw: Any) -> None:
        marks.append(buf.tell())
        heads_after.append(tuple(sorted(kw.get("heads") or ())))

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
    out.heads = heads_after[: len(out.chunks)]
    for i, (label, sql) in enumerate(out.chunks):
        if UNKNOWN_SCHEMA in sql:
            out.heads = out.heads[:i]
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
