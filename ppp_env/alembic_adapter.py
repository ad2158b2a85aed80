"""The one doorway between PPP and Alembic's (and SQLAlchemy's) internals.

PPP talks to Alembic through its public API (``EnvironmentContext``, ``MigrationContext``,
``on_version_apply``, ``Operations``, ``ScriptDirectory``, ``Script.module``); where that API
cannot do the job, the code that reaches further lives here and nowhere else, one function
per touchpoint, each held by a contract test in ``tests/test_alembic_adapter.py`` that fails
the day Alembic or SQLAlchemy changes it. docs/design-decisions.md ("One adapter between PPP
and Alembic") says why each remaining internal is needed. The touchpoints:

T1 :func:`running_environment`: the running ``EnvironmentContext`` object (``alembic.context``
   only proxies it), through ``MigrationContext.environment_context``.
T2 :func:`command_name`: which command runs: ``config.cmd_opts.cmd`` (Alembic's command line)
   and the names of the step functions ``alembic.command`` passes.
T3 :func:`step_function`: that step function, from ``EnvironmentContext.context_opts``;
   :func:`destination_argument`: the destination as given, from the same place.
T4 :func:`targets_every_head`: ``head`` among several heads, told by the ``MultipleHeads``
   error behind ``get_revision_argument()``.
T5 :func:`describe`: what a step is (its ``Script``, direction, log line).
T6 :func:`upgrade_step`: a step for a revision PPP planned itself
   (``MigrationStep.upgrade_from_script``).
T7 :func:`replace_heads`: many heads written in two statements (the version table's layout).
T8 :func:`default_schema`: what ``Dialect.default_schema_name`` answers.
T9 :func:`guard_offline_bind`: the offline bind swapped for one that says when a revision
   reads from the database (as Alembic's own ``autocommit_block`` swaps it).
T10 :func:`watch_autocommit`: a revision entering ``autocommit_block`` is seen before it runs.
T11 :func:`version_dirs`, :func:`versions_dir`, :func:`template_dir`: a script directory's
   folders, without loading a revision.
T12 :func:`with_function`: a step whose revision function is another (``migration_fn``), so a
   revision rendered once is replayed, or one that cannot be rendered is stepped over,
   without running its code again.
T13 the offline bind's inspector (``sqlalchemy.inspection``'s registry): ``sa.inspect()`` of
   it answers the default schema and says which Inspector method needs the database.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import sqlalchemy as sa
from alembic import context as alembic_context
from alembic.operations import Operations
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, MigrationStep
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import MultipleHeads
from alembic.util import CommandError
from sqlalchemy import inspection as sa_inspection
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Dialect

from ppp_env.errors import PPPError

#: Set by PPP's in-process calls: the Alembic command being run (``upgrade``, ``current``...).
COMMAND_KEY = "ppp.command"
#: Step functions of ``alembic.command`` whose name is not their command's.
_STEP_NAMES = {"do_stamp": "stamp", "display_version": "current"}

#: ``fn(heads, context) -> steps``: what ``alembic.command`` hands the MigrationContext.
StepFunction = Callable[[tuple[str, ...], MigrationContext], Any]
#: An ``on_version_apply`` callback (Alembic calls it with keyword arguments only).
OnApplied = Callable[..., None]


def as_tuple(value: Any) -> tuple[Any, ...]:
    """None -> (), a list or tuple -> a tuple, anything else -> a 1-tuple."""
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


# -- T1-T4: the command Alembic is running -----------------------------------------------------
def running_environment() -> EnvironmentContext:
    """T1: the running command's EnvironmentContext.

    ``alembic.context`` only proxies the object's methods: configure a MigrationContext
    without a connection (no database is touched; every later ``configure`` replaces it),
    whose ``environment_context`` is the object itself.
    """
    alembic_context.configure(dialect_name="postgresql")
    env = alembic_context.get_context().environment_context
    if env is None:
        raise PPPError("no Alembic command is running (env.py runs under one)")
    return env


def command_name(env: EnvironmentContext) -> str:
    """T2: the Alembic command this run is: ``config.attributes["ppp.command"]`` (PPP's
    in-process calls), else ``config.cmd_opts.cmd`` (Alembic's command line keeps the command
    function there), else the name of the step function Alembic passed (other in-process
    callers of ``alembic.command``)."""
    named = env.config.attributes.get(COMMAND_KEY)
    if isinstance(named, str):
        return named
    cmd = getattr(env.config.cmd_opts, "cmd", None)
    if cmd:
        return str(cmd[0].__name__)
    fn = step_function(env)
    name = str(getattr(fn, "__name__", "unknown"))
    return _STEP_NAMES.get(name, name)


def step_function(env: EnvironmentContext) -> StepFunction | None:
    """T3: the step function the running command passed (``EnvironmentContext(fn=...)``);
    Alembic offers no getter. Read it before any ``configure(fn=...)`` replaces it."""
    fn = env.context_opts.get("fn")
    return fn if callable(fn) else None


def destination_argument(env: EnvironmentContext) -> Any:
    """T3: the destination the command was given, as typed (``head``, ``-1``, ``b1``...; None
    for commands without one), from ``EnvironmentContext.context_opts``: Alembic offers no
    getter for the unresolved argument."""
    return env.context_opts.get("destination_rev")


def targets_every_head(env: EnvironmentContext) -> bool:
    """T4: whether the destination is every head: ``heads``, the only head by name, or
    ``head`` among several heads (Alembic refuses to resolve it: a CommandError caused by
    ``MultipleHeads`` for the argument ``head``)."""
    try:
        destination = env.get_revision_argument()
    except CommandError as exc:
        cause = exc.__cause__
        return isinstance(cause, MultipleHeads) and cause.argument == "head"
    except KeyError:  # no destination: not an upgrade, a downgrade or a stamp
        return False
    # What `heads` resolves to: heads that are only another head's dependency are left out.
    heads = set(as_tuple(env.script.as_revision_number("heads")))
    return bool(heads) and set(as_tuple(destination)) == heads


class Planner:
    """The steps of the running command from any heads: its step function called with a
    MigrationContext that never touches a database (Alembic's steps ignore it; PPP plans
    per tenant, from each tenant's heads)."""

    def __init__(self, env: EnvironmentContext, fn: StepFunction) -> None:
        self._fn = fn
        self._context = MigrationContext.configure(
            dialect_name="postgresql",
            environment_context=env,
            opts={"script": env.script, "as_sql": True, "output_buffer": io.StringIO()},
        )

    def __call__(self, heads: tuple[str, ...]) -> list[Any]:
        return list(self._fn(heads, self._context))


# -- T5-T7: steps -------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepInfo:
    """What PPP needs to know about one migration step."""

    #: ``revision <id> (<first line of its message>)``, or Alembic's log line for a stamp.
    label: str
    #: The revision's Script (None: a stamp step, which runs no code).
    script: Script | None
    upgrade: bool

    @property
    def path(self) -> str | None:
        return self.script.path if self.script is not None else None

    @property
    def module(self) -> Any:
        return self.script.module if self.script is not None else None


def describe(step: Any) -> StepInfo:
    """T5: a step's Script, direction and label (steps are Alembic's ``RevisionStep`` and
    ``StampStep``, which its documentation does not describe)."""
    script = getattr(step, "revision", None)
    upgrade = bool(getattr(step, "is_upgrade", True))
    if isinstance(script, Script):
        doc = (script.doc or "").strip().splitlines()
        label = f"revision {script.revision}" + (f" ({doc[0]})" if doc and doc[0] else "")
        return StepInfo(label, script, upgrade)
    return StepInfo(str(getattr(step, "short_log", step)), None, upgrade)


def upgrade_step(script: ScriptDirectory, revision: Script) -> Any:
    """T6: the upgrade step of ``revision`` for a plan PPP made itself (the veneer's linear
    plan of every head): what ``run_migrations`` accepts from a step function."""
    return MigrationStep.upgrade_from_script(script.revision_map, revision)


def run_upgrades(ctx: MigrationContext, steps: Sequence[Any]) -> None:
    """Run the ``upgrade()`` of each step's revision (``Script.module``) with ``op`` bound to
    ``ctx``, writing nothing to the version table (see :func:`replace_heads`)."""
    with Operations.context(ctx):
        for step in steps:
            info = describe(step)
            if info.script is None:
                raise PPPError(f"{info.label}: not a revision step")
            info.script.module.upgrade()


def run_functions(ctx: MigrationContext, steps: Sequence[Any]) -> None:
    """Run each step's revision function (``upgrade()`` or ``downgrade()``, T12) with ``op``
    bound to ``ctx``, writing nothing to the version table: the caller knows the heads."""
    with Operations.context(ctx):
        for step in steps:
            revision_function(step)()


def replace_heads(ctx: MigrationContext, removed: Sequence[str], added: Sequence[str]) -> None:
    """T7: delete ``removed`` from the version table and insert ``added``, two statements
    whatever their number (Alembic writes one per step). The table is Alembic's: one
    ``version_num`` column, named by the context's ``version_table(_schema)``."""
    conn = ctx.connection
    if conn is None or ctx.as_sql:
        raise PPPError("the version table can only be written on a live connection")
    table = sa.table(
        ctx.version_table, sa.column("version_num", sa.String), schema=ctx.version_table_schema
    )
    texts = ARRAY(sa.String)
    if removed:
        gone = sa.bindparam("removed", list(removed), type_=texts)
        conn.execute(table.delete().where(table.c.version_num == sa.any_(gone)))
    if added:
        new = sa.select(sa.func.unnest(sa.bindparam("added", list(added), type_=texts)))
        conn.execute(table.insert().from_select(["version_num"], new))


# -- migration contexts PPP runs steps in --------------------------------------------------------
def migration_context(
    env: EnvironmentContext,
    steps: Sequence[Any],
    options: Mapping[str, Any],
    *,
    connection: Connection | None = None,
    on_applied: OnApplied | None = None,
) -> MigrationContext:
    """A MigrationContext of its own (``env.configure`` would change the command's options)
    that runs exactly ``steps``: online on ``connection``, else offline (``options`` then says
    where the SQL goes). ``options`` are ``EnvironmentContext.configure``'s keyword options."""
    opts = dict(options)
    opts["on_version_apply"] = as_tuple(opts.get("on_version_apply")) + as_tuple(on_applied)
    opts.setdefault("script", env.script)
    opts["as_sql"] = connection is None
    planned = list(steps)
    opts["fn"] = lambda _heads, _ctx: planned
    if connection is not None:
        return MigrationContext.configure(connection=connection, environment_context=env, opts=opts)
    dialect_opts = opts.pop("dialect_opts", None)
    return MigrationContext.configure(
        dialect_name=opts.pop("dialect_name", "postgresql"),
        dialect_opts=dialect_opts,
        environment_context=env,
        opts=opts,
    )


def run(ctx: MigrationContext, *, own_transaction: bool = False) -> None:
    """Run a context's steps with ``op`` bound to it; ``own_transaction``: Alembic begins and
    commits the transaction (else the caller's transaction, if any, holds them)."""
    with Operations.context(ctx):
        if own_transaction:
            with ctx.begin_transaction():
                ctx.run_migrations()
        else:
            ctx.run_migrations()


# -- T8-T10: what a revision sees while PPP runs it ----------------------------------------------
@contextmanager
def default_schema(dialect: Dialect, schema: str) -> Iterator[None]:
    """T8: ``dialect.default_schema_name`` (and so ``sa.inspect(bind).default_schema_name``)
    answers ``schema`` for the duration: SQLAlchemy sets it once per connection pool from
    the first connection's ``current_schema()``, and has no other way to say "this tenant"."""
    previous = dialect.default_schema_name
    dialect.default_schema_name = schema
    try:
        yield
    finally:
        dialect.default_schema_name = previous


class DatabaseRead(AttributeError):
    """Raised while rendering offline when a revision uses what only a live connection has:
    a statement's rows, an Inspector's answers, a Session's connection, or a method the
    offline connection lacks. ``call`` says which, as the revision wrote it
    (``Connection.execute(SELECT ...).scalar()``, ``Inspector.get_columns()``...).

    An AttributeError, as the offline connection's own errors are, so that Alembic's probes
    of the connection (``getattr`` with a fallback) behave as before."""

    def __init__(self, call: str) -> None:
        super().__init__(call)
        self.call = call


def _statement_text(statement: Any) -> str:
    try:
        text = " ".join(str(statement).split())
    except Exception:  # a construct that only compiles against a dialect
        text = type(statement).__name__
    return text if len(text) <= 60 else text[:57] + "..."


class _Unread:
    """What a statement run on the offline connection returns: rows it does not have."""

    def __init__(self, statement: Any) -> None:
        self._statement = statement

    def _read(self, what: str) -> NoReturn:
        raise DatabaseRead(f"Connection.execute({_statement_text(self._statement)}).{what}")

    def __getattr__(self, name: str) -> Any:
        self._read(f"{name}()")

    def __iter__(self) -> Iterator[Any]:
        self._read("__iter__()")


class _OfflineBind:
    """The offline connection a revision gets from ``op.get_bind()``: statements are written
    to the SQL as before; reading their rows, an Inspector's answers, a Session's connection
    (``connect``), or anything the offline connection lacks (``exec_driver_sql``,
    ``scalar``...), raises :class:`DatabaseRead`."""

    def __init__(self, offline: Any) -> None:
        self._offline = offline

    def execute(
        self, statement: Any, parameters: Any = None, execution_options: Any = None
    ) -> _Unread:
        self._offline.execute(statement, parameters, execution_options)
        return _Unread(statement)

    def connect(self, **_kw: Any) -> NoReturn:
        # What a Session (or an engine-style caller) asks first; the mock would hand itself.
        raise DatabaseRead("Connection.connect()")

    def __getattr__(self, name: str) -> Any:
        try:
            return getattr(self._offline, name)
        except AttributeError:
            raise DatabaseRead(f"Connection.{name}()") from None


class _OfflineInspector:
    """T13: what ``sa.inspect()`` of the offline bind returns. Its default schema is the
    dialect's (the marker PPP plants while rendering); every other answer needs the
    database: :class:`DatabaseRead` names the Inspector method."""

    def __init__(self, bind: _OfflineBind) -> None:
        self.bind = bind
        self.dialect = bind.dialect

    @property
    def default_schema_name(self) -> str | None:
        name = self.dialect.default_schema_name
        return str(name) if name is not None else None

    def __getattr__(self, name: str) -> NoReturn:
        raise DatabaseRead(f"Inspector.{name.lstrip('_')}()")


# SQLAlchemy's registry of what sa.inspect() answers per type; a class registered under its own
# name and module may be registered again (a module reload).
sa_inspection._inspects(_OfflineBind)(_OfflineInspector)


def guard_offline_bind(ctx: MigrationContext) -> None:
    """T9: an offline context's bind (``op.get_bind()``, ``ctx.bind``) says when a revision
    reads from the database (:class:`DatabaseRead`); ``sa.inspect()`` of it is an Inspector
    that answers only the default schema (T13). Swapped where Alembic's own
    ``autocommit_block`` swaps the connection: the context's and its impl's."""
    if not ctx.as_sql:
        raise PPPError("only an offline context's connection can be guarded")
    ctx.connection = ctx.impl.connection = _OfflineBind(ctx.connection)  # type: ignore[assignment]


def watch_autocommit(
    ctx: MigrationContext, entered: Callable[[], None], left: Callable[[], None] | None = None
) -> None:
    """T10: call ``entered()`` whenever a revision run by ``ctx`` enters
    ``op.get_context().autocommit_block()``, before the block runs; ``entered`` may raise
    to stop the revision there (inside a transaction the block cannot do its job).
    ``left()``, if given, runs when the block's body is done (not after an error)."""
    original = ctx.autocommit_block

    @contextmanager
    def watched() -> Iterator[None]:
        entered()
        with original():
            yield
            if left is not None:
                left()

    ctx.autocommit_block = watched  # type: ignore[method-assign]


def revision_function(step: Any) -> Callable[..., None]:
    """T12: the function a step runs (its revision's ``upgrade()`` or ``downgrade()``)."""
    fn: Callable[..., None] = step.migration_fn
    return fn


def with_function(step: Any, fn: Callable[..., None]) -> Any:
    """T12: a copy of ``step`` that runs ``fn`` (Alembic's run arguments, as keywords) instead
    of its revision's ``upgrade()``/``downgrade()``; Alembic still writes the version table
    and reports the step. ``step`` itself (kept in PPP's plans) is unchanged. Alembic keeps
    the function a step runs in its ``migration_fn`` attribute."""
    if not hasattr(step, "migration_fn"):
        raise PPPError(f"{describe(step).label}: not a migration step")
    other = copy.copy(step)
    other.migration_fn = fn
    return other


# -- T11: a script directory's folders -----------------------------------------------------------
def version_dirs(script: ScriptDirectory) -> list[Path]:
    """The folders a script directory keeps revisions in (``version_locations``, else its
    ``versions`` folder), without loading a revision."""
    return [Path(p) for p in (script.version_locations or [script.versions])]


def versions_dir(script: ScriptDirectory) -> Path:
    """Where ``alembic revision`` writes a new revision (CommandError with several
    ``version_locations`` and no single one to choose)."""
    return Path(script.versions)


def template_dir(script: ScriptDirectory) -> Path:
    """The script directory's own folder (where ``script.py.mako`` lives)."""
    return Path(script.dir)
