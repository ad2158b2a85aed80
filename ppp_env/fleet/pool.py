"""The parent of a fleet run: one forked worker process per shard, at most ``jobs`` at once
(Alembic's ``context`` and ``op`` are process-wide), their events gathered into one result."""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import Any

from ppp_env.fleet.hooks import AlembicHooks
from ppp_env.fleet.options import RunOptions
from ppp_env.fleet.results import FleetResult, TenantResult
from ppp_env.fleet.worker import ShardJob, run_shard
from ppp_env.settings import Settings
from ppp_env.tenant_state import TenantState


def run_fleet(
    settings: Settings,
    by_shard: Mapping[str, Sequence[str]],
    options: RunOptions,
    hooks: AlembicHooks,
    display: Any,
    states: Mapping[str, TenantState] | None = None,
) -> FleetResult:
    """Run ``hooks`` over every tenant of ``by_shard``: shards in parallel, bounded by jobs.

    ``states``: every tenant's state, read by the caller; the tenants it shows with nothing to
    do are settled here (no worker, no second read), the workers get it for the others."""
    started = time.perf_counter()
    pool = _Pool(settings, by_shard, options, hooks, display, states)
    with display:
        pool.run()
    pool.result.seconds = time.perf_counter() - started
    return pool.result


def watch_parent(parent: int, interval: float = 0.5) -> None:
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


def death(exitcode: int | None) -> str:
    """What happened to a worker that ended without finishing its shard."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return (
            f"its worker process was killed by {name}; the tenant it was migrating rolled back, "
            "the rest were not tried: rerun to finish"
        )
    return f"its worker process exited with code {exitcode} before finishing: rerun to finish"


def lanes(
    shard: str,
    tenants: Sequence[str],
    width: int,
    states: Mapping[str, TenantState] | None = None,
) -> list[ShardJob]:
    """A shard's tenants dealt round-robin to ``width`` workers (fewer for fewer tenants)."""
    n = max(1, min(width, len(tenants)))
    return [ShardJob(shard, list(tenants[i::n]), i, states=states) for i in range(n)]


def settle(
    shard: str,
    tenants: Sequence[str],
    states: Mapping[str, TenantState],
    hooks: AlembicHooks,
) -> tuple[list[str], list[TenantResult]]:
    """The tenants a worker must see, and the results of those already where the command
    goes (a known state, its version index trigger attached, an empty path): what a worker
    would report for them after reading their state again."""
    paths: dict[tuple[str, ...], bool] = {}
    todo: list[str] = []
    current: list[TenantResult] = []
    for tenant in tenants:
        st = states.get(tenant)
        if st is None or not st.exists or (st.has_version_table and not st.tracked):
            todo.append(tenant)
            continue
        if st.heads not in paths:
            paths[st.heads] = bool(hooks.steps(st.heads))
        if paths[st.heads]:
            todo.append(tenant)
        else:
            current.append(TenantResult(shard, tenant, "current", st.revision, st.revision))
    return todo, current


