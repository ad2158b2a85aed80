"""The fleet runner: one Alembic command applied to every tenant on every shard.

Shape of a run (docs/design-decisions.md, "Tenant migrations", says why):

- the parent process (Alembic's env.py) reads the catalog once and forks one worker per
  shard, at most ``jobs`` at a time: Alembic's ``context`` and ``op`` are process-wide, so
  parallelism is by process, each worker inheriting the loaded script directory;
- a worker opens ONE connection to its shard, reads the state of every tenant in one
  round trip, skips tenants already at the target without a transaction, and migrates the
  others one transaction per tenant, under a per-tenant advisory lock, re-reading the
  tenant's revision after the lock so two runs never migrate a tenant twice;
- the SQL of a step sequence is rendered once per worker and starting revision (Alembic's
  offline mode, exactly what ``--sql`` prints) and sent in one round trip per tenant with
  ``search_path`` set to the tenant. Revisions that cannot be rendered offline (they read
  from the database, call :func:`current_tenant`, or set ``ppp_online = True``) run online
  through Alembic, tenant by tenant, on the same connection;
- the parent shows progress, collects results, and refreshes the veneer's foreign tables
  of every tenant whose revision changed.
"""

from __future__ import annotations

import heapq
import os
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg2
from sqlalchemy.pool import NullPool

from ppp_env import db
from ppp_env.errors import PPPError
from ppp_env.fleet.hooks import (
    AlembicHooks,
    StepFailed,
    migrating,
)
from ppp_env.fleet.options import RENDERABLE, RunOptions
from ppp_env.fleet.results import TenantResult
from ppp_env.identifiers import quote_ident, quote_literal
from ppp_env.settings import Settings
from ppp_env.tenant_state import (
    VERSION_TABLE,
    TenantState,
    ensure_index,
    read_states,
    track_sql,
)

#: First key of the per-tenant advisory lock (the second is hashtext(schema)).
LOCK_NAMESPACE = 0x505050  # "PPP"


# -- worker -------------------------------------------------------------------------------------
@dataclass
class ShardJob:
    shard: str
    tenants: list[str]


class _Skip(Exception):
    """The tenant turned out to be current after its lock was taken."""


def _lock_sql(tenant: str, options: RunOptions, lock_timeout: float) -> str:
    q = quote_literal(tenant)
    if options.lock == "skip":
        take = (
            f"DO $ppp$BEGIN IF NOT pg_try_advisory_xact_lock({LOCK_NAMESPACE}, hashtext({q})) "
            f"THEN RAISE EXCEPTION 'tenant % is being migrated by another run', {q} "
            "USING ERRCODE = '55P03'; END IF; END$ppp$;"
        )
    else:
        take = f"SELECT pg_advisory_xact_lock({LOCK_NAMESPACE}, hashtext({q}));"
    return f"SET LOCAL lock_timeout = '{int(lock_timeout * 1000)}ms';\n{take}\n"


def _versions_sql(tenant: str) -> str:
    """The tenant's heads as one space-separated value (NULL when none)."""
    return (
        "SELECT string_agg(version_num, ' ' ORDER BY version_num) "
        f"FROM {quote_ident(tenant)}.{VERSION_TABLE}"
    )


def _heads(value: str | None) -> tuple[str, ...]:
    return tuple(value.split(" ")) if value else ()


def _prepare_sql(
    tenant: str, state: TenantState, options: RunOptions, lock_timeout: float, timeouts: str = ""
) -> str:
    """Lock the tenant, create its schema if missing, set search_path and the migration's own
    timeouts, re-read its revision: one round trip."""
    qt = quote_ident(tenant)
    sql = _lock_sql(tenant, options, lock_timeout)
    if not state.exists:
        sql += f"CREATE SCHEMA IF NOT EXISTS {qt};\n"
    sql += f"SET LOCAL search_path TO {qt};\n" + timeouts
    if state.heads:
        return sql + _versions_sql(tenant)
    return sql + f"SELECT to_regclass({quote_literal(qt + '.' + VERSION_TABLE)}) IS NOT NULL"


