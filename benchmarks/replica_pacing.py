#!/usr/bin/env python3
"""Replica pacing benchmark: what PPP_MAX_REPLICA_LAG costs a fleet run whose replica keeps up.

Builds a throwaway topology (veneer + 1 shard, local servers, on tmpfs when the machine has
one), a streaming replica of the shard (``LocalServers.replicate``: pg_basebackup -R, its own
server on this machine), and registers N tenants on the shard. In every run, from the same
starting point (no tenant schema; the replica caught up), it times
`alembic -x refresh=false upgrade head` over the 5-revision chain (benchmarks/fleet):

  (a) baseline: no pacing (PPP_MAX_REPLICA_LAG unset: nothing is queried)
  (b) PPP_MAX_REPLICA_LAG=5, the replica listed in PPP_SHARD_BLUTH_CO_REPLICA_URLS (a lag
      reading on the primary and one on the replica before each tenant)
  (c) PPP_MAX_REPLICA_LAG=5, the replica discovered from pg_stat_replication (one query
      before each tenant)

Every run is printed (the rows in turn, each first once), then the medians, the per-run ratio
to (a), the cost per tenant and the pauses each row made (none expected: the replica keeps
up). Then what one check (``Pacer.read()``) costs in (b) and (c), beside a ``SELECT 1``
round trip on the same connection. Target: (b) and (c) <= 1.2 x (a).

Usage: python benchmarks/replica_pacing.py [--tenants 500] [--repeat 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from common import (
    BENCH,
    every,
    fail,
    figure,
    local_topology,
    median,
    median_ratio,
    met,
    run_command,
    timed,
    times,
    veneer_catalog_only,
    write_ini,
)
from migrate_fleet import FLEET, check_at_head, reset

from ppp_env import db
from ppp_env.fleet.pacing import Pacer
from ppp_env.servers.local import LocalServers, free_port
from ppp_env.settings import Instance, load_settings

SHARD = "bluth_co"
REPLICA = f"{SHARD}_replica"


def wait_caught_up(primary: Instance, port: int, timeout: float = 120) -> None:
    """Until the replica on ``port`` has replayed all the primary has flushed."""
    with db.connection(primary, "admin", autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("SELECT pg_current_wal_flush_lsn()::text")
        target = cur.fetchone()[0]
    replica = replace(primary, port=port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.connection(replica, "admin", autocommit=True) as conn:
            cur = conn.cursor()
            cur.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,))
            if cur.fetchone()[0]:
                return
        time.sleep(0.1)
    fail(f"the replica did not replay up to {target} in {timeout:g} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if args.tenants < 1 or args.repeat < 1:
        parser.error("--tenants and --repeat must be at least 1")

    with local_topology(args.workdir, shards=[SHARD]) as top:
        settings, env = top.settings, top.environ()
        primary = settings.shard(SHARD)
        alembic = str(Path(sys.executable).parent / "alembic")
        veneer = veneer_catalog_only(top.work / "veneer_migrations")
        fleet = [alembic, "-c", str(write_ini(top.work / "pacing.ini", BENCH / "fleet", veneer))]
        run_command([*fleet, "-n", "veneer", "upgrade", "head"], env)

        replicas = LocalServers(top.work / "replica", top.servers.bindir)
        top.on_stop(lambda: replicas.down(purge=True))
        replicas.replicate(REPLICA, primary)
        port = replicas.start(REPLICA, free_port()).port or 0
        print(f"replica: streaming, 127.0.0.1:{port} (pg_basebackup -R of {SHARD})", flush=True)

        names = [f"t{i:05d}" for i in range(args.tenants)]
        placed = dict.fromkeys(names, SHARD)
        by_shard = {SHARD: names}
        top.replace_tenants(placed)

        paced = {"PPP_MAX_REPLICA_LAG": "5"}
        listed = {**paced, f"{primary.env_prefix}REPLICA_URLS": f"postgresql://127.0.0.1:{port}"}
        rows = {
            "(a) no pacing": env,
            "(b) paced, replica listed": {**env, **listed},
            "(c) paced, replica discovered": {**env, **paced},
        }
        runs: dict[str, list[float]] = {k: [] for k in rows}
        pauses: dict[str, int] = dict.fromkeys(rows, 0)
        cmd = [*fleet, "-x", "refresh=false", "-x", "output=plain", "upgrade", "head"]
        order = list(rows)
        for n in range(args.repeat):
            for label in order[n % 3 :] + order[: n % 3]:  # each row first once: no order bias
                row_env = rows[label]
                reset(settings, by_shard, veneer=False)
                wait_caught_up(primary, port)
                took, out = run_command(cmd, row_env)
                check_at_head(settings, by_shard, FLEET.head)
                runs[label].append(took)
                pauses[label] += out.count(" paused ")
            print(
                f"run {n + 1}: " + "  ".join(f"{k[:3]} {v[-1]:.2f} s" for k, v in runs.items()),
                file=sys.stderr,
                flush=True,
            )

        base = runs["(a) no pacing"]
        print(f"\n{args.tenants} tenants on one shard, medians of {args.repeat} runs:")
        ok = True
        for label, values in runs.items():
            ratio = median_ratio(values, base)
            extra = (median(values) - median(base)) / args.tenants * 1000
            print(
                figure(
                    f"{label:<32}",
                    f"{median(values):.2f} s ({every(values)})",
                    times(ratio, "(a)") + f", {extra:+.2f} ms per tenant, {pauses[label]} pause(s)",
                )
            )
            ok = ok and ratio <= 1.2
        print(f"target (b) and (c) <= 1.2 x (a): {met(ok)}")
        print(f"\none check before a tenant, median of {CHECKS} x {args.repeat}:")
        for line in check_costs(primary, rows, args.repeat):
            print(line)


#: Lag readings timed per repetition by :func:`check_costs`.
CHECKS = 300


def check_costs(primary: Instance, rows: dict[str, dict[str, str]], repeat: int) -> list[str]:
    """What one ``Pacer.read()`` costs (the check before each tenant), beside a ``SELECT 1``
    round trip on the same connection."""
    labels = list(rows)[1:]
    costs: dict[str, list[float]] = {"SELECT 1 (a round trip)": []}
    costs.update({label: [] for label in labels})
    with db.connection(primary, "admin", autocommit=True) as conn:
        cur = conn.cursor()
        pacers = {
            label: Pacer(primary_of(rows[label]), load_settings(environ=rows[label]), cur)
            for label in labels
        }
        for _ in range(repeat):
            costs["SELECT 1 (a round trip)"].append(timed(lambda: select_1(cur)) / CHECKS)
            for label, pacer in pacers.items():
                costs[label].append(timed(lambda p=pacer: [p.read() for _ in range(CHECKS)]))
                costs[label][-1] /= CHECKS
        for pacer in pacers.values():
            pacer.close()
    base = costs["SELECT 1 (a round trip)"]
    return [
        figure(
            f"{label:<32}",
            f"{median(values) * 1000:.3f} ms",
            times(median_ratio(values, base), "a round trip"),
        )
        for label, values in costs.items()
    ]


def select_1(cur: object) -> None:
    for _ in range(CHECKS):
        cur.execute("SELECT 1")  # type: ignore[attr-defined]
        cur.fetchone()  # type: ignore[attr-defined]


def primary_of(environ: dict[str, str]) -> Instance:
    return load_settings(environ=environ).shard(SHARD)


if __name__ == "__main__":
    main()
