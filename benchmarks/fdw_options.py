#!/usr/bin/env python3
"""postgres_fdw server options, side by side, and what inserts with shard sequences cost.

Builds a throwaway topology (veneer + 3 shards, local servers, statement logging off), one
tenant per shard with ``accounts`` (--accounts rows) and ``entries`` (10 per account,
``id bigserial``), wired by PPP's refresh, and ``ppp_all.entries`` (the cross-tenant view).
Then, for every candidate set of options on the three foreign servers, as ``veneer_app``
over one connection opened after the change, in each of --repeat runs:

  point    SELECT * FROM t.accounts WHERE id = $1 (prepared), --points lookups: per second
  point, unprepared   the same lookup sent as a new statement each time (an ORM's way)
  range    SELECT * FROM t.entries WHERE id BETWEEN $1 AND $1 + 19999: ms
  join     accounts JOIN entries of one tenant, 1,000 accounts, grouped: ms
  agg      SELECT account_id % 10, count(*), sum(amount) FROM t.entries GROUP BY 1: ms
  fanout   SELECT tenant, count(*), sum(amount) FROM ppp_all.entries GROUP BY 1: ms
  fanout 150   SELECT count(*) FROM ppp_all.tiny, a view over 150 more tenants (10 rows
           each): ms; planning it costs what its 150 foreign scans cost to plan

and, with PPP's options, inserts through the veneer, one row per statement (autocommit):
``INSERT INTO t.entries (account_id, amount)`` (the id from the shard's sequence through
``ppp_remote.nextval``) against the baseline with an explicit id (no sequence call), and
the same insert sent straight to the shard. Medians of --repeat runs, every run printed.

Usage: python benchmarks/fdw_options.py [--accounts 20000] [--points 1000] [--inserts 1000]
                                        [--repeat 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import every, group_by_shard, local_topology, median, round_robin, timed

from ppp_env import db
from ppp_env.identifiers import quote_ident, quote_literal
from ppp_env.settings import Settings
from ppp_env.veneer import catalog, views, wiring
from ppp_env.veneer import env as veneer_env
from ppp_env.veneer import tables as veneer

#: Candidate option sets (on top of host, port, dbname); None: the option is dropped
#: (postgres_fdw's default). Every candidate but the last runs its queries with
#: PostgreSQL's enable_nestloop and jit (on), as the veneer had them before PPP's costs.
NO_COSTS: dict[str, str | None] = {"fdw_startup_cost": None, "fdw_tuple_cost": None}
CANDIDATES: dict[str, dict[str, str | None]] = {
    "postgres_fdw defaults": {
        "fetch_size": None,
        "async_capable": None,
        "use_remote_estimate": None,
        **NO_COSTS,
    },
    "fetch_size 1000": {
        "fetch_size": "1000",
        "async_capable": None,
        "use_remote_estimate": None,
        **NO_COSTS,
    },
    "fetch_size 1000, async": {
        "fetch_size": "1000",
        "async_capable": "true",
        "use_remote_estimate": None,
        **NO_COSTS,
    },
    "fetch_size 10000, async": {
        "fetch_size": "10000",
        "async_capable": "true",
        "use_remote_estimate": None,
        **NO_COSTS,
    },
    "fetch_size 1000, async, remote estimate": {
        "fetch_size": "1000",
        "async_capable": "true",
        "use_remote_estimate": "true",
        **NO_COSTS,
    },
    "PPP: fetch_size 1000, async, costs 50000/10": {
        "fetch_size": "1000",
        "async_capable": "true",
        "use_remote_estimate": None,
        "fdw_startup_cost": "50000",
        "fdw_tuple_cost": "10",
    },
}
#: PPP's veneer database settings (wiring.DATABASE_SETTINGS) undone, for the candidates
#: without PPP's costs.
POSTGRES_DEFAULTS = "SET enable_nestloop = on; SET jit = on"

#: Tenants of the wide fan-out: one small table each, over the shards.
WIDE = 150
TINY = """
CREATE SCHEMA {s};
CREATE TABLE {s}.tiny (id integer PRIMARY KEY, name text);
INSERT INTO {s}.tiny SELECT i, 'row ' || i FROM generate_series(1, 10) i;
"""

DATA = """
CREATE SCHEMA {s};
CREATE TABLE {s}.accounts (id bigint PRIMARY KEY, name text NOT NULL,
                           created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE {s}.entries (id bigserial PRIMARY KEY, account_id bigint NOT NULL
                          REFERENCES {s}.accounts, amount numeric(12, 2) NOT NULL,
                          at timestamptz NOT NULL DEFAULT now());
INSERT INTO {s}.accounts (id, name) SELECT i, 'account ' || i FROM generate_series(1, {n}) i;
INSERT INTO {s}.entries (account_id, amount)
    SELECT 1 + (i % {n}), (i % 997) / 10.0 FROM generate_series(1, {n} * 10) i;
CREATE INDEX ON {s}.entries (account_id);
ANALYZE {s}.accounts, {s}.entries;
"""


def set_options(settings: Settings, options: dict[str, str | None]) -> None:
    with catalog.admin_connection(settings) as conn:
        for shard in settings.shards:
            have = wiring._options(
                conn.exec_driver_sql(
                    "SELECT srvoptions FROM pg_foreign_server WHERE srvname = %s", (shard,)
                ).scalar()
            )
            parts = []
            for key, value in options.items():
                if value is None:
                    if key in have:
                        parts.append(f"DROP {key}")
                else:
                    parts.append(f"{'SET' if key in have else 'ADD'} {key} {quote_literal(value)}")
            if parts:
                conn.exec_driver_sql(
                    f"ALTER SERVER {quote_ident(shard)} OPTIONS ({', '.join(parts)})"
                )


def run_queries(
    settings: Settings, tenants: list[str], accounts: int, points: int, session: str = ""
) -> dict[str, float]:
    """One run of every query; point lookups per second, the others in ms."""
    t = quote_ident(tenants[0])
    conn = db.connect(settings.veneer, "app", autocommit=True)
    out: dict[str, float] = {}
    try:
        cur = conn.cursor()
        if session:
            cur.execute(session)
        rng = random.Random(7)
        cur.execute(f"PREPARE point(bigint) AS SELECT * FROM {t}.accounts WHERE id = $1")
        cur.execute("EXECUTE point(1)")  # the connection to the shard, opened once
        cur.fetchall()

        def point() -> None:
            for _ in range(points):
                cur.execute("EXECUTE point(%s)", (rng.randint(1, accounts),))
                cur.fetchall()

        out["point (lookups/s)"] = points / timed(point)

        def unprepared() -> None:
            for _ in range(points):
                cur.execute(
                    f"SELECT * FROM {t}.accounts WHERE id = %s", (rng.randint(1, accounts),)
                )
                cur.fetchall()

        out["point, unprepared (/s)"] = points / timed(unprepared)

        def query(sql: str, params: Any = None) -> Callable[[], None]:
            def go() -> None:
                cur.execute(sql, params)
                cur.fetchall()

            return go

        out["range (ms)"] = 1000 * timed(
            query(f"SELECT * FROM {t}.entries WHERE id BETWEEN %s AND %s + 19999", (1000, 1000))
        )
        out["join (ms)"] = 1000 * timed(
            query(
                f"SELECT a.name, count(*), sum(e.amount) FROM {t}.accounts a "
                f"JOIN {t}.entries e ON e.account_id = a.id WHERE a.id <= 1000 GROUP BY a.name"
            )
        )
        out["agg (ms)"] = 1000 * timed(
            query(f"SELECT account_id % 10, count(*), sum(amount) FROM {t}.entries GROUP BY 1")
        )
        out["fanout (ms)"] = 1000 * timed(
            query("SELECT tenant, count(*), sum(amount) FROM ppp_all.entries GROUP BY 1")
        )
        out[f"fanout {WIDE} (ms)"] = 1000 * timed(query("SELECT count(*) FROM ppp_all.tiny"))
    finally:
        conn.close()
    return out


def run_inserts(settings: Settings, tenant: str, shard: str, n: int, base: int) -> dict[str, float]:
    """Inserts per second: id from the shard's sequence, explicit id, and on the shard."""
    t = quote_ident(tenant)
    out: dict[str, float] = {}
    conn = db.connect(settings.veneer, "app", autocommit=True)
    try:
        cur = conn.cursor()
        cur.execute(f"INSERT INTO {t}.entries (account_id, amount) VALUES (1, 1) RETURNING id")

        def omitted() -> None:
            for _ in range(n):
                cur.execute(
                    f"INSERT INTO {t}.entries (account_id, amount) VALUES (1, 1) RETURNING id"
                )
                cur.fetchone()

        def explicit() -> None:
            for i in range(n):
                cur.execute(
                    f"INSERT INTO {t}.entries (id, account_id, amount) VALUES (%s, 1, 1) "
                    "RETURNING id",
                    (base + i,),
                )
                cur.fetchone()

        out["veneer, id from the shard's sequence (rows/s)"] = n / timed(omitted)
        out["veneer, explicit id: baseline (rows/s)"] = n / timed(explicit)
    finally:
        conn.close()
    with db.connection(settings.shards[shard], "app", autocommit=True) as direct:
        cur = direct.cursor()

        def on_shard() -> None:
            for _ in range(n):
                cur.execute(
                    f"INSERT INTO {t}.entries (account_id, amount) VALUES (1, 1) RETURNING id"
                )
                cur.fetchone()

        out["the shard directly, id from its sequence (rows/s)"] = n / timed(on_shard)
    return out


def show(title: str, rows: dict[str, dict[str, list[float]]]) -> None:
    metrics = list(next(iter(rows.values())))
    print(f"\n{title}")
    print(f"{'':44}" + "".join(f"{m:>24}" for m in metrics))
    for name, values in rows.items():
        print(f"{name:44}" + "".join(f"{median(values[m]):24.1f}" for m in metrics))
    print("every run:")
    for name, values in rows.items():
        for m in metrics:
            print(f"  {name} / {m}: " + every(values[m], 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=20000)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--inserts", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    # Statement logging off on these throwaway servers: it would dominate point lookups.
    with local_topology(args.workdir, statement_logging=False) as top:
        settings = top.settings
        veneer_env.upgrade(settings, "heads")
        shards = top.shards
        placed = {f"bench_{s}": s for s in shards}
        wide = round_robin((f"tiny_{i:03d}" for i in range(WIDE)), shards)
        top.replace_tenants({**placed, **wide})
        for schema, shard in placed.items():
            with db.connection(settings.shards[shard], "admin", autocommit=True) as conn:
                conn.cursor().execute(DATA.format(s=quote_ident(schema), n=args.accounts))
        for shard, schemas in group_by_shard(wide, shards).items():
            with db.connection(settings.shards[shard], "admin", autocommit=True) as conn:
                conn.cursor().execute("".join(TINY.format(s=quote_ident(t)) for t in schemas))
        report = veneer.refresh(settings)
        assert report.ok, report.errors
        with catalog.admin_connection(settings) as conn:
            views.add_table(conn, settings, "entries")
            views.add_table(conn, settings, "tiny")
        tenants = list(placed)
        print(
            f"{len(tenants)} tenants on {len(settings.shards)} shards, {args.accounts} accounts "
            f"and {args.accounts * 10} entries each; {os.cpu_count()} cores",
            file=sys.stderr,
        )

        results: dict[str, dict[str, list[float]]] = {}
        for run in range(args.repeat):
            for name, options in CANDIDATES.items():
                set_options(settings, options)
                ppp = name.startswith("PPP")
                got = run_queries(
                    settings, tenants, args.accounts, args.points, "" if ppp else POSTGRES_DEFAULTS
                )
                mine = results.setdefault(name, {})
                for metric, value in got.items():
                    mine.setdefault(metric, []).append(value)
                print(f"run {run + 1} {name}: {got}", file=sys.stderr)
        show(
            "server options (point: lookups per second, higher is better; others: ms, "
            f"lower is better), median of {args.repeat} runs",
            results,
        )

        set_options(settings, dict(wiring.server_options(settings.shards[placed[tenants[0]]])))
        inserts: dict[str, dict[str, list[float]]] = {}
        for run in range(args.repeat):
            got = run_inserts(
                settings, tenants[0], placed[tenants[0]], args.inserts, 10**9 + run * 10**6
            )
            for metric, value in got.items():
                inserts.setdefault(metric, {}).setdefault("rows/s", []).append(value)
            print(f"run {run + 1} inserts: {got}", file=sys.stderr)
        show(f"single-row inserts, PPP's options, median of {args.repeat} runs", inserts)


if __name__ == "__main__":
    main()