@dataclass(frozen=True)
class _Segment:
    """The next part of a tenant's path: rendered SQL of consecutive steps, or steps that run
    online through Alembic (``autocommit``: alone, outside the tenant's transaction)."""

    chunks: tuple[tuple[str, str], ...] = ()
    online: tuple[Any, ...] = ()
    autocommit: bool = False
    #: The heads after the rendered steps (None: not known, e.g. online steps).
    heads_after: tuple[str, ...] | None = None

    @property
    def size(self) -> int:
        return len(self.chunks) or len(self.online)

    @property
    def sql(self) -> str:
        return "".join(sql for _label, sql in self.chunks)


class _Blocked(Exception):
    """A migration statement of a tenant hit the lock timeout (the tenant rolled back)."""

    def __init__(self, error: BaseException, blocker: str) -> None:
        super().__init__(db.first_line(error))
        self.blocker = blocker


_BLOCKER_SQL = """
SELECT a.pid, coalesce(nullif(a.application_name, ''), '?'), a.state,
       to_char(a.xact_start, 'HH24:MI:SS'), to_char(a.query_start, 'HH24:MI:SS')
FROM pg_locks l
JOIN pg_class c ON c.oid = l.relation
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE c.relnamespace = to_regnamespace(%s) AND l.granted AND a.pid <> pg_backend_pid()
ORDER BY a.xact_start NULLS LAST
LIMIT 1
"""


