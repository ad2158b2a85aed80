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
from ppp_env.fleet.verdicts import VerdictCache

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


def _called(tb: TracebackType | None, path: str | None) -> tuple[str, str] | None:
    """What the revision's line called that ended in the error: the function (qualified
    name) and its file, from the frame just inside the revision's innermost one."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    target = os.path.realpath(path) if path else None
    inner = [i for i, f in enumerate(frames) if os.path.realpath(f.f_code.co_filename) == target]
    if not inner or inner[-1] + 1 >= len(frames):
        return None
    frame = frames[inner[-1] + 1]
    code = frame.f_code
    name = getattr(code, "co_qualname", code.co_name)
    owner = frame.f_locals.get("cls", frame.f_locals.get("self"))
    if "." not in name and owner is not None:  # a wrapped method: name its class
        name = f"{owner.__name__ if isinstance(owner, type) else type(owner).__name__}.{name}"
    return name, code.co_filename


def _read_call(error: adapter.DatabaseRead, step: Any) -> str:
    """The call that needs the database, as the revision wrote it: the stand-in's own name
    when the revision called it directly (``Inspector.get_columns()``), else the library
    function the revision called, then what it asked for (``Query.all() -> Connection.
    connect()`` for a Session, ``Table() -> Inspector.inspection_context()``...)."""
    called = _called(error.__traceback__, adapter.describe(step).path)
    if called is None or os.path.realpath(called[1]) == os.path.realpath(adapter.__file__):
        return error.call
    name = called[0]
    for suffix in (".__init__", ".__new__", "._new", "._init"):
        name = name.removesuffix(suffix)
    return f"{name}() -> {error.call}"


def blocker_of(error: BaseException, step: Any) -> Blocker:
    """Why ``step`` could not be rendered, from the error's type and where it was raised."""
    where = _where_raised(error.__traceback__, step)
    if isinstance(error, NeedsOnline):
        return Blocker("tenant", where=where)
    if isinstance(error, adapter.DatabaseRead):
        return Blocker("reads", _read_call(error, step), where)
    if isinstance(error, NoInspectionAvailable):
        return Blocker("reads", "sqlalchemy.inspect() of the connection", where)
    return Blocker("error", f"{type(error).__name__}: {db.first_line(error)}", where)


@dataclass(frozen=True)
class _Recorded:
    """A revision rendered schema-neutral in this process: its SQL (Alembic's comment and
    version statements around it excluded), and where it enters ``autocommit_block``."""

    sql: str
    outside: Where | None


@dataclass
class RenderMemo:
    """What rendering learned, so that no revision's code runs twice for rendering: the SQL
    of each revision rendered (replayed, not run, when another path holds it) and the
    verdict of each one that cannot be rendered (stepped over), the latter also kept across
    runs by ``cache``. Keyed by the revision file and direction; inherited by forked workers."""

    cache: VerdictCache | None = None
    recorded: dict[tuple[str, bool], _Recorded] = field(default_factory=dict)
    blockers: dict[tuple[str, bool], Blocker] = field(default_factory=dict)

    def blocker(self, step: Any) -> Blocker | None:
        """The known reason ``step`` cannot be rendered (None: not known to be blocked)."""
        if _flagged_online(step):
            return Blocker("flagged")
        info = adapter.describe(step)
        if info.path is None:
            return None
        key = (info.path, info.upgrade)
        if key not in self.blockers and self.cache is not None:
            cached = self.cache.get(*key)
            if cached is not None:
                self.blockers[key] = cached
        return self.blockers.get(key)

    def learn(self, step: Any, blocker: Blocker) -> None:
        info = adapter.describe(step)
        if info.path is None:
            return
        self.blockers[info.path, info.upgrade] = blocker
        if self.cache is not None:
            self.cache.put(info.path, info.upgrade, blocker)

    def save(self) -> None:
        if self.cache is not None:
            self.cache.save()


def render_steps(
    env: EnvironmentContext,
    steps: Sequence[Any],
    heads: tuple[str, ...],
    setup: Setup,
    tenant: str | None = None,
    memo: RenderMemo | None = None,
) -> Rendered:
    """Render ``steps`` (the path from ``heads``) offline, revision by revision, every one
    of them: a revision that cannot be rendered is reported with its :class:`Blocker` and
    stepped over (its version change still written), and rendering goes on after it.

    Without ``tenant`` the SQL is schema-neutral (search_path decides) and a revision that
    needs the tenant (``current_tenant()``, the default schema) is blocked; with it, that
    revision renders for this tenant. With ``memo``, a revision already rendered is replayed
    and one known to be blocked is stepped over, both without running its code.
    """
    memo = memo if memo is not None else RenderMemo()
    out: list[RevisionRender] = []
    while len(out) < len(steps):
        rest = list(steps[len(out) :])
        at = (out[-1].heads_after or ()) if out else heads
        known = memo.blocker(rest[0]) is not None
        part = _Pass(env, rest, at, setup, tenant, memo).run()
        failed = part.pop() if part and part[-1].heads_after is None else None
        out.extend(part)
        stepped_over_already = not part and known  # it failed even stepped over
        if failed is not None and (stepped_over_already or memo.blocker(rest[len(part)]) is None):
            out.append(failed)  # it cannot be stepped over: rendering ends there
            break
        if failed is None and not part:
            break
    memo.save()
    return Rendered(out)


