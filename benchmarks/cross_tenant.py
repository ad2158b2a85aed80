#!/usr/bin/env python3
"""Cross-tenant view fan-out: the shards work at once, so the view costs the slowest shard,
not the sum.

Builds a throwaway topology (veneer + 3 shards, local servers), one tenant per shard whose
table ``slow`` is a shard-side view that takes a known time (``pg_sleep``: --seconds, e.g.
0.2, 0.4 and 0.6 s), wired by PPP's refresh, and the cross-tenant view ``ppp_all.slow``.
In each of --repeat runs, as ``veneer_app``:

  (a) SELECT count(*) FROM ppp_all.slow, PPP's server options (async_capable on)
  (b) each tenant's part alone through the veneer: the slowest of them, and their sum
  (c) the same view with async_capable off on the three foreign servers (the baseline: one
      shard after the other)

Target: (a) <= 1.3 x the slowest part. Medians of --repeat runs, every run printed.

Usage: python benchmarks/cross_tenant.py [--seconds 0.2,0.4,0.6] [--repeat 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import Stopwatch, every, figure, local_topology, median, met, times

from ppp_env import db
from ppp_env.identifiers import quote_ident
from ppp_env.servers.local import EXAMPLE_SHARDS
from ppp_env.settings import Settings
from ppp_env.veneer import catalog, views
from ppp_env.veneer import env as veneer_env
from ppp_env.veneer import tables as veneer

#: A tenant whose ``slow`` takes ``{d}`` seconds on its shard (10 rows after the sleep).
SLOW = """
CREATE SCHEMA {s};
CREATE FUNCTION {s}.slow_rows(d double precision) RETURNS SETOF integer LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.pg_sleep(d);
    RETURN QUERY SELECT pg_catalog.generate_series(1, 10);
END $$;
CREATE VIEW {s}.slow AS SELECT id FROM {s}.slow_rows({d}) AS id;
"""


def set_async(settings: Settings, on: bool) -> None:
    with catalog.admin_connection(settings) as conn:
        for shard in settings.shards:
            conn.exec_driver_sql(
                f"ALTER SERVER {quote_ident(shard)} OPTIONS "
                f"(SET async_capable '{'true' if on else 'false'}')"
            )


def timed_count(settings: Settings, sql: str, expect: int) -> float:
    """Seconds for one query on a fresh veneer_app connection whose shard connections are
    already open (a first cheap query), so only the query itself is timed."""
    conn = db.connect(settings.veneer, "app", autocommit=True)
    try:
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM ppp_all.slow WHERE false")
        with Stopwatch() as sw:
            cur.execute(sql)
            (n,) = cur.fetchone()
        assert n == expect, (sql, n, expect)
        return sw.seconds
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", default="0.2,0.4,0.6")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    seconds = [float(x) for x in args.seconds.split(",")]
    if len(seconds) != len(EXAMPLE_SHARDS):
        raise SystemExit(f"--seconds: give one figure per shard ({len(EXAMPLE_SHARDS)})")

    with local_topology(args.workdir) as top:
        settings = top.settings
        veneer_env.upgrade(settings, "heads")
        shards = top.shards
        placed = {f"fan_{s}": s for s in shards}
        top.replace_tenants(placed)
        for (schema, shard), d in zip(placed.items(), seconds, strict=True):
            with db.connection(settings.shards[shard], "admin", autocommit=True) as conn:
                conn.cursor().execute(SLOW.format(s=quote_ident(schema), d=d))
        report = veneer.refresh(settings)
        assert report.ok, report.errors
        with catalog.admin_connection(settings) as conn:
            built = views.add_table(conn, settings, "slow").built
        assert built == {"slow": list(placed)}, built
        with db.connection(settings.veneer, "app", autocommit=True) as conn:
            cur = conn.cursor()
            cur.execute("EXPLAIN (VERBOSE) SELECT count(*) FROM ppp_all.slow")
            plan = "\n".join(r[0] for r in cur.fetchall())
        print(plan, file=sys.stderr)
        assert plan.count("Async Foreign Scan") == len(shards), plan

        view = "SELECT count(*) FROM ppp_all.slow"
        total = 10 * len(shards)
        a: list[float] = []
        slowest: list[float] = []
        summed: list[float] = []
        c: list[float] = []
        for run in range(args.repeat):
            set_async(settings, True)
            a.append(timed_count(settings, view, total))
            parts = [
                timed_count(settings, f"SELECT count(*) FROM {quote_ident(s)}.slow", 10)
                for s in placed
            ]
            slowest.append(max(parts))
            summed.append(sum(parts))
            set_async(settings, False)
            c.append(timed_count(settings, view, total))
            set_async(settings, True)
            print(
                f"run {run + 1}: (a) {a[-1]:.3f} s  parts "
                + every(parts, 3)
                + f"  (c) {c[-1]:.3f} s",
                file=sys.stderr,
            )
        ma, ms, mu, mc = (median(x) for x in (a, slowest, summed, c))
        print(
            f"\ncross-tenant view over {len(shards)} shards, parts of "
            f"{', '.join(f'{d:g}' for d in seconds)} s (pg_sleep), median of {args.repeat} runs"
        )
        rows = [
            ("(a)", "ppp_all.slow, PPP's options (async_capable on)", ma),
            ("(b)", "the slowest tenant's part alone", ms),
            ("(b')", "the parts one after the other (sum)", mu),
            ("(c)", "ppp_all.slow with async_capable off (baseline)", mc),
        ]
        for tag, what, secs in rows:
            print(
                figure(
                    f"{tag:5}{what:52}",
                    f"{secs:.3f} s",
                    times(secs / ms, "(b)", width=7),
                    sep="",
                    gap="",
                    value_width=10,
                )
            )
        print("\nevery run (s):")
        for tag, xs in (("(a)", a), ("(b)", slowest), ("(b')", summed), ("(c)", c)):
            print(f"  {tag} " + every(xs, 3))
        print(f"\ntarget: (a) <= 1.3 x (b): {met(ma <= 1.3 * ms)} ({times(ma / ms)})")


if __name__ == "__main__":
    main()