@dataclass
class _ShardRun:
    """One worker's run over its shard: one connection, the tenants' states, the plans."""

    job: ShardJob
    settings: Settings
    options: RunOptions
    hooks: AlembicHooks
    conn: Any  # SQLAlchemy Connection, for Alembic's online path
    states: dict[str, TenantState] = field(default_factory=dict)
    #: Revisions that ran online on this shard, and why (reported once per run).
    online: dict[str, str] = field(default_factory=dict)
    _paths: dict[tuple[str, ...], list[Any]] = field(default_factory=dict)
    _segments: dict[tuple[tuple[str, ...], int], _Segment] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.inst = self.settings.shard(self.job.shard)
        self.raw: Any = self.conn.connection.dbapi_connection
        self.raw.autocommit = True
        self.cur = self.raw.cursor()
        opts, st = self.options, self.settings
        self.lock_timeout = (
            st.migration_lock_timeout if opts.lock_timeout is None else opts.lock_timeout
        )
        self.retries = st.lock_retries if opts.retries is None else opts.retries
        self.statement_timeout = (
            st.statement_timeout if opts.statement_timeout is None else opts.statement_timeout
        )
        #: Whether the tenant in progress holds its advisory lock (its migration is running).
        self.migrating = False

    def path(self, heads: tuple[str, ...]) -> list[Any]:
        """The steps from ``heads`` to the destination, worked out once per starting heads (a
        relative destination such as ``-3`` counts from where the tenant started)."""
        if heads not in self._paths:
            self._paths[heads] = self.hooks.steps(heads)
        return self._paths[heads]

    def has_steps(self, heads: tuple[str, ...]) -> bool:
        return bool(self.path(heads))

    def not_run(self, tenants: Sequence[str]) -> list[TenantResult]:
        return [
            TenantResult(self.job.shard, t, "not_run", self.states[t].revision) for t in tenants
        ]

    def segment(self, start: tuple[str, ...], pos: int, heads: tuple[str, ...]) -> _Segment:
        """What to run at step ``pos`` of the path from ``start`` (the tenant is at ``heads``);
        planned once per worker.

        Renderable steps are rendered (once, then replayed for every tenant on that path); a
        step that cannot be rendered runs online, alone, and rendering resumes after it; a step
        that needs to run outside a transaction (``autocommit_block``) runs alone, online.
        """
        key = (start, pos)
        if key in self._segments:
            return self._segments[key]
        rest = self.path(start)[pos:]
        auto = [self.hooks.autocommit(step) for step in rest]
        seg: _Segment
        if auto[0]:
            seg = _Segment(online=(rest[0],), autocommit=True)
            self.online[self.hooks.label(rest[0])] = (
                "it runs outside a transaction (autocommit_block)"
            )
        else:
            plain = rest[: auto.index(True)] if True in auto else rest
            if not (self.options.render and self.hooks.command in RENDERABLE):
                seg = _Segment(online=tuple(plain))
            else:
                rendered = self.hooks.render(plain, heads)
                if rendered.chunks:
                    after = (
                        rendered.heads[-1] if len(rendered.heads) == len(rendered.chunks) else None
                    )
                    seg = _Segment(chunks=tuple(rendered.chunks), heads_after=after)
                else:
                    seg = _Segment(online=(plain[0],))
                    if rendered.stopped_at:
                        self.online[rendered.stopped_at] = rendered.reason or "cannot be rendered"
        self._segments[key] = seg
        return seg

    def reread(self, tenant: str, state: TenantState) -> tuple[tuple[str, ...], bool]:
        """The tenant's heads as seen after its lock was taken (the prepare's last row), and
        whether its version table exists."""
        value = self.cur.fetchone()[0]
        if state.heads:
            return _heads(value), True
        if value:  # a version table exists (maybe empty, maybe filled since the state was read)
            self.cur.execute(_versions_sql(tenant))
            return _heads(self.cur.fetchone()[0]), True
        return (), False

    def timeouts_sql(self, scope: str = "LOCAL") -> str:
        """The bounds for the migration's own statements (after the advisory lock)."""
        sql = f"SET {scope} lock_timeout = '{int(self.lock_timeout * 1000)}ms';\n"
        if self.statement_timeout:
            sql += f"SET {scope} statement_timeout = '{int(self.statement_timeout * 1000)}ms';\n"
        return sql

    def begin(self, tenant: str, state: TenantState) -> tuple[tuple[str, ...], bool]:
        """BEGIN, lock the tenant (waiting for another run at most PPP_LOCK_TIMEOUT), bound the
        migration's lock waits, re-read the tenant's heads."""
        prepare = _prepare_sql(
            tenant, state, self.options, self.settings.lock_timeout, self.timeouts_sql()
        )
        self.cur.execute("BEGIN;\n" + prepare)
        self.migrating = True
        return self.reread(tenant, state)

    def migrate(self, tenant: str, *, diagnose: bool = False) -> tuple[str, ...]:
        """One tenant, one transaction: lock, re-read, apply; return its heads afterwards.

        A revision that must run outside a transaction splits it: what came before commits,
        the revision runs alone, and a new transaction takes the rest. With ``diagnose``,
        rendered steps are sent one at a time (so a failure names its revision) and the
        transaction is always rolled back.
        """
        state, cur = self.states[tenant], self.cur
        track = "" if state.tracked else track_sql(tenant, self.inst.app_role)
        if not diagnose:
            done = self.migrate_at_once(tenant, state, track)
            if done is not None:
                return done
        self.migrating = False
        try:
            heads, has_table = self.begin(tenant, state)
            start = heads
            path = self.path(start)
            if not path:
                raise _Skip(" ".join(heads))
            pos = 0
            while pos < len(path):
                seg = self.segment(start, pos, heads)
                before = heads
                if seg.autocommit:
                    if diagnose:
                        break  # never commit while diagnosing
                    cur.execute(f"{track if has_table else ''}COMMIT")
                    track = "" if has_table else track
                    self.run_autocommit(tenant, seg.online)
                    heads, has_table = self.begin(tenant, replace(state, exists=True, heads=()))
                    pos += seg.size
                    continue
                if seg.chunks:
                    # A rendered path from base creates the version table: an empty one left
                    # by `downgrade base` goes first (its index trigger is re-attached below).
                    pre = ""
                    if not heads and has_table:
                        pre = f"DROP TABLE {quote_ident(tenant)}.{VERSION_TABLE};\n"
                        track = track_sql(tenant, self.inst.app_role)
                    if diagnose:
                        for label, sql in seg.chunks:
                            try:
                                cur.execute(pre + sql)
                            except psycopg2.Error as exc:
                                raise StepFailed(label, exc) from exc
                            pre = ""
                        cur.execute(_versions_sql(tenant))
                    else:
                        cur.execute(f"{pre}{seg.sql}\n{_versions_sql(tenant)}")
                else:
                    with migrating(tenant):
                        self.hooks.run_online(self.conn, tenant, seg.online, False)
                    cur.execute(_versions_sql(tenant))
                heads, has_table = _heads(cur.fetchone()[0]), True
                if heads == before:
                    raise PPPError(f"no progress from {' '.join(heads) or 'base'}")
                pos += seg.size
            if diagnose:
                cur.execute("ROLLBACK")
            else:
                cur.execute(f"{track}COMMIT")
            return heads
        except BaseException as exc:
            if not self.raw.closed:
                with suppress(psycopg2.Error):  # the original error is the one to report
                    cur.execute("ROLLBACK")
            if self.migrating and _lock_timeout(exc) and not self.raw.closed:
                raise _Blocked(exc, self.blocker(tenant)) from exc
            raise
        finally:
            self.migrating = False
            if not self.raw.closed:
                with suppress(Exception):
                    self.conn.rollback()  # SQLAlchemy's view of the connection: idle again

    def migrate_at_once(
        self, tenant: str, state: TenantState, track: str
    ) -> tuple[str, ...] | None:
        """The common case in ONE round trip: the tenant is where its state says, its lock is
        free, and its whole path is one rendered segment. Returns its heads afterwards, or None
        when the careful path (lock wait, re-read, segments) must run instead."""
        if not (self.options.render and self.hooks.command in RENDERABLE):
            return None
        if state.has_version_table and not state.heads:
            return None  # an empty version table (after `downgrade base`): the careful path
        path = self.path(state.heads)
        if not path:
            return None
        seg = self.segment(state.heads, 0, state.heads)
        if not seg.chunks or seg.size != len(path) or seg.heads_after is None:
            return None
        qt = quote_ident(tenant)
        if state.heads:
            expected = quote_literal(" ".join(state.heads))
            moved = (
                f"(SELECT string_agg(version_num, ' ' ORDER BY version_num COLLATE \"C\") "
                f"FROM {qt}.{VERSION_TABLE}) IS DISTINCT FROM {expected}"
            )
        else:
            moved = f"to_regclass({quote_literal(qt + '.' + VERSION_TABLE)}) IS NOT NULL"
        sql = (
            "BEGIN;\n"
            + self.timeouts_sql()
            + f"DO $ppp$BEGIN IF NOT pg_try_advisory_xact_lock({LOCK_NAMESPACE}, "
            f"hashtext({quote_literal(tenant)})) OR {moved} THEN "
            f"RAISE EXCEPTION 'tenant changed or busy' USING ERRCODE = '{_CHANGED}'; "
            "END IF; END$ppp$;\n"
            + ("" if state.exists else f"CREATE SCHEMA IF NOT EXISTS {qt};\n")
            + f"SET LOCAL search_path TO {qt};\n"
            + seg.sql
            + f"\n{track}COMMIT;"
        )
        self.migrating = True
        try:
            self.cur.execute(sql)
        except psycopg2.Error as exc:
            if not self.raw.closed:
                with suppress(psycopg2.Error):
                    self.cur.execute("ROLLBACK")
            if exc.pgcode == _CHANGED and not self.raw.closed:
                return None  # someone else moved it or holds it: take the careful path
            if _lock_timeout(exc) and not self.raw.closed:
                raise _Blocked(exc, self.blocker(tenant)) from exc
            raise
        finally:
            self.migrating = False
        return seg.heads_after

    def run_autocommit(self, tenant: str, steps: Sequence[Any]) -> None:
        """Steps that commit mid-way (``autocommit_block``, e.g. CREATE INDEX CONCURRENTLY):
        through Alembic, outside PPP's transaction, under a session advisory lock."""
        q, qt = quote_literal(tenant), quote_ident(tenant)
        key = f"{LOCK_NAMESPACE}, hashtext({q})"
        self.cur.execute(
            f"SET lock_timeout = '{int(self.settings.lock_timeout * 1000)}ms';\n"
            f"SELECT pg_advisory_lock({key});\n"
            f"SET search_path TO {qt};\n" + self.timeouts_sql("SESSION")
        )
        try:
            self.conn.rollback()  # SQLAlchemy's view: no transaction (the server has none)
            self.raw.autocommit = False
            with migrating(tenant):
                self.hooks.run_online(self.conn, tenant, steps, True)
        finally:
            with suppress(Exception):
                self.conn.rollback()
            if not self.raw.closed:
                self.raw.autocommit = True
                self.cur.execute(
                    f"SELECT pg_advisory_unlock({key});\n"
                    "RESET search_path; RESET lock_timeout; RESET statement_timeout"
                )

    def blocker(self, tenant: str) -> str:
        """Who holds a lock on the tenant's tables: the session its migration waited for."""
        try:
            self.cur.execute(_BLOCKER_SQL, (quote_ident(tenant),))
            row = self.cur.fetchone()
        except psycopg2.Error:
            return "the blocking session could not be read"
        if row is None:
            return "the blocking session has ended"
        pid, app, state, xact, query = row
        return (
            f"blocked by pid {pid} (application {app!r}, {state}, transaction since {xact}, "
            f"query since {query})"
        )

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