class _Pass:
    """One offline MigrationContext over ``steps``, until the end or the first revision that
    fails to render (learned into the memo: the next pass steps over it)."""

    def __init__(
        self,
        env: EnvironmentContext,
        steps: list[Any],
        heads: tuple[str, ...],
        setup: Setup,
        tenant: str | None,
        memo: RenderMemo,
    ) -> None:
        self.env, self.steps, self.heads, self.setup = env, steps, heads, setup
        self.tenant, self.memo = tenant, memo
        self.buf = io.StringIO()
        self.marks: list[int] = [0]  # where each revision's part of buf starts
        self.heads_after: list[tuple[str, ...]] = []
        self.outside: dict[int, Where | None] = {}
        self.bodies: dict[int, str] = {}
        self.blocked: dict[int, Blocker] = {}

    def applied(self, **kw: Any) -> None:
        self.marks.append(self.buf.tell())
        self.heads_after.append(tuple(sorted(kw.get("heads") or ())))

    def entered_autocommit(self) -> None:
        i = len(self.marks) - 1
        self.outside.setdefault(i, _where_now(self.steps[i]))
        self.buf.write(LEAVE_TRANSACTION)

    def left_autocommit(self) -> None:
        self.buf.write(ENTER_TRANSACTION)

    def planned(self, i: int, step: Any) -> Any:
        """The step as this pass runs it: stepped over (known blocked), replayed (rendered
        before, schema-neutral), or run, its SQL recorded."""
        blocker = self.memo.blocker(step)
        if blocker is not None and not (self.tenant is not None and blocker.per_tenant):
            self.blocked[i] = blocker
            return adapter.with_function(step, lambda **_: None)
        info = adapter.describe(step)
        known = self.memo.recorded.get((info.path or "", info.upgrade))
        if known is not None:

            def replay(**_kw: Any) -> None:
                self.buf.write(known.sql)
                if known.outside is not None:
                    self.outside.setdefault(i, known.outside)

            return adapter.with_function(step, replay)
        run = adapter.revision_function(step)

        def record(**kw: Any) -> None:
            start = self.buf.tell()
            run(**kw)
            self.bodies[i] = self.buf.getvalue()[start:]

        return adapter.with_function(step, record)

    def run(self) -> list[RevisionRender]:
        planned = [self.planned(i, s) for i, s in enumerate(self.steps)]
        options = self.setup.options(
            **OFFLINE_OPTIONS, output_buffer=self.buf, starting_rev=list(self.heads) or None
        )
        ctx = adapter.migration_context(self.env, planned, options, on_applied=self.applied)
        adapter.guard_offline_bind(ctx)
        adapter.watch_autocommit(ctx, self.entered_autocommit, self.left_autocommit)
        failure: BaseException | None = None
        who = rendering() if self.tenant is None else migrating(self.tenant)
        with adapter.default_schema(ctx.dialect, self.tenant or UNKNOWN_SCHEMA), who:
            try:
                adapter.run(ctx)
            except Exception as exc:
                failure = exc
        out = [self.report(i) for i in range(len(self.marks) - 1)]
        if failure is not None and len(out) < len(self.steps):
            failed = self.steps[len(out)]
            blocker = blocker_of(failure, failed)
            self.memo.learn(failed, blocker)
            out.append(RevisionRender(step_label(failed), "", None, blocker))
        return out

    def report(self, i: int) -> RevisionRender:
        step, label = self.steps[i], step_label(self.steps[i])
        text = self.buf.getvalue()
        blocker = self.blocked.get(i)
        if blocker is not None:
            return RevisionRender(label, "", self.heads_after[i], blocker)
        sql = text[self.marks[i] : self.marks[i + 1]]
        if UNKNOWN_SCHEMA in sql:
            blocker = Blocker("default_schema")
            self.memo.learn(step, blocker)
            return RevisionRender(label, "", self.heads_after[i], blocker)
        body = self.bodies.get(i)
        info = adapter.describe(step)
        if body is not None and self.tenant is None and info.path is not None:
            self.memo.recorded[info.path, info.upgrade] = _Recorded(body, self.outside.get(i))
        return RevisionRender(label, sql, self.heads_after[i], None, self.outside.get(i))


@dataclass
class OnlineRunner:
    """Runs revisions' functions online, tenant after tenant, on one connection through one
    MigrationContext kept for it (a worker's): no context built, no version table probed or
    written per step (the worker writes the heads its plan knows). The tenant is the default
    schema; a step entering ``autocommit_block`` stops with :class:`OutsideTransaction`."""

    env: EnvironmentContext
    setup: Setup
    _conn: Any = None
    _ctx: Any = None
    _step: Any = None

    def context(self, conn: Any) -> Any:
        if self._ctx is None or self._conn is not conn:
            ctx = adapter.migration_context(self.env, [], self.setup.options(), connection=conn)
            adapter.watch_autocommit(ctx, self._refuse)
            self._conn, self._ctx = conn, ctx
        return self._ctx

    def _refuse(self) -> None:
        raise OutsideTransaction(_where_now(self._step))

    def __call__(self, conn: Any, tenant: str, steps: Sequence[Any]) -> None:
        ctx = self.context(conn)
        with adapter.default_schema(conn.dialect, tenant):
            for step in steps:
                self._step = step
                try:
                    adapter.run_functions(ctx, [step])
                except Exception as exc:
                    raise StepFailed(step_label(step), exc) from exc


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
