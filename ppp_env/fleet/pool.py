"""The parent of a fleet run: one forked worker process per shard, at most ``jobs`` at once
(Alembic's ``context`` and ``op`` are process-wide), their events gathered into one result."""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from typing import Any

from ppp_env.fleet.hooks import AlembicHooks
from ppp_env.fleet.options import RunOptions
from ppp_env.fleet.results import FleetResult, TenantResult
from ppp_env.fleet.worker import ShardJob, _watch_parent, run_shard
from ppp_env.settings import Settings


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
    parent = os.getpid()

    def worker(job: ShardJob) -> None:  # runs in the forked child
        _watch_parent(parent)
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
        elif kind == "online":
            result.online.update(event[2])
        elif kind == "retry":
            display.tenant_retry(shard, event[2], event[3], event[4])
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
                        seen = {t.tenant for t in result.tenants if t.shard == shard}
                        untried = [
                            TenantResult(shard, t, "not_run")
                            for t in by_shard[shard]
                            if t not in seen
                        ]
                        if untried:
                            handle(("results", shard, untried))
                        handle(("shard_error", shard, _death(proc.exitcode)))
                        done.add(shard)
                    del running[shard]
        _drain(events, handle)
    result.seconds = time.perf_counter() - started
    return result


def _death(exitcode: int | None) -> str:
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


def _drain(events: Any, handle: Callable[[tuple[Any, ...]], None]) -> None:
    while True:
        try:
            handle(events.get(timeout=0.05))
        except queue_module.Empty:
            return
