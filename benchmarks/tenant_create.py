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
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ppp_env.lifecycle import create_tenant
from ppp_env.servers.local import EXAMPLE_SHARDS, LocalServers, find_bindir
from ppp_env.servers.provision import provision
from ppp_env.settings import load_settings
from ppp_env.veneer import catalog, refresh
from ppp_env.veneer import env as veneer_env

INI = """\
[alembic]
script_location = {tenant_chain}
prepend_sys_path = {root}

[veneer]
script_location = {veneer}
prepend_sys_path = {root}
"""


def _create_one(args: tuple[str, str, str]) -> float:
    """One create in a fresh worker process (settings from its environment)."""
    name, shard, ini = args
    started = time.perf_counter()
    create_tenant(load_settings(), name, shard, ini)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=10)
    parser.add_argument("--concurrent", type=int, default=20)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ppp-bench-create-"))
    work.chmod(0o755)
    servers = LocalServers(work / "servers", find_bindir())
    try:
        values = servers.up(["veneer", *EXAMPLE_SHARDS])
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PPP_", "ALEMBIC_"))}
        env.update(values)
        env["PPP_PROJECT_DIR"] = str(work)
        os.environ.clear()
        os.environ.update(env)
        settings = load_settings()
        provision(settings)
        veneer_dir = work / "veneer_migrations"
        shutil.copytree(
            ROOT / "veneer_migrations", veneer_dir, ignore=shutil.ignore_patterns("__pycache__")
        )
        for path in (veneer_dir / "versions").glob("t*_*.py"):
            path.unlink()  # the example's tenants take no part
        ini = work / "alembic.ini"
        ini.write_text(
            INI.format(tenant_chain=ROOT / "benchmarks" / "fleet", veneer=veneer_dir, root=ROOT)
        )
        os.environ["ALEMBIC_CONFIG"] = str(ini)
        veneer_env.upgrade(settings, "head", veneer_env.veneer_config(settings, ini))
        shards = list(settings.shards)

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
            started = time.perf_counter()
            with catalog.admin_connection(settings) as conn:
                catalog.register_tenant(conn, name, shard)
            done = subprocess.run(
                [alembic, "-c", str(ini), "-x", f"tenant={name}", "-x", "refresh=false",
                 "upgrade", "head"],
                env=os.environ.copy(), capture_output=True, text=True,
            )  # fmt: skip
            if done.returncode != 0:
                sys.exit(f"alembic failed for {name}:\n{done.stdout}\n{done.stderr}")
            refresh(settings, [name])
            with catalog.admin_connection(settings) as conn:
                catalog.set_state(conn, name, "active")
            naive.append(time.perf_counter() - started)
            print(f"  (b) {name}: {naive[-1] * 1000:.0f} ms", flush=True)

        # (c) concurrent creates, a process each.
        jobs = [
            (f"tc_conc_{i:03d}", shards[i % len(shards)], str(ini)) for i in range(args.concurrent)
        ]
        started = time.perf_counter()
        with ProcessPoolExecutor(max_workers=args.concurrent) as pool:
            each = list(pool.map(_create_one, jobs))
        wall = time.perf_counter() - started
        rows = catalog.list_tenants(settings, tenants=[j[0] for j in jobs])
        active = sum(1 for t in rows if t.state == "active")

        a, b = statistics.median(ppp), statistics.median(naive)
        print()
        print(f"tenant create, 5-revision chain, {args.creates} tenants each (medians):")
        print(f"  (a) PPP create_tenant            {a * 1000:7.1f} ms   (target < 100 ms)")
        parts = ", ".join(f"{k} {statistics.median(v) * 1000:.1f}" for k, v in steps.items())
        print(f"      steps (ms): {parts}")
        print(f"  (b) naive: alembic -x tenant=T   {b * 1000:7.1f} ms   ({b / a:.1f} x (a))")
        print(
            f"  (c) {args.concurrent} concurrent creates (processes): {active}/{len(jobs)} "
            f"active, wall {wall:.2f} s, median per create {statistics.median(each) * 1000:.0f} ms"
        )
        if active != len(jobs):
            sys.exit("some concurrent creates failed")
    finally:
        servers.down(purge=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
