#!/usr/bin/env python3
"""docs/report.png: the report of a representative `ppp migrate --report` run, made again.

Not a benchmark: it reuses the benchmarks' throwaway topology (common.local_topology:
veneer + 3 shards from this machine's binaries, deleted at the end). N tenants (round robin,
each with a few thousand rows so that their migrations take different times) go to f001 of
the test chain (tests/scripts/fleet), then `ppp migrate --report` takes them to head while
one tenant fails (tests/report_scenario.poison) and one is held by an application
transaction through two lock timeouts, so it is retried. Headless Chromium
(chromium-headless-shell) takes the screenshot.

Usage: python benchmarks/report_screenshot.py [--tenants 18] [--png docs/report.png]
                                              [--html FILE] [--size 1400,1000]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    ROOT,
    fail,
    local_topology,
    round_robin,
    run_command,
    veneer_catalog_only,
    write_ini,
)

from ppp_env import db
from tests.conftest import FLEET_SCRIPTS
from tests.report_scenario import blocked, find_chromium, poison, screenshot

NAMES = (
    "acme",
    "globex",
    "initrode",
    "umbrella",
    "hooli",
    "stark",
    "wayne",
    "wonka",
    "tyrell",
    "cyberdyne",
    "soylent",
    "gringotts",
    "oscorp",
    "nakatomi",
    "vandelay",
    "pied_piper",
    "dunder",
    "monarch",
    "aperture",
    "bluth",
    "prestige",
    "massive",
    "sterling",
    "gekko",
    "duff",
    "krusty",
    "buynlarge",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=18)
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "report.png")
    parser.add_argument("--html", type=Path, help="also keep the report's HTML there")
    parser.add_argument("--size", default="1400,1000", help="the browser window, WIDTH,HEIGHT")
    args = parser.parse_args()
    binary = find_chromium()
    if binary is None:
        fail("no headless Chromium: apt-get install chromium-headless-shell")
    names = [
        NAMES[i % len(NAMES)] + (f"_{i // len(NAMES)}" if i >= len(NAMES) else "")
        for i in range(args.tenants)
    ]
    with local_topology(statement_logging=False) as top:
        ini = write_ini(
            top.work / "alembic.ini", FLEET_SCRIPTS, veneer_catalog_only(top.work / "v")
        )
        alembic = [str(Path(sys.executable).parent / "alembic"), "-c", str(ini)]
        run_command([*alembic, "-n", "veneer", "upgrade", "heads"])
        placed = round_robin(names, top.shards)
        top.replace_tenants(placed)
        run_command([*alembic, "-x", "output=quiet", "upgrade", "f001"])
        rng = random.Random(7)
        for tenant, shard in placed.items():
            with db.connection(top.settings.shard(shard), "admin", autocommit=True) as conn:
                conn.cursor().execute(
                    f'INSERT INTO "{tenant}".items (name) '
                    f"SELECT 'item ' || i FROM generate_series(1, {rng.randint(500, 40_000)}) i"
                )
        on = {shard: [t for t, s in placed.items() if s == shard] for shard in top.shards}
        poison(top.settings, top.shards[-1], on[top.shards[-1]][2])
        slow_shard = top.shards[1]
        with tempfile.TemporaryDirectory() as out:
            page = Path(out) / "report.html"
            ppp = [sys.executable, "-c", "from ppp_env.cli.main import main; main()"]
            ppp += ["migrate", "-c", str(ini)]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's PPP
            ppp += ["--report", str(page), "--lock-timeout", "0.3", "--retries", "10"]
            with blocked(top.settings, slow_shard, on[slow_shard][1], timeouts=2):
                done = subprocess.run(
                    ppp, cwd=ROOT, env=env, capture_output=True, text=True, check=False
                )
            print(done.stdout + done.stderr, end="")
            if done.returncode != 1 or not page.exists():
                fail(f"expected one failed tenant and a report (exit code {done.returncode})")
            screenshot(binary, page, args.png, args.size)
            if args.html:
                shutil.copyfile(page, args.html)
    print(f"wrote {args.png} ({args.png.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