class _Pool:
    """Forked workers, their event queue, and the result their events build.

    ``jobs`` shards run at once; each with ``jobs_per_shard`` workers (lanes), each lane on
    its own connection with its share of the shard's tenants. A shard's lanes start
    together, and the display hears of the shard once all of them have read their states.
    """

    def __init__(
        self,
        settings: Settings,
        by_shard: Mapping[str, Sequence[str]],
        options: RunOptions,
        hooks: AlembicHooks,
        display: Any,
        states: Mapping[str, TenantState] | None = None,
    ) -> None:
        self.settings, self.by_shard, self.options = settings, by_shard, options
        self.hooks, self.display = hooks, display
        self.result = FleetResult(hooks.command)
        self.mp = multiprocessing.get_context("fork")
        self.events: Any = self.mp.Queue()
        self.stop = self.mp.Event()
        self.jobs = options.jobs or settings.jobs
        width = options.jobs_per_shard or settings.jobs_per_shard
        #: Per shard, the results of tenants settled here (``settle``), shown as one more lane.
        self.settled: dict[str, list[TenantResult]] = {}
        self.pending = []
        for shard, names in by_shard.items():
            todo = list(names)
            if states is not None:
                todo, self.settled[shard] = settle(shard, todo, states, hooks)
            if todo:
                self.pending.append(lanes(shard, todo, width, states))
        self.since = time.monotonic()  # tenants' and shards' times count from here
        self.result.started_at = time.time()
        for job in (job for group in self.pending for job in group):
            job.since = self.since
        self.lanes = {group[0].shard: len(group) for group in self.pending}
        for shard, results in self.settled.items():
            if results:
                self.lanes[shard] = self.lanes.get(shard, 0) + 1
        self.started: dict[str, list[int]] = {}  # shard -> [lanes started, total, to do]
        #: Results of shards whose lanes have not all started yet (shown once they have).
        self.waiting: dict[str, list[TenantResult]] = {}
        self.running: dict[str, tuple[ShardJob, Any]] = {}  # lane key -> (job, process)
        self.done: set[str] = set()
        self.parent = os.getpid()
        self.failures = 0

    def run(self) -> None:
        for shard, results in self.settled.items():
            if results:
                self.result.shard_spans.setdefault(shard, [self.clock()])
                self.shard_started(shard, len(results), 0)
                self.handle(("results", shard, results))
                if shard not in {group[0].shard for group in self.pending}:
                    self.span_end(shard)
        while self.pending or self.running:
            self.start_workers()
            with suppress(queue_module.Empty):
                self.handle(self.events.get(timeout=0.05))
            self.reap()
        self.drain()
        for results in self.waiting.values():  # a shard some of whose lanes never started
            for r in results:
                self.display.tenant_done(r)
        self.waiting.clear()

    def start_workers(self) -> None:
        while self.pending and len({j.shard for j, _ in self.running.values()}) < self.jobs:
            group = self.pending.pop(0)
            for job in group:
                if self.stop.is_set():
                    self.handle(("results", job.shard, self.untried(job)))
                    continue
                proc = self.mp.Process(target=self.worker, args=(job,), name=f"ppp-{job.key}")
                self.result.shard_spans.setdefault(job.shard, [self.clock()])
                proc.start()
                self.running[job.key] = (job, proc)

    def worker(self, job: ShardJob) -> None:  # runs in the forked child
        watch_parent(self.parent)
        try:
            run_shard(job, self.settings, self.options, self.hooks, self.events.put, self.stop)
        except BaseException as exc:
            self.events.put(("shard_error", job.shard, f"{type(exc).__name__}: {exc}"))
        finally:
            self.events.put(("shard_done", job.key))
            self.events.close()
            self.events.join_thread()

    def reap(self) -> None:
        """Join finished workers; a worker that died is reported with its untried tenants."""
        for key, (job, proc) in list(self.running.items()):
            if key in self.done:
                proc.join()
                del self.running[key]
            elif not proc.is_alive():
                self.drain()  # what it sent before it died
                if key not in self.done:
                    if untried := self.untried(job):
                        self.handle(("results", job.shard, untried))
                    self.handle(("shard_error", job.shard, death(proc.exitcode)))
                    self.done.add(key)
                del self.running[key]

    def untried(self, job: ShardJob) -> list[TenantResult]:
        seen = {t.tenant for t in self.result.tenants if t.shard == job.shard}
        return [TenantResult(job.shard, t, "not_run") for t in job.tenants if t not in seen]

    def shard_started(self, shard: str, total: int, todo: int) -> None:
        """A lane read its states: the display hears of the shard when all its lanes did."""
        seen = self.started.setdefault(shard, [0, 0, 0])
        seen[0], seen[1], seen[2] = seen[0] + 1, seen[1] + total, seen[2] + todo
        if seen[0] < self.lanes.get(shard, 1):
            self.waiting.setdefault(shard, [])
            return
        self.display.shard_started(shard, seen[1], seen[2])
        for r in self.waiting.pop(shard, []):
            self.display.tenant_done(r)

    def handle(self, event: tuple[Any, ...]) -> None:
        kind, shard = event[0], event[1]
        if kind == "shard_start":
            self.shard_started(shard, event[2], event[3])
        elif kind == "results":
            for r in event[2]:
                self.result.tenants.append(r)
                if shard in self.waiting:  # before all its lanes started: shown then
                    self.waiting[shard].append(r)
                else:
                    self.display.tenant_done(r)
                if r.status in ("failed", "locked"):
                    self.failures += 1
                    limit = 1 if self.options.fail_fast else self.options.max_failures
                    if limit is not None and self.failures >= limit:
                        self.stop.set()
        elif kind == "online":
            self.result.online.update(event[2])
        elif kind == "retry":
            self.display.tenant_retry(shard, event[2], event[3], event[4])
        elif kind == "shard_error":
            self.result.shard_errors[shard] = event[2]
            self.display.shard_failed(shard, event[2])
            if self.options.fail_fast:
                self.stop.set()
        elif kind in ("pausing", "paused", "warning"):
            self.replica_event(kind, event[2])
        elif kind == "shard_done":  # of one lane (``shard`` is its key)
            self.done.add(shard)
            self.span_end(shard)

    def clock(self) -> float:
        return round(time.monotonic() - self.since, 4)

    def span_end(self, key: str) -> None:
        """A lane finished: its shard's span ends now (its last lane's end stays)."""
        running = self.running.get(key)
        span = self.result.shard_spans.get(running[0].shard if running else key.split("#")[0])
        if span:
            span[1:] = [self.clock()]

    def replica_event(self, kind: str, detail: Any) -> None:
        """A shard waiting for its replicas (``fleet.pacing``): shown, and kept in the result."""
        if kind == "pausing":
            self.display.shard_pausing(detail)
        elif kind == "paused":
            self.result.pauses.append(detail)
            self.display.shard_paused(detail)
        else:
            self.result.warnings.append(detail)
            self.display.warning(detail)

    def drain(self) -> None:
        while True:
            try:
                self.handle(self.events.get(timeout=0.05))
            except queue_module.Empty:
                return