#: SQLSTATE PPP raises when a tenant changed (or is locked) since its state was read.
_CHANGED = "PPPA1"


def _lock_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` (maybe wrapped by SQLAlchemy or StepFailed) is a lock timeout."""
    for candidate in (exc, getattr(exc, "error", None), getattr(exc, "orig", None)):
        inner = getattr(candidate, "orig", candidate)
        if isinstance(inner, psycopg2.errors.LockNotAvailable):
            return True
    return False


def _backoff(attempt: int) -> float:
    """Seconds before retry ``attempt`` (1, 2, ...): doubling from 0.5 s, at most 15 s, with
    jitter so that retries of many tenants do not line up."""
    return float(min(15.0, 0.5 * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.5))


def _watch_parent(parent: int, interval: float = 0.5) -> None:
    """In a worker: exit at once when the parent process is gone (killed, even by SIGKILL).

    The worker's connection closes with it, so the server rolls back its tenant's
    transaction; without this a forked worker waits forever for a parent that is gone.
    """

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(3)
            time.sleep(interval)

    threading.Thread(target=watch, name="ppp-parent-watch", daemon=True).start()


def _check_client(cur: Any) -> None:
    """Have the server notice a client that is gone even while it waits for a lock (PostgreSQL
    14+), so a killed worker's transaction rolls back at once, not when the lock comes."""
    with suppress(psycopg2.Error):
        cur.execute("SET client_connection_check_interval = '1s'")


def run_shard(
    job: ShardJob,
    settings: Settings,
    options: RunOptions,
    hooks: AlembicHooks,
    emit: Callable[[tuple[Any, ...]], None],
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
        emit(
            (
                "shard_error",
                job.shard,
                f"unreachable: cannot connect at {inst.masked_url('admin')}: {db.first_line(exc)}",
            )
        )
        return
    run: _ShardRun | None = None
    try:
        run = _ShardRun(job, settings, options, hooks, conn)
        _check_client(run.cur)
        ensure_index(run.cur, inst.app_role)
        run.states = read_states(run.cur, job.tenants)
        current: list[TenantResult] = []
        todo: list[str] = []
        for tenant in job.tenants:
            st = run.states[tenant]
            if run.has_steps(st.heads):
                todo.append(tenant)
            else:
                current.append(TenantResult(job.shard, tenant, "current", st.revision, st.revision))
        _track_current(run.cur, run.states, current, inst.app_role, settings.lock_timeout)
        emit(("shard_start", job.shard, len(job.tenants), len(todo)))
        if current:
            emit(("results", job.shard, current))
        queue: deque[str] = deque(todo)
        later: list[tuple[float, int, str]] = []  # (ready at, order, tenant): lock retries
        attempts: Counter[str] = Counter()
        finished = 0
        while queue or later:
            if stop.is_set():
                emit(("results", job.shard, run.not_run([*queue, *(t for _, _, t in later)])))
                break
            if queue:
                tenant = queue.popleft()
            else:
                ready, _, tenant = heapq.heappop(later)
                while (wait := ready - time.monotonic()) > 0 and not stop.is_set():
                    time.sleep(min(wait, 0.2))
                if stop.is_set():
                    queue.appendleft(tenant)
                    continue
            attempts[tenant] += 1
            started = time.perf_counter()
            result = TenantResult(job.shard, tenant, "migrated", run.states[tenant].revision)
            result.attempts = attempts[tenant]
            try:
                heads = run.migrate(tenant)
                result.after = " ".join(heads) if heads else None
            except _Skip as skip:
                result.status, result.after = "current", str(skip) or None
            except _Blocked as blocked:
                if attempts[tenant] <= run.retries:
                    # Rolled back; others go on meanwhile, this one comes back later.
                    ready = time.monotonic() + _backoff(attempts[tenant])
                    heapq.heappush(later, (ready, len(todo) + finished, tenant))
                    emit(("retry", job.shard, tenant, attempts[tenant], str(blocked)))
                    continue
                result.status = "locked"
                result.error = (
                    f"could not get its locks in {attempts[tenant]} attempt(s) (lock_timeout "
                    f"{run.lock_timeout:g} s): {blocked.blocker}; rerun to finish"
                )
            except psycopg2.errors.LockNotAvailable as exc:
                result.status, result.error = "locked", db.first_line(exc)
            except Exception as exc:
                result.status, result.error = "failed", run.explain(tenant, exc)
            finished += 1
            result.seconds = time.perf_counter() - started
            emit(("results", job.shard, [result]))
            if run.raw.closed:
                # The shard went away mid-fleet: this tenant rolled back with its session;
                # the rest were not tried. A rerun does what is left.
                rest = [*queue, *(t for _, _, t in later)]
                emit(("results", job.shard, run.not_run(rest)))
                emit(
                    (
                        "shard_error",
                        job.shard,
                        f"connection to {inst.masked_url('admin')} lost after {finished - 1} of "
                        f"{len(todo)} tenants: {result.error}",
                    )
                )
                return
            if options.fail_fast and result.status in ("failed", "locked"):
                stop.set()  # before this worker takes its next tenant
    finally:
        if run is not None and run.online:
            emit(("online", job.shard, dict(run.online)))
        if run is not None and run.raw.closed:
            with suppress(Exception):
                conn.invalidate()
        with suppress(Exception):  # a lost connection cannot be closed cleanly
            conn.close()
        engine.dispose()


def _track_current(
    cur: Any, states: Mapping[str, TenantState], current: list[TenantResult], app: str, wait: float
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
                f"BEGIN; SET LOCAL lock_timeout = '{int(wait * 1000)}ms';\n"
                + "".join(track_sql(t, app) for t in chunk)
                + "COMMIT;"
            )
        except psycopg2.Error:
            cur.execute("ROLLBACK")
