#!/usr/bin/env python3
"""Scale: N tenants over the shards, and the commands an operator runs on them, each with its
wall time and the peak memory (RSS) of the PPP process.

Builds a throwaway topology (veneer + --shards shards, local servers, on tmpfs when the
machine has one, statement logging off), registers N tenants in the catalog the fastest
honest way: ONE bulk registration, the same call (``ppp_env.veneer.env.register_tenants``)
a veneer run makes for its onboarding revisions (no revision files: at 100,000 tenants they
would measure Alembic's script loading, not PPP). Their schemas do not exist yet: the first
command creates them. Then, once each, in this order:

  migrate   `ppp migrate` of the 5-revision chain benchmarks/fleet (every tenant from
            nothing to head, veneer refresh included: every tenant's foreign tables)
  no-op     `ppp migrate` again: every tenant already at head
  status    `ppp status --json`
  list      `ppp tenant list --json`
  doctor    `ppp doctor`

Peak RSS: the largest resident set of the command's process and its worker processes
(``wait4``'s ``ru_maxrss``). The baseline is per tenant: each line also prints the time per
1,000 tenants, so runs at different N compare (memory that grows no faster than linearly
shows as a flat or falling MB per 1,000 tenants).

Targets at N = 100,000: no-op < 3 s; status, list and doctor < 10 s and < 500 MB each.

Usage: python benchmarks/scale.py [--tenants 1000] [--shards 3] [--jobs-per-shard K]
                                  [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from common import BENCH, Stopwatch, fail, local_topology, met, round_robin, veneer_catalog_only

from ppp_env.veneer.catalog import admin_connection
from ppp_env.veneer.env import register_tenants

HEAD = "b005"


def measured(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int]:
    """Run ``cmd`` (its output discarded): wall seconds, peak RSS in MB, exit code."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if code not in (0, 1) or (code == 1 and "doctor" not in cmd):
        fail(f"command failed ({code}): {' '.join(cmd)}\n{err[-3000:]}")
    return took, usage.ru_maxrss / 1024, code


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--jobs-per-shard", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if args.tenants < 1 or args.shards < 1:
        parser.error("--tenants and --shards must be at least 1")

    with local_topology(args.workdir, shards=args.shards, statement_logging=False) as top:
        env = top.environ()
        if args.jobs_per_shard:
            env["PPP_JOBS_PER_SHARD"] = str(args.jobs_per_shard)
        bindir = Path(sys.executable).parent
        ini = top.work / "scale.ini"
        veneer = veneer_catalog_only(top.work / "veneer_migrations")
        ini.write_text(
            f"[alembic]\nscript_location = {BENCH / 'fleet'}\nprepend_sys_path = {BENCH.parent}\n"
            f"path_separator = os\n\n[veneer]\nscript_location = {veneer}\n"
            f"prepend_sys_path = {BENCH.parent}\npath_separator = os\n"
        )
        subprocess.run(
            [str(bindir / "alembic"), "-c", str(ini), "-n", "veneer", "upgrade", "heads"],
            env=env,
            check=True,
            capture_output=True,
        )
        names = [f"t{i:06d}" for i in range(args.tenants)]
        placed = round_robin(names, top.shards)
        with Stopwatch() as sw, admin_connection(top.settings) as conn:
            register_tenants(conn, list(placed.items()))
        print(
            f"registered {args.tenants:,} tenants on {args.shards} shards in {sw.seconds:.2f} s "
            "(one bulk registration, as a veneer run registers onboarding revisions)",
            flush=True,
        )
        ppp = str(bindir / "ppp")
        commands = {
            "migrate": [ppp, "migrate", "-c", str(ini)],
            "no-op": [ppp, "migrate", "-c", str(ini)],
            "status": [ppp, "status", "-c", str(ini), "--json"],
            "list": [ppp, "tenant", "list", "--json"],
            "doctor": [ppp, "doctor", "-c", str(ini)],
        }
        results: dict[str, tuple[float, float]] = {}
        per = args.tenants / 1000
        for label, cmd in commands.items():
            took, mb, code = measured(cmd, env, top.work)
            results[label] = (took, mb)
            shown = " ".join(cmd[1:]).replace(str(ini), "scale.ini")
            print(
                f"{label}: {took:.2f} s, peak RSS {mb:.0f} MB; per 1,000 tenants "
                f"{took / per:.3f} s, {mb / per:.1f} MB  (ppp {shown}"
                + (f", exit {code}" if code else "")
                + ")",
                flush=True,
            )
        print(f"no-op: {results['no-op'][0]:.2f} s")
        print()
        print(f"targets (at 100,000 tenants; this run: {args.tenants:,}):")
        print(f"  no-op under 3 s: {met(results['no-op'][0] < 3)}")
        for label in ("status", "list", "doctor"):
            took, mb = results[label]
            print(f"  {label} under 10 s and 500 MB: {met(took < 10 and mb < 500)}")


if __name__ == "__main__":
    main()
