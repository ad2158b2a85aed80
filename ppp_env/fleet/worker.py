"""The fleet runner's worker: one Alembic command applied to every tenant of one shard.

Shape of a run (docs/design-decisions.md, "Tenant migrations", says why):

- the parent process (Alembic's env.py) reads the catalog once and forks one worker per
  shard, at most ``jobs`` at a time (``pool``): Alembic's ``context`` and ``op`` are
  process-wide, so parallelism is by process, each worker inheriting the loaded script
  directory;
- a worker opens ONE connection to its shard, reads the state of every tenant in one
  round trip, skips tenants already at the target without a transaction, and migrates the
  others one transaction per tenant, under a per-tenant advisory lock, re-reading the
  tenant's revision after the lock so two runs never migrate a tenant twice;
- the SQL of a step sequence is rendered once per worker and starting revision (Alembic's
  offline mode, exactly what ``--sql`` prints) and sent in one round trip per tenant with
  ``search_path`` set to the tenant (``segments``). Revisions that cannot be rendered
  offline run online through Alembic, tenant by tenant, on the same connection;
- a tenant that hits the lock timeout rolls back and comes back later (``retry``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg2
from sqlalchemy.pool import NullPool

from ppp_env import db
from ppp_env.errors import PPPError
from ppp_env.fleet import outside
from ppp_env.fleet import tenant_sql as sql
from ppp_env.fleet.hooks import AlembicHooks, OutsideTransaction, StepFailed, migrating
from ppp_env.fleet.options import RENDERABLE, RunOptions
from ppp_env.fleet.pacing import pacer_for
from ppp_env.fleet.results import LockWait, TenantResult
from ppp_env.fleet.retry import RetryQueue, seconds_text
from ppp_env.fleet.segments import PathPlan, Segment
from ppp_env.fleet.tenant_sql import LOCK_NAMESPACE
from ppp_env.identifiers import quote_ident
from ppp_env.settings import Settings
from ppp_env.tenant_state import (
    VERSION_TABLE,
    TenantState,
    ensure_index,
    read_states,
    revision_heads,
    track_sql,
)

#: Tenants a worker migrates on one shard session before it opens the next (measured with
#: benchmarks/scale.py, 20,000 tenants: 162.6 s on one session per worker, 70.7 s with a new
#: session every 500 tenants, 61.0 s every 250).
TENANTS_PER_SESSION = 250

__all__ = ["LOCK_NAMESPACE", "ShardJob", "run_shard"]

Emit = Callable[[tuple[Any, ...]], None]


@dataclass
class ShardJob:
    """Tenants of one shard for one worker (``lane``: which of the shard's workers)."""

    shard: str
    tenants: list[str]
    lane: int = 0
    #: ``time.monotonic()`` when the run started, in the parent (one clock for every process
    #: of the machine): tenants' start times count from it.
    since: float = 0.0
    #: The tenants' states as the parent read them just before (None: read them here).
    states: Mapping[str, TenantState] | None = None

    @property
    def key(self) -> str:
        return f"{self.shard}#{self.lane}"


class _Skip(Exception):
    """The tenant turned out to be current after its lock was taken."""


class _Blocked(Exception):
    """A migration statement of a tenant hit the lock timeout (the tenant rolled back)."""

    def __init__(self, error: BaseException, blocker: str) -> None:
        super().__init__(db.first_line(error))
        self.blocker = blocker


@dataclass(frozen=True)
class _Retry:
    """A tenant that hit the lock timeout with retries left: it comes back later."""

    error: str


@dataclass
class _Walk:
    """Where a tenant's migration stands within its transaction."""

    tenant: str
    state: TenantState
    heads: tuple[str, ...]
    has_table: bool
    #: SQL re-attaching the version index trigger, sent with the next COMMIT.
    track: str
    diagnose: bool = False
    #: Revisions ran online in this transaction (a replay would run their code again).
    ran_online: bool = False


@dataclass
class _ShardRun:
    """One worker's run over its shard: one connection, the tenants' states, the plans."""

    job: ShardJob
    settings: Settings
    options: RunOptions
    hooks: AlembicHooks
    conn: Any  # SQLAlchemy Connection, for Alembic's online path
    states: dict[str, TenantState] = field(default_factory=dict)
    #: Where ``conn`` came from: a new session every :data:`TENANTS_PER_SESSION` tenants.
    engine: Any = None

    def __post_init__(self) -> None:
        self.inst = self.settings.shard(self.job.shard)
        self._attach(self.conn)
        opts, st = self.options, self.settings
        self.steps = opts.lock_steps(st)
        #: The lock wait of the attempt in progress (``attempt`` sets it).
        self.lock_timeout = self.steps.step(1)
        self.statement_timeout = (
            st.statement_timeout if opts.statement_timeout is None else opts.statement_timeout
        )
        self.plan = PathPlan(self.hooks, render=opts.render)
        #: Whether the tenant in progress holds its advisory lock (its migration is running).
        self.migrating = False
        #: Per tenant, its attempts that hit the lock timeout so far (for the timeline).
        self.waits: dict[str, list[LockWait]] = {}
        self.pacer = pacer_for(st, self.job.shard, self.cur)
        #: Tenants found interrupted inside a revision outside a transaction, and how.
        self.interrupted: dict[str, str] = {}

    def _attach(self, conn: Any) -> None:
        self.conn = conn
        self.raw: Any = conn.connection.dbapi_connection
        self.raw.autocommit = True
        self.cur = self.raw.cursor()
        #: Tenants migrated in this session.
        self.served = 0

    def renew(self) -> None:
        """A new session for the next tenants once this one served
        :data:`TENANTS_PER_SESSION`: a backend that created thousands of schemas keeps every
        object it touched in its caches, and PostgreSQL walks them on each invalidation, so a
        tenant's migration got slower with every tenant before it on the same session."""
        if self.engine is None or self.served < TENANTS_PER_SESSION:
            return
        try:
            fresh = self.engine.connect()
        except Exception:  # the session in hand still works: keep it, try again later
            self.served = 0
            return
        old = self.conn
        self._attach(fresh)
        _check_client(self.cur)
        self.pacer.cur = self.cur
        with suppress(Exception):
            old.close()

    @property
    def online(self) -> dict[str, str]:
        return self.plan.online

    @property
    def renders(self) -> bool:
        return self.options.render and self.hooks.command in RENDERABLE

    def not_run(self, tenants: Sequence[str]) -> list[TenantResult]:
        return [
            TenantResult(self.job.shard, t, "not_run", self.states[t].revision) for t in tenants
        ]

    def timeouts_sql(self, scope: str = "LOCAL") -> str:
        """The attempt's lock wait inside a transaction; the full timeout for an autocommit
        block (SESSION), whose work commits as it goes and is not undone by a retry (a
        cancelled CREATE INDEX CONCURRENTLY leaves an invalid index behind)."""
        wait = self.lock_timeout if scope == "LOCAL" else self.steps.ceiling
        return sql.timeouts_sql(wait, self.statement_timeout, scope)

    # -- one tenant ---------------------------------------------------------------------------
    def migrate(self, tenant: str, *, diagnose: bool = False) -> tuple[str, ...]:
        """One tenant, one transaction: lock, re-read, apply; return its heads afterwards.

        A step found entering ``autocommit_block`` inside the transaction rolls the tenant
        back; from then on that step runs alone and the tenant starts again.
        """
        while True:
            try:
                return self._migrate(tenant, diagnose)
            except StepFailed as failed:
                outside = failed.error
                if not isinstance(outside, OutsideTransaction) or failed.label in self.plan.outside:
                    raise
                self.plan.learn_outside(failed.label, outside.where)

    def _migrate(self, tenant: str, diagnose: bool) -> tuple[str, ...]:
        """With ``diagnose``, rendered steps are sent one at a time (so a failure names its
        revision) and the transaction is always rolled back."""
        state = self.states[tenant]
        track = "" if state.tracked else track_sql(tenant, self.inst.app_role)
        if not diagnose:
            done = self.migrate_at_once(tenant, state, track)
            if done is not None:
                return done
        self.migrating = False
        try:
            heads, has_table = self.begin(tenant, state)
            walk = _Walk(tenant, state, heads, has_table, track, diagnose)
            self.walk(walk)
            self.cur.execute("ROLLBACK" if diagnose else f"{walk.track}COMMIT")
            return walk.heads
        except BaseException as exc:
            if not self.raw.closed:
                with suppress(psycopg2.Error):  # the original error is the one to report
                    self.cur.execute("ROLLBACK")
            if self.migrating and sql.is_lock_timeout(exc) and not self.raw.closed:
                raise _Blocked(exc, self.blocker(tenant)) from exc
            raise
        finally:
            self.migrating = False
            if not self.raw.closed:
                with suppress(Exception):
                    self.conn.rollback()  # SQLAlchemy's view of the connection: idle again

    def begin(self, tenant: str, state: TenantState) -> tuple[tuple[str, ...], bool]:
        """BEGIN, lock the tenant (waiting for another run at most PPP_LOCK_TIMEOUT), bound the
        migration's lock waits, re-read the tenant's heads and whether it has a version
        table."""
        lock = sql.lock_sql(tenant, self.options.lock == "skip", self.settings.lock_timeout)
        self.cur.execute("BEGIN;\n" + sql.prepare_sql(tenant, state, lock, self.timeouts_sql()))
        self.migrating = True
        value = self.cur.fetchone()[0]
        if state.heads:
            return revision_heads(value), True
        if value:  # a version table exists (maybe empty, maybe filled since the state was read)
            self.cur.execute(sql.versions_sql(tenant))
            return revision_heads(self.cur.fetchone()[0]), True
        return (), False

    def walk(self, walk: _Walk) -> None:
        """The tenant's path, segment by segment, from its heads after the lock."""
        start = walk.heads
        path = self.plan.path(start)
        if not path:
            raise _Skip(" ".join(walk.heads))
        pos = 0
        while pos < len(path):
            seg = self.plan.segment(start, pos)
            if seg.autocommit:
                if walk.diagnose:
                    return  # never commit while diagnosing
                self.through_autocommit(walk, seg)
            else:
                before = walk.heads
                self.apply(walk, seg)
                if walk.heads == before:
                    raise PPPError(f"no progress from {' '.join(walk.heads) or 'base'}")
            pos += seg.size

    def apply(self, walk: _Walk, seg: Segment) -> None:
        """A rendered or online segment inside the tenant's transaction."""
        if seg.chunks:
            # A rendered path from base creates the version table: an empty one left by
            # `downgrade base` goes first (its index trigger is re-attached at the commit).
            pre = ""
            if not walk.heads and walk.has_table:
                pre = f"DROP TABLE {quote_ident(walk.tenant)}.{VERSION_TABLE};\n"
                walk.track = track_sql(walk.tenant, self.inst.app_role)
            if walk.diagnose:
                for label, chunk in seg.chunks:
                    try:
                        self.cur.execute(pre + chunk)
                    except psycopg2.Error as exc:
                        raise StepFailed(label, exc) from exc
                    pre = ""
                self.cur.execute(sql.versions_sql(walk.tenant))
            else:
                self.send_rendered(walk, seg, pre)
        else:
            walk.ran_online = True
            fast = self.hooks.run_functions
            with migrating(walk.tenant):
                if fast is not None and seg.heads_after is not None and walk.has_table:
                    # The plan knows the heads after these steps: no version table probes.
                    fast(self.conn, walk.tenant, seg.online)
                    self.cur.execute(sql.heads_sql(walk.tenant, seg.heads_after))
                    walk.heads = seg.heads_after
                    return
                self.hooks.run_online(self.conn, walk.tenant, seg.online, False)
            self.cur.execute(sql.versions_sql(walk.tenant))
        walk.heads, walk.has_table = revision_heads(self.cur.fetchone()[0]), True

    def send_rendered(self, walk: _Walk, seg: Segment, pre: str) -> None:
        """A rendered segment in one round trip. Once revisions ran online in this
        transaction, a failure is named here (each revision's SQL preceded by a NOTICE
        marker) rather than by a replay, which would run their code again."""
        marked = walk.ran_online and len(seg.chunks) > 1
        body = seg.sql
        if marked:
            body = "".join(sql.step_marker(i) + c for i, (_l, c) in enumerate(seg.chunks))
        del self.raw.notices[:]
        try:
            self.cur.execute(f"{pre}{body}\n{sql.versions_sql(walk.tenant)}")
        except psycopg2.Error as exc:
            if not walk.ran_online or self.raw.closed or sql.is_lock_timeout(exc):
                raise
            at = sql.last_marker(self.raw.notices) if marked else 0
            if at is None:
                raise
            raise StepFailed(seg.chunks[at][0], exc) from exc

    def through_autocommit(self, walk: _Walk, seg: Segment) -> None:
        """Commit what came before, run the segment alone, open a new transaction for the
        rest (the tenant's heads re-read after its lock)."""
        self.cur.execute(f"{walk.track if walk.has_table else ''}COMMIT")
        walk.track = "" if walk.has_table else walk.track
        self.run_autocommit(walk.tenant, seg.online, walk.heads)
        walk.heads, walk.has_table = self.begin(
            walk.tenant, replace(walk.state, exists=True, heads=())
        )

    def migrate_at_once(
        self, tenant: str, state: TenantState, track: str
    ) -> tuple[str, ...] | None:
        """The common case in ONE round trip: the tenant is where its state says, its lock is
        free, and its whole path is one rendered segment. Returns its heads afterwards, or None
        when the careful path (lock wait, re-read, segments) must run instead."""
        if not self.renders:
            return None
        if state.has_version_table and not state.heads:
            return None  # an empty version table (after `downgrade base`): the careful path
        path = self.plan.path(state.heads)
        if not path:
            return None
        seg = self.plan.segment(state.heads, 0)
        if not seg.chunks or seg.size != len(path) or seg.heads_after is None:
            return None
        self.migrating = True
        try:
            self.cur.execute(sql.at_once_sql(tenant, state, self.timeouts_sql(), seg.sql, track))
        except psycopg2.Error as exc:
            if not self.raw.closed:
                with suppress(psycopg2.Error):
                    self.cur.execute("ROLLBACK")
            if exc.pgcode == sql.CHANGED and not self.raw.closed:
                return None  # someone else moved it or holds it: take the careful path
            if sql.is_lock_timeout(exc) and not self.raw.closed:
                raise _Blocked(exc, self.blocker(tenant)) from exc
            raise
        finally:
            self.migrating = False
        return seg.heads_after

    def run_autocommit(self, tenant: str, steps: Sequence[Any], heads: tuple[str, ...]) -> None:
        """Steps that commit mid-way (``autocommit_block``, e.g. CREATE INDEX CONCURRENTLY):
        through Alembic, outside PPP's transaction, under a session advisory lock, with the
        tenant recorded in ``ppp.tenant_outside`` meanwhile (:mod:`ppp_env.fleet.outside`):
        written in the lock's round trip, cleared with the new version. A record another
        session left (a killed run) is reported, and the step runs again."""
        key = sql.lock_key(tenant)
        label = self.hooks.label(steps[0])
        self.cur.execute(
            f"SET lock_timeout = {sql.ms(self.settings.lock_timeout)};\n"
            f"SELECT pg_advisory_lock({key});\n"
            f"SET search_path TO {quote_ident(tenant)};\n"
            + self.timeouts_sql("SESSION")
            + outside.WRITE_SQL,
            outside.start_params(tenant, steps[0], label, heads),
        )
        own = self.raw.get_backend_pid()
        before = outside.found_before(self.job.shard, self.cur.fetchone(), own)
        if before is not None:
            self.interrupted[tenant] = before.describe()
        done = False
        try:
            self.conn.rollback()  # SQLAlchemy's view: no transaction (the server has none)
            self.raw.autocommit = False
            with migrating(tenant), outside.watching(self.conn, self.cur, tenant):
                self.hooks.run_online(self.conn, tenant, steps, True)
            done = True
        except StepFailed as failed:
            raise outside.LeftBehind(failed, tenant, self.job.shard, before) from failed.error
        finally:
            with suppress(Exception):
                self.conn.rollback()
            if not self.raw.closed:
                self.raw.autocommit = True
                self.cur.execute(
                    (outside.clear_sql(tenant) + ";\n" if done else "")
                    + f"SELECT pg_advisory_unlock({key});\n"
                    "RESET search_path; RESET lock_timeout; RESET statement_timeout"
                )

    def blocker(self, tenant: str) -> str:
        """Who holds a lock on the tenant's tables: the session its migration waited for."""
        try:
            self.cur.execute(sql.BLOCKER_SQL, (quote_ident(tenant),))
            return sql.describe_blocker(self.cur.fetchone())
        except psycopg2.Error:
            return "the blocking session could not be read"

    def explain(self, tenant: str, error: BaseException) -> str:
        """The error of a failed tenant, naming the revision that failed when it can."""
        if isinstance(error, StepFailed):
            return str(error)
        if isinstance(error, psycopg2.Error) and not self.raw.closed:
            # A rendered segment failed as a whole: replay it step by step (rolled back).
            try:
                self.migrate(tenant, diagnose=True)
            except StepFailed as step:
                return f"{step.label}: {db.error_text(error)}"
            except Exception:  # the replay is only for the message
                pass
        return db.error_text(error)

    # -- the shard ----------------------------------------------------------------------------
    def attempt(self, tenant: str, attempt: int) -> TenantResult | _Retry:
        """Migrate ``tenant`` once, its statements waiting for locks at most this attempt's
        step: its result, or a retry when it hit that wait and is not given up yet (it rolled
        back: try it again later, with a longer wait)."""
        started = time.perf_counter()
        result = TenantResult(self.job.shard, tenant, "migrated", self.states[tenant].revision)
        result.attempts, result.lane = attempt, self.job.lane
        result.start = at = self.clock()
        self.lock_timeout = self.steps.step(attempt)
        try:
            heads = self.migrate(tenant)
            result.after = " ".join(heads) if heads else None
        except _Skip as skip:
            result.status, result.after = "current", str(skip) or None
        except _Blocked as blocked:
            waited = round(time.perf_counter() - started, 4)
            wait = LockWait(attempt, at, waited, blocked.blocker)
            self.waits.setdefault(tenant, []).append(wait)
            if not self.steps.gives_up(attempt):
                return _Retry(f"lock_timeout {seconds_text(self.lock_timeout)}: {blocked}")
            result.status = "locked"
            result.error = (
                f"could not get its locks in {attempt} attempt(s) "
                f"({self.steps.describe(attempt)}): {blocked.blocker}; rerun to finish"
            )
        except psycopg2.errors.LockNotAvailable as exc:
            result.status, result.error = "locked", db.first_line(exc)
        except Exception as exc:
            result.status, result.error = "failed", self.explain(tenant, exc)
        result.interrupted = self.interrupted.pop(tenant, None)
        result.seconds = time.perf_counter() - started
        result.waits = self.waits.pop(tenant, [])
        return result

    def clock(self) -> float:
        """Seconds since the run started."""
        return round(time.monotonic() - self.job.since, 4)

    def start(self, emit: Emit) -> list[str]:
        """Read every tenant's state; report the current ones; return the others."""
        _check_client(self.cur)
        ensure_index(self.cur, self.inst.app_role)
        given = self.job.states
        self.states = (
            {t: given[t] for t in self.job.tenants}
            if given is not None and all(t in given for t in self.job.tenants)
            else read_states(self.cur, self.job.tenants)
        )
        current: list[TenantResult] = []
        todo: list[str] = []
        for tenant in self.job.tenants:
            st = self.states[tenant]
            if self.plan.path(st.heads):
                todo.append(tenant)
            else:
                current.append(
                    TenantResult(self.job.shard, tenant, "current", st.revision, st.revision)
                )
        _track_current(self.cur, self.states, current, self.inst.app_role, self.settings)
        emit(("shard_start", self.job.shard, len(self.job.tenants), len(todo)))
        if current:
            emit(("results", self.job.shard, current))
        return todo

    def work(self, todo: list[str], emit: Emit, stop: Any) -> None:
        """Every tenant of ``todo``, retries included; stops at ``stop`` or a lost shard."""
        queue = RetryQueue(todo, stop)
        finished = 0
        while queue:
            paced = not stop.is_set() and self.pacer.wait(emit, stop)  # replicas caught up
            tenant = queue.next() if paced else None
            if tenant is None:
                emit(("results", self.job.shard, self.not_run(queue.rest())))
                return
            result = self.attempt(tenant, queue.attempts[tenant])
            if isinstance(result, _Retry):
                queue.later(tenant)  # the others go on meanwhile
                emit(("retry", self.job.shard, tenant, queue.attempts[tenant], result.error))
                continue
            finished += 1
            self.served += 1
            emit(("results", self.job.shard, [result]))
            if self.raw.closed:
                self.lost(queue.rest(), finished, len(todo), result, emit)
                return
            if queue:
                self.renew()
            if self.options.fail_fast and result.status in ("failed", "locked"):
                stop.set()  # before this worker takes its next tenant

    def lost(
        self, rest: list[str], finished: int, total: int, last: TenantResult, emit: Emit
    ) -> None:
        """The shard went away mid-fleet: the last tenant rolled back with its session; the
        rest were not tried. A rerun does what is left."""
        emit(("results", self.job.shard, self.not_run(rest)))
        url = self.inst.masked_url("admin")
        emit(
            (
                "shard_error",
                self.job.shard,
                f"connection to {url} lost after {finished - 1} of {total} tenants: {last.error}",
            )
        )


def _check_client(cur: Any) -> None:
    """Have the server notice a client that is gone even while it waits for a lock (PostgreSQL
    14+), so a killed worker's transaction rolls back at once, not when the lock comes."""
    with suppress(psycopg2.Error):
        cur.execute("SET client_connection_check_interval = '1s'")


def _track_current(
    cur: Any,
    states: Mapping[str, TenantState],
    current: list[TenantResult],
    app: str,
    settings: Settings,
) -> None:
    """Attach the version index trigger to current tenants that lack it (older tenants).

    Only an optimisation for the next run's state query: a failure here (a lock held too
    long by another run) is left for next time.
    """
    untracked = [r.tenant for r in current if states[r.tenant].has_version_table]
    untracked = [t for t in untracked if not states[t].tracked]
    for i in range(0, len(untracked), 500):
        chunk = untracked[i : i + 500]
        try:
            cur.execute(
                f"BEGIN; SET LOCAL lock_timeout = {sql.ms(settings.lock_timeout)};\n"
                + "".join(track_sql(t, app) for t in chunk)
                + "COMMIT;"
            )
        except psycopg2.Error:
            cur.execute("ROLLBACK")


def run_shard(
    job: ShardJob,
    settings: Settings,
    options: RunOptions,
    hooks: AlembicHooks,
    emit: Emit,
    stop: Any,
) -> None:
    """Migrate every tenant of one shard on one connection; report through ``emit``."""
    inst = settings.shard(job.shard)
    # No reset on return: PPP ends every transaction itself, and a reset on a connection
    # the server dropped would only log a traceback.
    engine = db.engine(
        inst,
        "admin",
        connect_timeout=settings.connect_timeout,
        poolclass=NullPool,
        pool_reset_on_return=None,
    )
    try:
        conn = engine.connect()
    except Exception as exc:
        why = f"unreachable: cannot connect at {inst.masked_url('admin')}: {db.first_line(exc)}"
        emit(("shard_error", job.shard, why))
        engine.dispose()
        return
    run: _ShardRun | None = None
    try:
        run = _ShardRun(job, settings, options, hooks, conn, engine=engine)
        run.work(run.start(emit), emit, stop)
    finally:
        if run is not None:
            run.pacer.close()
        if run is not None and run.online:
            emit(("online", job.shard, dict(run.online)))
        if run is not None:
            conn = run.conn
        if run is not None and run.raw.closed:
            with suppress(Exception):
                conn.invalidate()
        with suppress(Exception):  # a lost connection cannot be closed cleanly
            conn.close()
        engine.dispose()
