#!/usr/bin/env python3
"""Tenant move benchmark: an online move under a live writer, beside pg_dump | psql.

Builds a throwaway topology (veneer + 3 shards, local servers; it moves between two) and
one tenant with --rows rows in table ``events`` (bigint key, int, text, numeric,
timestamptz) plus a small ``accounts`` table, wired through the veneer. Then, in every
run (alternating direction):

  (a) baseline: `pg_dump -n <schema> | psql --single-transaction` of the same tenant to the
      other shard (then dropped there): rows per second
  (b) PPP: `ppp_env.lifecycle.move.move_tenant(..., mode="online")` while a writer inserts
      into the tenant through the veneer as veneer_app, one row per transaction, retrying a
      refused write after 5 ms. Printed: the initial copy's rows per second (the
      subscription's copy), the whole move, the time the mover held writes blocked (block
      -> switch) and, as the writer saw it, the longest gap between two acknowledged writes.
      Afterwards every acknowledged write must be on the target (checked on the shard).

Target: writes blocked under 1 s. Medians of --repeat runs, every run printed.

Usage: python benchmarks/tenant_move.py [--rows 1000000] [--repeat 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import threading
import time
from pathlib import Path

import psycopg2
from common import Stopwatch, every, fail, local_topology, median, met

from ppp_env import db
from ppp_env.lifecycle import move as mv
from ppp_env.lifecycle import move_shard
from ppp_env.veneer import env as veneer_env
from ppp_env.veneer import refresh

SHARDS = ("bluth_co", "cyberdyne")
SCHEMA = "bench_move"
DDL = """
BEGIN;
CREATE SCHEMA {s};
CREATE TABLE {s}.accounts (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO {s}.accounts SELECT i, 'account ' || i FROM generate_series(1, 1000) i;
CREATE TABLE {s}.events (
    id bigint PRIMARY KEY, account int NOT NULL REFERENCES {s}.accounts (id),
    payload text NOT NULL, amount numeric(12, 2), created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO {s}.events (id, account, payload, amount)
SELECT i, 1 + i % 1000, md5(i::text) || ' event payload', i % 100000 / 100.0
FROM generate_series(1, {rows}) i;
COMMIT;
"""


class Writer(threading.Thread):
    def __init__(self, settings, first_id: int) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.next_id = first_id
        self.acked: list[tuple[int, float]] = []
        self.refused = 0
        self.halt = threading.Event()

    def run(self) -> None:
        conn = db.connect(self.settings.veneer, "app", autocommit=True)
        cur = conn.cursor()
        try:
            while not self.halt.is_set():
                try:
                    cur.execute(
                        f"INSERT INTO {SCHEMA}.events (id, account, payload) VALUES (%s, 1, 'w')",
                        (self.next_id,),
                    )
                    self.acked.append((self.next_id, time.monotonic()))
                    self.next_id += 1
                except psycopg2.Error:
                    self.refused += 1
                    time.sleep(0.005)
        finally:
            conn.close()

    def longest_gap(self) -> float:
        times = [t for _, t in self.acked]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with local_topology(args.workdir) as top:
        settings = top.settings
        veneer_env.upgrade(settings, "heads")
        top.replace_tenants({SCHEMA: SHARDS[0]})
        with Stopwatch() as sw:
            with db.connection(settings.shard(SHARDS[0]), "admin", autocommit=True) as conn:
                conn.cursor().execute(DDL.format(s=SCHEMA, rows=args.rows))
                conn.cursor().execute(f"ANALYZE {SCHEMA}.events")
            assert refresh(settings, [SCHEMA]).ok
        rows = args.rows + 1000
        print(f"built {SCHEMA}: {rows:,} rows in {sw.seconds:.1f} s", file=sys.stderr)

        base, copy, whole, held, gap = [], [], [], [], []
        counts: list[int] = []
        next_id = args.rows + 1
        here = SHARDS[0]
        for run in range(args.repeat):
            there = SHARDS[1] if here == SHARDS[0] else SHARDS[0]
            with db.connection(settings.shard(here), "admin", autocommit=True) as conn:
                cur = conn.cursor()
                cur.execute(
                    f"SELECT (SELECT count(*) FROM {SCHEMA}.events) "
                    f"+ (SELECT count(*) FROM {SCHEMA}.accounts)"
                )
                rows = int(cur.fetchone()[0])
            counts.append(rows)
            # (a) the baseline, to the shard the move goes to, then dropped there
            with Stopwatch() as sw:
                move_shard.copy_schema(
                    settings.shard(here), settings.shard(there), SCHEMA, with_data=True
                )
            base.append(sw.seconds)
            with db.connection(settings.shard(there), "admin", autocommit=True) as conn:
                move_shard.drop_schema(conn.cursor(), SCHEMA)
            # (b) the online move under a writer
            writer = Writer(settings, next_id)
            writer.start()
            time.sleep(1.0)
            try:
                report = mv.move_tenant(settings, SCHEMA, there, mode="online")
                time.sleep(1.0)
            finally:
                writer.halt.set()
                writer.join(30)
            next_id = writer.next_id + 1
            acked = [i for i, _ in writer.acked]
            with db.connection(settings.shard(there), "admin", autocommit=True) as conn:
                cur = conn.cursor()
                cur.execute(f"SELECT count(*) FROM {SCHEMA}.events WHERE id = ANY(%s)", (acked,))
                found = cur.fetchone()[0]
            if found != len(acked):
                fail(f"run {run + 1}: {len(acked) - found} acknowledged writes missing")
            mv.cleanup_tenant(settings, SCHEMA)
            copy.append(report.copy_seconds)
            whole.append(report.seconds)
            held.append(report.blocked_seconds)
            gap.append(writer.longest_gap())
            print(
                f"run {run + 1} ({here} -> {there}): (a) pg_dump | psql {base[-1]:.2f} s; "
                f"(b) initial copy {copy[-1]:.2f} s, move {whole[-1]:.2f} s, writes blocked "
                f"{held[-1]:.3f} s (longest gap between acknowledged writes "
                f"{gap[-1]:.3f} s); {len(acked)} writes acknowledged, all on the target, "
                f"{writer.refused} refused; steps: "
                + ", ".join(f"{k} {v:.3f}" for k, v in report.step_seconds.items()),
                file=sys.stderr,
            )
            here = there

        mb, mc, mw, mh, mg = (median(x) for x in (base, copy, whole, held, gap))
        rows = int(median(counts))
        print()
        print(f"tenant move: {rows:,} rows, median of {args.repeat} runs, {os.cpu_count()} cores")
        print(f"  (a) pg_dump -n | psql, same tenant:   {mb:7.2f} s  {rows / mb:12,.0f} rows/s")
        print(f"  (b) online move, initial copy:        {mc:7.2f} s  {rows / mc:12,.0f} rows/s")
        print(f"      online move, whole (with writer): {mw:7.2f} s")
        print(f"      writes blocked (mover):           {mh:7.3f} s")
        print(f"      longest gap between acked writes: {mg:7.3f} s")
        print(
            f"every run (s): (a) {every(base)}; copy {every(copy)}; blocked {every(held, 3)}; "
            f"gap {every(gap, 3)}"
        )
        print(f"target: writes blocked < 1 s: {met(mg < 1.0)} ({mg:.3f} s)")


if __name__ == "__main__":
    main()
