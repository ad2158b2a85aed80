"""The fleet runner: one Alembic command applied to every tenant on every shard.

Shape of a run (see DESIGN.md, "What the libraries allow"):

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

import multiprocessing
import queue as queue_module
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg2
from sqlalchemy.pool import NullPool

from ppp_env import db
from ppp_env.errors import PPPError
from ppp_env.fleet import VERSION_TABLE, TenantState, ensure_index, read_states, track_sql
from ppp_env.identifiers import quote_ident, quote_literal
from ppp_env.settings import Settings

#: First key of the per-tenant advisory lock (the second is hashtext(schema)).
LOCK_NAMESPACE = 0x505050  # "PPP"
#: Commands whose steps can be rendered once and replayed per tenant.
RENDERABLE = frozenset({"upgrade", "downgrade"})
#: Commands that change tenants' revisions (and so trigger a veneer refresh).
MUTATING = frozenset({"upgrade", "downgrade", "stamp"})


# -- options and results ------------------------------------------------------------------------
@dataclass
class RunOptions:
    """How a fleet run behaves; from ``-x key=value`` or ``ppp migrate`` options."""

    shards: list[str] | None = None
    tenants: list[str] | None = None
    fail_fast: bool = False
    jobs: int | None = None
    render: bool = True
    lock: str = "wait"
    refresh: bool = True
    output: str = "auto"
    verbose: bool = False
    sql_dir: str | None = None
    template: str | None = None

    X_KEYS = (
        "shard",
        "tenant",
        "fail_fast",
        "jobs",
        "render",
        "lock",
        "refresh",
        "output",
        "verbose",
        "sql_dir",
        "template",
    )

    @classmethod
    def from_x(cls, x: Mapping[str, str], base: RunOptions | None = None) -> RunOptions:
        opts = RunOptions(**asdict(base)) if base else RunOptions()
        for key, raw in x.items():
            if key not in cls.X_KEYS:
                raise PPPError(
                    f"unknown -x option {key!r}: expected one of {', '.join(cls.X_KEYS)}"
                )
            value = raw.strip()
            if key in ("shard", "tenant"):
                items = [v.strip() for v in value.split(",") if v.strip()]
                if not items:
                    raise PPPError(f"-x {key}= needs at least one name")
                setattr(opts, key + "s", items)
            elif key in ("fail_fast", "render", "refresh", "verbose"):
                setattr(opts, key, _boolean(key, value))
            elif key == "jobs":
                if not value.isdigit() or not 1 <= int(value) <= 64:
                    raise PPPError(f"-x jobs={value!r}: expected a number from 1 to 64")
                opts.jobs = int(value)
            elif key == "lock":
                if value not in ("wait", "skip"):
                    raise PPPError(f"-x lock={value!r}: expected wait or skip")
                opts.lock = value
            elif key == "output":
                if value not in ("auto", "plain", "rich", "json", "quiet"):
                    raise PPPError(
                        f"-x output={value!r}: expected auto, plain, rich, json or quiet"
                    )
                opts.output = value
            else:
                setattr(opts, key, value)
        return opts


def _boolean(key: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise PPPError(f"-x {key}={value!r}: expected true or false")


@dataclass
class TenantResult:
    shard: str
    tenant: str
    status: str  # migrated | current | failed | locked | not_run
    before: str | None = None
    after: str | None = None
    error: str | None = None
    seconds: float = 0.0


@dataclass
class FleetResult:
    command: str
    tenants: list[TenantResult] = field(default_factory=list)
    shard_errors: dict[str, str] = field(default_factory=dict)
    refreshed: list[str] = field(default_factory=list)
    refresh_pending: list[str] = field(default_factory=list)
    refresh_error: str | None = None
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for t in self.tenants if t.status == status)

    @property
    def problems(self) -> list[TenantResult]:
        return [t for t in self.tenants if t.status in ("failed", "locked", "not_run")]

    @property
    def ok(self) -> bool:
        return not self.problems and not self.shard_errors and not self.refresh_error

    @property
    def changed(self) -> list[str]:
        return [t.tenant for t in self.tenants if t.status == "migrated" and t.before != t.after]

    def summary(self) -> str:
        parts = [
            f"{self.count('migrated')} migrated",
            f"{self.count('current')} already current",
            f"{self.count('failed')} failed",
        ]
        if self.count("locked"):
            parts.append(f"{self.count('locked')} locked by another run")
        if self.count("not_run"):
            parts.append(f"{self.count('not_run')} not run")
        if self.shard_errors:
            parts.append(f"{len(self.shard_errors)} shard(s) unreachable")
        return ", ".join(parts) + f" in {self.seconds:.2f} s"

    def veneer_summary(self) -> str | None:
        """One line on the veneer refresh that followed the run, if one did."""
        if not (self.refreshed or self.refresh_pending):
            return None
        pending = f", pending: {', '.join(self.refresh_pending)}" if self.refresh_pending else ""
        return f"veneer: {len(self.refreshed)} tenant(s) refreshed{pending}"

    def failure_message(self) -> str:
        lines = [self.summary()]
        for name, error in self.shard_errors.items():
            lines.append(f"shard {name}: {error}")
        for t in self.problems:
            if t.status != "not_run":
                lines.append(f"{t.shard}/{t.tenant}: {t.error}")
        if self.refresh_error:
            lines.append(f"veneer refresh: {self.refresh_error}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "counts": {
                s: self.count(s) for s in ("migrated", "current", "failed", "locked", "not_run")
            },
            "shard_errors": self.shard_errors,
            "tenants": [asdict(t) for t in self.tenants],
            "veneer": {
                "refreshed": self.refreshed,
                "pending": self.refresh_pending,
                "error": self.refresh_error,
            },
        }


# -- the Alembic side a worker needs ------------------------------------------------------------
@dataclass
class AlembicHooks:
    """What the runner needs from the Alembic environment it runs in (see tenant_env)."""

    command: str
    steps: Callable[[tuple[str, ...]], list[Any]]
    render: Callable[[tuple[str, ...]], str | None]
    run_online: Callable[[Any, str], None]


_current_tenant: str | None = None
_rendering = False


class NeedsOnline(Exception):
    """Raised while rendering when a revision needs a live, tenant-specific run."""


def current_tenant() -> str:
    """The tenant schema being migrated; for revisions that must know it.

    Calling it marks the revision as tenant-specific: it then runs online per tenant
    instead of being rendered once for all.
    """
    if _rendering:
        raise NeedsOnline()
    if _current_tenant is None:
        raise PPPError("current_tenant() is only available while PPP migrates a tenant")
    return _current_tenant


@contextmanager
def rendering() -> Iterator[None]:
    global _rendering
    _rendering = True
    try:
        yield
    finally:
        _rendering = False


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


def _prepare_sql(tenant: str, state: TenantState, options: RunOptions, lock_timeout: float) -> str:
    """Lock the tenant, create its schema if missing, set search_path, re-read its revision."""
    qt = quote_ident(tenant)
    sql = _lock_sql(tenant, options, lock_timeout)
    if not state.exists:
        sql += f"CREATE SCHEMA IF NOT EXISTS {qt};\n"
    sql += f"SET LOCAL search_path TO {qt};\n"
    if state.heads:
        return sql + _versions_sql(tenant)
    return sql + f"SELECT to_regclass({quote_literal(qt + '.' + VERSION_TABLE)}) IS NOT NULL"


@contextmanager
def migrating(tenant: str) -> Iterator[None]:
    """Make :func:`current_tenant` answer ``tenant`` for the duration."""
    global _current_tenant
    _current_tenant = tenant
    try:
        yield
    finally:
        _current_tenant = None


@dataclass
class _ShardRun:
    """One worker's run over its shard: one connection, the tenants' states, the renders."""

    job: ShardJob
    settings: Settings
    options: RunOptions
    hooks: AlembicHooks
    conn: Any  # SQLAlchemy Connection, for Alembic's online path
    states: dict[str, TenantState] = field(default_factory=dict)
    renders: dict[tuple[str, ...], str | None] = field(default_factory=dict)
    _steps: dict[tuple[str, ...], bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.inst = self.settings.shard(self.job.shard)
        self.raw: Any = self.conn.connection.dbapi_connection
        self.raw.autocommit = True
        self.cur = self.raw.cursor()

    def has_steps(self, heads: tuple[str, ...]) -> bool:
        if heads not in self._steps:
            self._steps[heads] = bool(self.hooks.steps(heads))
        return self._steps[heads]

    def not_run(self, tenants: Sequence[str]) -> list[TenantResult]:
        return [
            TenantResult(self.job.shard, t, "not_run", self.states[t].revision) for t in tenants
        ]

    def reread(self, tenant: str, state: TenantState) -> tuple[str, ...]:
        """The tenant's heads as seen after its lock was taken (the prepare's last row)."""
        value = self.cur.fetchone()[0]
        if state.heads:
            return _heads(value)
        if value:  # a version table appeared since the state was read
            self.cur.execute(_versions_sql(tenant))
            return _heads(self.cur.fetchone()[0])
        return ()

    def migrate(self, tenant: str) -> tuple[str, ...]:
        """One tenant, one transaction: lock, re-read, apply; return its heads afterwards."""
        state, cur = self.states[tenant], self.cur
        prepare = _prepare_sql(tenant, state, self.options, self.settings.lock_timeout)
        track = "" if state.tracked else track_sql(tenant, self.inst.app_role)
        if self.options.render and self.hooks.command in RENDERABLE:
            try:
                cur.execute("BEGIN;\n" + prepare)
                heads = self.reread(tenant, state)
                if not self.has_steps(heads):
                    raise _Skip(" ".join(heads))
                if heads not in self.renders:
                    self.renders[heads] = self.hooks.render(heads)
                sql = self.renders[heads]
                if sql is not None:
                    cur.execute(f"{sql}\n{track}{_versions_sql(tenant)};")
                    after = cur.fetchone()[0]
                    cur.execute("COMMIT")
                    return _heads(after)
                cur.execute("ROLLBACK")
            except BaseException:
                if not self.raw.closed:
                    with suppress(psycopg2.Error):  # the original error is the one to report
                        cur.execute("ROLLBACK")
                raise
        # Online: through Alembic, on the same connection, inside one transaction.
        self.raw.autocommit = False
        try:
            with self.conn.begin():
                cur.execute(prepare)
                heads = self.reread(tenant, state)
                if not self.has_steps(heads):
                    raise _Skip(" ".join(heads))
                with migrating(tenant):
                    self.hooks.run_online(self.conn, tenant)
                cur.execute(track + _versions_sql(tenant))
                return _heads(cur.fetchone()[0])
        finally:
            self.raw.autocommit = True


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
    engine = db.engine(inst, "admin", connect_timeout=settings.connect_timeout, poolclass=NullPool)
    try:
        conn = engine.connect()
    except Exception as exc:
        emit(
            (
                "shard_error",
                job.shard,
                f"cannot connect at {inst.masked_url('admin')}: {db.first_line(exc)}",
            )
        )
        return
    try:
        run = _ShardRun(job, settings, options, hooks, conn)
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
        for i, tenant in enumerate(todo):
            if stop.is_set():
                emit(("results", job.shard, run.not_run(todo[i:])))
                break
            started = time.perf_counter()
            result = TenantResult(job.shard, tenant, "migrated", run.states[tenant].revision)
            try:
                heads = run.migrate(tenant)
                result.after = " ".join(heads) if heads else None
            except _Skip as skip:
                result.status, result.after = "current", str(skip) or None
            except psycopg2.errors.LockNotAvailable as exc:
                result.status, result.error = "locked", db.first_line(exc)
            except Exception as exc:
                result.status, result.error = "failed", db.first_line(exc)
            result.seconds = time.perf_counter() - started
            emit(("results", job.shard, [result]))
            if run.raw.closed:
                # The shard went away mid-fleet: this tenant rolled back with its session;
                # the rest were not tried. A rerun does what is left.
                emit(("results", job.shard, run.not_run(todo[i + 1 :])))
                emit(
                    (
                        "shard_error",
                        job.shard,
                        f"connection to {inst.masked_url('admin')} lost after {i} of "
                        f"{len(todo)} tenants: {result.error}",
                    )
                )
                return
            if options.fail_fast and result.status in ("failed", "locked"):
                stop.set()  # before this worker takes its next tenant
    finally:
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


# -- parent -------------------------------------------------------------------------------------
def run_fleet(
    settings: Settings,
    by_shard: Mapping[str, Sequence[str]],
    options: RunOptions,
    hooks: AlembicHooks,
    display: Any,
) -> FleetResult:
    """Run ``hooks`` over every tenant of ``by_shard``: shards in parallel, bounded by jobs."""
    started = time.perf_counter()
    result = FleetResult(hooks.command)
    mp = multiprocessing.get_context("fork")
    events: Any = mp.Queue()
    stop = mp.Event()
    jobs = options.jobs or settings.jobs
    pending = [ShardJob(s, list(t)) for s, t in by_shard.items() if t]
    running: dict[str, Any] = {}
    done: set[str] = set()

    def worker(job: ShardJob) -> None:  # runs in the forked child
        try:
            run_shard(job, settings, options, hooks, events.put, stop)
        except BaseException as exc:
            events.put(("shard_error", job.shard, f"{type(exc).__name__}: {exc}"))
        finally:
            events.put(("shard_done", job.shard))
            events.close()
            events.join_thread()

    def handle(event: tuple[Any, ...]) -> None:
        kind, shard = event[0], event[1]
        if kind == "shard_start":
            display.shard_started(shard, event[2], event[3])
        elif kind == "results":
            for r in event[2]:
                result.tenants.append(r)
                display.tenant_done(r)
                if r.status in ("failed", "locked") and options.fail_fast:
                    stop.set()
        elif kind == "shard_error":
            result.shard_errors[shard] = event[2]
            display.shard_failed(shard, event[2])
            if options.fail_fast:
                stop.set()
        elif kind == "shard_done":
            done.add(shard)

    with display:
        while pending or running:
            while pending and len(running) < jobs:
                job = pending.pop(0)
                if stop.is_set():
                    for t in job.tenants:
                        handle(("results", job.shard, [TenantResult(job.shard, t, "not_run")]))
                    continue
                proc = mp.Process(target=worker, args=(job,), name=f"ppp-{job.shard}")
                proc.start()
                running[job.shard] = proc
            with suppress(queue_module.Empty):
                handle(events.get(timeout=0.05))
            for shard, proc in list(running.items()):
                if shard in done:
                    proc.join()
                    del running[shard]
                elif not proc.is_alive():
                    # Drain what it sent before it died, then report it if it never finished.
                    _drain(events, handle)
                    if shard not in done:
                        handle(("shard_error", shard, f"worker died (exit code {proc.exitcode})"))
                        done.add(shard)
                    del running[shard]
        _drain(events, handle)
    result.seconds = time.perf_counter() - started
    return result


def _drain(events: Any, handle: Callable[[tuple[Any, ...]], None]) -> None:
    while True:
        try:
            handle(events.get(timeout=0.05))
        except queue_module.Empty:
            return
