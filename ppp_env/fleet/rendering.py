"""Alembic steps rendered offline once (schema-neutral SQL), or run online for one tenant.

:func:`render_steps` reports, revision by revision, the SQL or why there is none: which call
reached the database, in which file and line (:class:`~ppp_env.fleet.hooks.Blocker`), and
whether the revision must run outside a transaction. Nothing is judged from an error's
message or a revision's source text: the offline connection itself says when a revision reads
from it, ``current_tenant()`` raises its own error, ``autocommit_block`` is seen when entered.
:func:`run_steps_online` runs steps through Alembic on the tenant's connection.
"""

from __future__ import annotations

import io
import os
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from alembic.runtime.environment import EnvironmentContext
from sqlalchemy.exc import NoInspectionAvailable

from ppp_env import alembic_adapter as adapter
from ppp_env import db
from ppp_env.fleet.hooks import (
    Blocker,
    NeedsOnline,
    OutsideTransaction,
    Rendered,
    RevisionRender,
    StepFailed,
    Where,
    migrating,
    rendering,
)

#: What the default schema answers while rendering: a schema-neutral rendering cannot know the
#: tenant, so a revision whose SQL carries this name needs the tenant (rendered or run per
#: tenant). PPP plants it and looks for it in what it rendered, nowhere else.
UNKNOWN_SCHEMA = "ppp_default_schema_unknown_while_rendering"

#: How PPP renders SQL: PostgreSQL, literal values, no BEGIN/COMMIT (PPP adds them).
OFFLINE_OPTIONS: Mapping[str, Any] = {
    "dialect_name": "postgresql",
    # Literal SQL as written: with the driver's paramstyle a '%' would come out as '%%'.
    "dialect_opts": {"paramstyle": "named"},
    "literal_binds": True,
    "transactional_ddl": False,
}


#: Around an ``autocommit_block`` in rendered SQL (``--sql``: PPP wraps each tenant in one
#: transaction with ``SET LOCAL search_path``): the tenant's search_path made the session's,
#: so it outlives the COMMIT; the block's statements outside any transaction; then a new one.
LEAVE_TRANSACTION = (
    "SELECT set_config('search_path', current_setting('search_path'), false);\n\nCOMMIT;\n\n"
)
ENTER_TRANSACTION = "BEGIN;\n\n"


@dataclass(frozen=True)
class Setup:
    """How the project's env.py configures Alembic: its target metadata and the keyword
    options it passed to ``run_migrations`` (for every ``configure``)."""

    metadata: Any = None
    configure_kw: Mapping[str, Any] = field(default_factory=dict)

    def options(self, **more: Any) -> dict[str, Any]:
        return {**self.configure_kw, "target_metadata": self.metadata, **more}


def step_label(step: Any) -> str:
    """``revision <id> (<its message>)`` for a migration step, as errors and reports name it."""
    return adapter.describe(step).label


def _flagged_online(step: Any) -> bool:
    return bool(getattr(adapter.describe(step).module, "ppp_online", False))


def _where(frames: list[traceback.FrameSummary], path: str | None) -> Where | None:
    """The innermost frame in the revision's own file."""
    if not path:
        return None
    target = os.path.realpath(path)
    for frame in reversed(frames):
        if frame.lineno is not None and os.path.realpath(frame.filename) == target:
            return Where(frame.filename, frame.lineno)
    return None


def _where_raised(tb: TracebackType | None, step: Any) -> Where | None:
    return _where(traceback.extract_tb(tb), adapter.describe(step).path)


def _where_now(step: Any) -> Where | None:
    return _where(traceback.extract_stack(), adapter.describe(step).path)


def blocker_of(error: BaseException, step: Any) -> Blocker:
    """Why ``step`` could not be rendered, from the error's type and where it was raised."""
    where = _where_raised(error.__traceback__, step)
    if isinstance(error, NeedsOnline):
        return Blocker("tenant", where=where)
    if isinstance(error, adapter.DatabaseRead):
        return Blocker("reads", error.call, where)
    if isinstance(error, NoInspectionAvailable):
        return Blocker("reads", "sqlalchemy.inspect() of the connection", where)
    return Blocker("error", f"{type(error).__name__}: {db.first_line(error)}", where)


