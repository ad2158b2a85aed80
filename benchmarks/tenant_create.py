#!/usr/bin/env python3
"""Tenant creation at runtime: PPP's library call against the naive way, in one run.

Builds a throwaway topology (veneer + 3 shards, local servers, default server settings), a
veneer with the catalog line only, and the 5-revision chain of benchmarks/fleet. Then:

  (a) PPP: ``ppp_env.lifecycle.create_tenant(settings, name, shard, ini)``: catalog row,
      schema and 5 revisions on the shard (the fleet runner for one tenant, in-process),
      veneer wiring, state active. Median of --creates calls (each a new tenant), with the
      median of each step.
  (b) naive: the same tenant registered in the catalog, its migrations through Alembic's
      command line (``alembic -c <ini> -x tenant=T upgrade head``, a process), then the
      same veneer refresh and activation. Median of --creates tenants.
  (c) --concurrent creates at once, one process each (the application's sign-up flow under
      load): every one must succeed; the wall time is printed.

Target: (a) under 100 ms.

Usage: python benchmarks/tenant_create.py [--creates 10] [--concurrent 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from common import (
    BENCH,
    Stopwatch,
    fail,
    figure,
    local_topology,
    median,
    run_command,
    times,
    veneer_catalog_only,
    write_ini,
)

from ppp_env.lifecycle import create_tenant
from ppp_env.settings import load_settings
from ppp_env.veneer import catalog, refresh
from ppp_env.veneer import env as veneer_env


def _create_one(args: tuple[str, str, str]) -> float:
    """One create in a fresh worker process (settings from its environment)."""
    name, shard, ini = args
    with Stopwatch() as sw:
        create_tenant(load_settings(), name, shard, ini)
    return sw.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=10)
    parser.add_argument("--concurrent", type=int, default=20)
    args = parser.parse_args()

    # The temp folder, not tmpfs: where this benchmark's figures were measured.
    with local_topology(Path(tempfile.gettempdir()), prefix="ppp-bench-create-") as top:
        settings, work = top.settings, top.work
        veneer_dir = veneer_catalog_only(work / "veneer_migrations")
        ini = write_ini(work / "alembic.ini", BENCH / "fleet", veneer_dir)
        os.environ["ALEMBIC_CONFIG"] = str(ini)
        veneer_env.upgrade(settings, "head", veneer_env.veneer_config(settings, ini))
        shards = top.shards

        # (a) PPP: first call of the process measured apart (imports, script directory).
        first = create_tenant(settings, "tc_warm", shards[0], ini)
        print(f"first create of the process: {first.seconds * 1000:.0f} ms", flush=True)
        ppp: list[float] = []
        steps: dict[str, list[float]] = {}
        for i in range(args.creates):
            r = create_tenant(settings, f"tc_ppp_{i:03d}", shards[i % len(shards)], ini)
            ppp.append(r.seconds)
            for k, v in r.steps.items():
                steps.setdefault(k, []).append(v)
            print(f"  (a) {r.schema}: {r.seconds * 1000:.0f} ms", flush=True)

        # (b) naive: alembic's command line for the tenant, then the same wiring.
        alembic = str(Path(sys.executable).parent / "alembic")
        naive: list[float] = []
        for i in range(args.creates):
            name, shard = f"tc_naive_{i:03d}", shards[i % len(shards)]
            with Stopwatch() as sw:
                with catalog.admin_connection(settings) as conn:
                    catalog.register_tenant(conn, name, shard)
                run_command(
                    [alembic, "-c", str(ini), "-x", f"tenant={name}", "-x", "refresh=false",
                     "upgrade", "head"],
                    top.environ(), cwd=None,
                )  # fmt: skip
                refresh(settings, [name])
                with catalog.admin_connection(settings) as conn:
                    catalog.set_state(conn, name, "active")
            naive.append(sw.seconds)
            print(f"  (b) {name}: {naive[-1] * 1000:.0f} ms", flush=True)

        # (c) concurrent creates, a process each.
        jobs = [
            (f"tc_conc_{i:03d}", shards[i % len(shards)], str(ini)) for i in range(args.concurrent)
        ]
        with Stopwatch() as sw, ProcessPoolExecutor(max_workers=args.concurrent) as pool:
            each = list(pool.map(_create_one, jobs))
        wall = sw.seconds
        rows = catalog.list_tenants(settings, tenants=[j[0] for j in jobs])
        active = sum(1 for t in rows if t.state == "active")

        a, b = median(ppp), median(naive)
        print()
        print(f"tenant create, 5-revision chain, {args.creates} tenants each (medians):")
        # <label>   <ms, 7.1f>   (<ratio> x (a)): (a) and (b) in columns
        column = {"sep": "   ", "gap": "   ", "value_width": 10}
        a_ms, b_ms, b_x = f"{a * 1000:.1f} ms", f"{b * 1000:.1f} ms", times(b / a, "(a)", 1)
        print(figure("  (a) PPP create_tenant         ", a_ms, "(target < 100 ms)", **column))
        parts = ", ".join(f"{k} {median(v) * 1000:.1f}" for k, v in steps.items())
        print(f"      steps (ms): {parts}")
        print(figure("  (b) naive: alembic -x tenant=T", b_ms, f"({b_x})", **column))
        print(
            f"  (c) {args.concurrent} concurrent creates (processes): {active}/{len(jobs)} "
            f"active, wall {wall:.2f} s, median per create {median(each) * 1000:.0f} ms"
        )
        if active != len(jobs):
            fail("some concurrent creates failed")


if __name__ == "__main__":
    main()