def render_steps(
    env: EnvironmentContext,
    steps: Sequence[Any],
    heads: tuple[str, ...],
    setup: Setup,
    tenant: str | None = None,
) -> Rendered:
    """Render ``steps`` (the path from ``heads``) offline, revision by revision.

    Without ``tenant`` the SQL is schema-neutral (search_path decides) and a revision that
    needs the tenant (``current_tenant()``, the default schema) is blocked; with it, that
    revision renders for this tenant. Rendering stops at the first blocked revision.
    """
    flagged = next((i for i, s in enumerate(steps) if _flagged_online(s)), len(steps))
    out = _render(env, list(steps[:flagged]), heads, setup, tenant) if flagged else []
    if flagged < len(steps) and all(r.blocker is None for r in out):
        out.append(RevisionRender(step_label(steps[flagged]), "", None, Blocker("flagged")))
    return Rendered(out)


def _render(
    env: EnvironmentContext,
    steps: list[Any],
    heads: tuple[str, ...],
    setup: Setup,
    tenant: str | None,
) -> list[RevisionRender]:
    buf = io.StringIO()
    marks: list[int] = [0]  # where each revision's SQL starts in buf
    heads_after: list[tuple[str, ...]] = []
    outside: dict[int, Where | None] = {}

    def applied(**kw: Any) -> None:
        marks.append(buf.tell())
        heads_after.append(tuple(sorted(kw.get("heads") or ())))

    def entered_autocommit() -> None:
        outside.setdefault(len(marks) - 1, _where_now(steps[len(marks) - 1]))
        buf.write(LEAVE_TRANSACTION)

    def left_autocommit() -> None:
        buf.write(ENTER_TRANSACTION)

    options = setup.options(**OFFLINE_OPTIONS, output_buffer=buf, starting_rev=list(heads) or None)
    ctx = adapter.migration_context(env, steps, options, on_applied=applied)
    adapter.guard_offline_bind(ctx)
    adapter.watch_autocommit(ctx, entered_autocommit, left_autocommit)
    failure: BaseException | None = None
    who = rendering() if tenant is None else migrating(tenant)
    with adapter.default_schema(ctx.dialect, tenant or UNKNOWN_SCHEMA), who:
        try:
            adapter.run(ctx)
        except Exception as exc:
            failure = exc
    text = buf.getvalue()
    out: list[RevisionRender] = []
    for i, step in enumerate(steps[: len(marks) - 1]):
        sql = text[marks[i] : marks[i + 1]]
        blocker = Blocker("default_schema") if UNKNOWN_SCHEMA in sql else None
        out.append(RevisionRender(step_label(step), sql, heads_after[i], blocker, outside.get(i)))
    if failure is not None:
        failed = steps[len(marks) - 1]
        out.append(RevisionRender(step_label(failed), "", None, blocker_of(failure, failed)))
    return out


def run_steps_online(
    env: EnvironmentContext,
    conn: Any,
    tenant: str,
    steps: Sequence[Any],
    setup: Setup,
    own_transaction: bool = False,
) -> None:
    """Run ``steps`` through Alembic online on ``conn`` for ``tenant`` (search_path already
    set): the tenant's version table, the tenant as the default schema. StepFailed names the
    step that failed. With ``own_transaction``, Alembic begins and commits the transaction
    itself (steps with ``autocommit_block`` need that); otherwise it runs in the caller's, and
    a step entering ``autocommit_block`` stops with :class:`OutsideTransaction`."""
    done: list[int] = []
    ctx = adapter.migration_context(
        env,
        steps,
        setup.options(version_table_schema=tenant),
        connection=conn,
        on_applied=lambda **_: done.append(1),
    )
    if not own_transaction:

        def refuse() -> None:
            raise OutsideTransaction(_where_now(steps[len(done)]))

        adapter.watch_autocommit(ctx, refuse)
    with adapter.default_schema(conn.dialect, tenant):
        try:
            adapter.run(ctx, own_transaction=own_transaction)
        except Exception as exc:
            failed = steps[min(len(done), len(steps) - 1)]
            raise StepFailed(step_label(failed), exc) from exc
