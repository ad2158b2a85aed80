#!/usr/bin/env python3
"""Query paths benchmark: the application's roads to a tenant's rows, side by side.

Builds a throwaway topology (veneer + 3 shards, local servers, on tmpfs when the machine has
one, statement logging off), N tenants round robin over the shards, each with a table
``accounts`` of --rows rows, wired in the veneer by PPP's refresh. Then, from one Python
process, --threads client threads each loop for --seconds: pick a tenant at random, take a
pooled connection, run one query, give the connection back (BEGIN, the query, ROLLBACK:
SQLAlchemy's defaults, the same for every path). Four queries in five are primary-key
lookups, the fifth a range scan of 20 rows.

  direct   SQLAlchemy QueuePool per shard as the shard's app role, the tenant's table named
           with its schema: the floor (same client, driver and pool as the router)
  router   ppp_env.routing.TenantRouter.connect(tenant), unqualified table names
  strict   the same router with strict isolation (a login role and a pool per tenant)
  veneer   one QueuePool to the veneer as veneer_app, "<tenant>".accounts: PPP's foreign
           tables (postgres_fdw server per shard with async_capable, fetch_size 1000)
  handfdw  the veneer with a postgres_fdw wired by hand with default options (CREATE SERVER
           with host/port/dbname only, a user mapping, IMPORT FOREIGN SCHEMA): what the
           original example did

Every path runs once per round (--seconds each), in a rotated order, after a warm-up; each
round's figures are printed. A path's "x direct" is the median over the rounds of direct's
throughput divided by the path's in the same round (neighbours in time, so a burst of load
from elsewhere on a shared machine hits both); tps and p50 are medians over the rounds.
Targets: router <= 1.10 x direct in throughput and p50 latency, veneer no slower than
handfdw. Strict isolation's connection setup (a new connection and one query,
as the tenant's role against as the app role, medians of 20) is printed too.

With --async the same topology and queries run on SQLAlchemy's asyncio engine instead, from
one event loop with --threads concurrent tasks (--driver asyncpg or psycopg, the same for
both paths):

  async direct  an AsyncEngine (AsyncAdaptedQueuePool) per shard as the shard's app role,
                the tenant's table named with its schema: the floor
  async router  ppp_env.routing.AsyncTenantRouter.connect(tenant), unqualified table names

their lines' "x direct" is against async direct; target async router <= 1.10 x async direct.

Usage: python benchmarks/query_paths.py [--tenants 6] [--rows 10000] [--threads 4]
                                        [--seconds 1] [--rounds 9] [--workdir DIR]
                                        [--async [--driver asyncpg|psycopg]]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from common import (
    ROOT,
    Stopwatch,
    fail,
    figure,
    local_topology,
    median,
    median_ratio,
    met,
    round_robin,
    times,
)
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

from ppp_env import db
from ppp_env.identifiers import quote_ident, quote_literal
from ppp_env.routing import AsyncTenantRouter, TenantRouter, isolation
from ppp_env.settings import Settings
from ppp_env.veneer.tables import refresh

PATHS = ("direct", "router", "strict", "veneer", "handfdw")
ASYNC_PATHS = ("async direct", "async router")
PK = "SELECT id, balance, note FROM {t}accounts WHERE id = :id"
RANGE = "SELECT id, balance, note FROM {t}accounts WHERE id BETWEEN :id AND :id + 19"
RANGE_EVERY = 5


def superuser_sql(settings: Settings, name: str, sql: str, dbname: str | None = None) -> None:
    inst = settings.instance(name)
    with db.connection(inst, "superuser", dbname=dbname, autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("SET log_statement = 'none'")
        cur.execute(sql)


def build(settings: Settings, tenants: dict[str, str], rows: int) -> None:
    """The tenants' tables (the tenants registered already), wired by PPP and by hand."""
    for schema, shard in tenants.items():
        with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
            conn.cursor().execute(
                f"CREATE SCHEMA {quote_ident(schema)}; "
                f"CREATE TABLE {quote_ident(schema)}.accounts "
                "(id int PRIMARY KEY, balance int NOT NULL, note text NOT NULL); "
                f"INSERT INTO {quote_ident(schema)}.accounts SELECT g, g % 1000, "
                f"'account ' || g FROM generate_series(1, {int(rows)}) g; "
                f"ANALYZE {quote_ident(schema)}.accounts"
            )
    report = refresh(settings, list(tenants))
    if report.errors or sorted(report.refreshed) != sorted(tenants):
        fail(f"veneer refresh: refreshed {report.refreshed}, errors {report.errors}")
    # The hand-wired postgres_fdw, default options (as superuser: only a throwaway's logs).
    veneer = settings.veneer
    app = quote_ident(veneer.app_role)
    for shard, inst in settings.shards.items():
        server = quote_ident(f"hand_{shard}")
        superuser_sql(
            settings,
            "veneer",
            f"CREATE SERVER {server} FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host "
            f"{quote_literal(inst.fdw_host)}, port {quote_literal(str(inst.fdw_port))}, "
            f"dbname {quote_literal(inst.dbname)})"
            + "".join(
                f"; CREATE USER MAPPING FOR {who} SERVER {server} OPTIONS (user "
                f"{quote_literal(inst.app_role)}, password {quote_literal(inst.app_password)})"
                for who in (app, "CURRENT_USER")  # CURRENT_USER: for the import
            ),
            dbname=veneer.dbname,
        )
    for schema, shard in tenants.items():
        hand = quote_ident(f"hand_{schema}")
        superuser_sql(
            settings,
            "veneer",
            f"CREATE SCHEMA {hand}; IMPORT FOREIGN SCHEMA {quote_ident(schema)} "
            f"FROM SERVER {quote_ident(f'hand_{shard}')} INTO {hand}; "
            f"GRANT USAGE ON SCHEMA {hand} TO {app}; "
            f"GRANT SELECT ON ALL TABLES IN SCHEMA {hand} TO {app}",
            dbname=veneer.dbname,
        )
        isolation.enable(settings, schema)


def pool(url: Any, size: int) -> Engine:
    return create_engine(url, poolclass=QueuePool, pool_size=size, max_overflow=0)


def operations(
    settings: Settings, tenants: dict[str, str], threads: int
) -> tuple[dict[str, Callable[[str, int, bool], None]], Callable[[], None]]:
    """One callable per path: (tenant, key, range scan?) -> runs the query once."""
    shard_pools = {s: pool(inst.url("app"), threads) for s, inst in settings.shards.items()}
    veneer_pool = pool(settings.veneer.url("app"), threads)
    router = TenantRouter(settings, pool_size=threads, max_overflow=0)
    strict = TenantRouter(settings, strict=True, pool_size=threads, max_overflow=0)
    qualified = {
        t: (text(PK.format(t=f"{quote_ident(t)}.")), text(RANGE.format(t=f"{quote_ident(t)}.")))
        for t in tenants
    }
    hand = {
        t: (
            text(PK.format(t=f"{quote_ident('hand_' + t)}.")),
            text(RANGE.format(t=f"{quote_ident('hand_' + t)}.")),
        )
        for t in tenants
    }
    plain = (text(PK.format(t="")), text(RANGE.format(t="")))

    def direct(t: str, key: int, scan: bool) -> None:
        with shard_pools[tenants[t]].connect() as conn:
            conn.execute(qualified[t][scan], {"id": key}).all()

    def routed(r: TenantRouter) -> Callable[[str, int, bool], None]:
        def run(t: str, key: int, scan: bool) -> None:
            with r.connect(t) as conn:
                conn.execute(plain[scan], {"id": key}).all()

        return run

    def through(statements: dict[str, tuple[Any, Any]]) -> Callable[[str, int, bool], None]:
        def run(t: str, key: int, scan: bool) -> None:
            with veneer_pool.connect() as conn:
                conn.execute(statements[t][scan], {"id": key}).all()

        return run

    def close() -> None:
        router.close()
        strict.close()
        veneer_pool.dispose()
        for p in shard_pools.values():
            p.dispose()

    ops = {
        "direct": direct,
        "router": routed(router),
        "strict": routed(strict),
        "veneer": through(qualified),
        "handfdw": through(hand),
    }
    return ops, close


def measure(
    op: Callable[[str, int, bool], None], names: list[str], rows: int, threads: int, secs: float
) -> tuple[float, float]:
    """(operations per second, p50 latency in ms) of ``threads`` clients for ``secs``."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    start = threading.Barrier(threads + 1)
    deadline = [0.0]

    def client(i: int) -> None:
        rng = random.Random(i)
        mine = latencies[i]
        start.wait()
        n = 0
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= deadline[0]:
                    return
                op(rng.choice(names), rng.randint(1, rows - 20), n % RANGE_EVERY == 0)
                mine.append(time.perf_counter() - t0)
                n += 1
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    began = time.perf_counter()
    deadline[0] = began + secs
    start.wait()
    for w in workers:
        w.join()
    took = time.perf_counter() - began
    if errors:
        fail(f"a client failed: {errors[0]!r}")
    every = [x for lat in latencies for x in lat]
    return len(every) / took, median(every) * 1000


def connection_setup(settings: Settings, tenant: str, shard: str, n: int = 20) -> dict[str, float]:
    """Median ms to open a connection and run one query, as the app role and the tenant's."""
    inst = settings.shard(shard)
    role = isolation.role_name(inst, tenant)
    who = {
        "app role": (inst.app_role, inst.app_password),
        "tenant role": (role, isolation.role_password(inst, role)),
    }
    out: dict[str, float] = {}
    import psycopg2

    for label, (user, password) in who.items():
        took = []
        for _ in range(n):
            with Stopwatch() as sw:
                conn = psycopg2.connect(
                    host=inst.host, port=inst.port, dbname=inst.dbname, user=user, password=password
                )
                conn.cursor().execute("SELECT 1")
            took.append(sw.seconds)
            conn.close()
        out[label] = median(took) * 1000
    return out


# -- the asyncio paths (--async) ---------------------------------------------------------------
AsyncOp = Callable[[str, int, bool], Any]


def async_operations(
    settings: Settings, tenants: dict[str, str], clients: int, driver: str
) -> tuple[dict[str, AsyncOp], Callable[[], Any]]:
    """One coroutine function per asyncio path, same driver and pool sizes for both."""
    from sqlalchemy.ext.asyncio import create_async_engine

    drivername = {"asyncpg": "postgresql+asyncpg", "psycopg": "postgresql+psycopg"}[driver]
    shard_pools = {
        s: create_async_engine(
            inst.url("app").set(drivername=drivername), pool_size=clients, max_overflow=0
        )
        for s, inst in settings.shards.items()
    }
    router = AsyncTenantRouter(settings, driver, pool_size=clients, max_overflow=0)  # type: ignore[arg-type]
    qualified = {
        t: (text(PK.format(t=f"{quote_ident(t)}.")), text(RANGE.format(t=f"{quote_ident(t)}.")))
        for t in tenants
    }
    plain = (text(PK.format(t="")), text(RANGE.format(t="")))

    async def direct(t: str, key: int, scan: bool) -> None:
        async with shard_pools[tenants[t]].connect() as conn:
            (await conn.execute(qualified[t][scan], {"id": key})).all()

    async def routed(t: str, key: int, scan: bool) -> None:
        async with router.connect(t) as conn:
            (await conn.execute(plain[scan], {"id": key})).all()

    async def close() -> None:
        await router.close()
        for p in shard_pools.values():
            await p.dispose()

    return {"async direct": direct, "async router": routed}, close


async def async_measure(
    op: AsyncOp, names: list[str], rows: int, clients: int, secs: float
) -> tuple[float, float]:
    """(operations per second, p50 latency in ms) of ``clients`` tasks for ``secs``."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    deadline = time.perf_counter() + secs

    async def client(i: int) -> None:
        rng, mine, n = random.Random(i), latencies[i], 0
        while True:
            t0 = time.perf_counter()
            if t0 >= deadline:
                return
            await op(rng.choice(names), rng.randint(1, rows - 20), n % RANGE_EVERY == 0)
            mine.append(time.perf_counter() - t0)
            n += 1

    began = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    took = time.perf_counter() - began
    every = [x for lat in latencies for x in lat]
    return len(every) / took, median(every) * 1000


async def async_rounds(
    settings: Settings, tenants: dict[str, str], args: argparse.Namespace
) -> dict[str, list[tuple[float, float]]]:
    ops, close = async_operations(settings, tenants, args.threads, args.driver)
    names = list(tenants)
    try:
        for path in ASYNC_PATHS:  # warm-up
            await async_measure(ops[path], names, args.rows, args.threads, min(1.0, args.seconds))
        results: dict[str, list[tuple[float, float]]] = {p: [] for p in ASYNC_PATHS}
        for run in range(args.rounds):
            order = ASYNC_PATHS if run % 2 == 0 else ASYNC_PATHS[::-1]
            for path in order:
                results[path].append(
                    await async_measure(ops[path], names, args.rows, args.threads, args.seconds)
                )
            print(
                f"round {run + 1}: "
                + ", ".join(
                    f"{p} {results[p][-1][0]:.0f} tps {results[p][-1][1]:.3f} ms"
                    for p in ASYNC_PATHS
                ),
                flush=True,
            )
        return results
    finally:
        await close()


def report_async(results: dict[str, list[tuple[float, float]]], driver: str) -> None:
    base, path = results["async direct"], results["async router"]
    r_tps = median_ratio([b[0] for b in base], [p[0] for p in path])
    r_lat = median_ratio([p[1] for p in path], [b[1] for b in base])
    print()
    print(
        f"target async router <= 1.10 x async direct ({driver}): throughput {times(r_tps)}, "
        f"p50 {times(r_lat)}: " + met(r_tps <= 1.10 and r_lat <= 1.10)
    )
    print()
    for p in ASYNC_PATHS:
        tps = median(t for t, _ in results[p])
        p50 = median(m for _, m in results[p])
        ratio = median_ratio([b[0] for b in base], [x[0] for x in results[p]])
        print(figure(p, f"{tps:.0f} tps, {p50:.3f} ms p50", times(ratio, "direct")))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=6)
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--workdir", type=Path, default=None, help="default: tmpfs")
    parser.add_argument(
        "--async", dest="use_async", action="store_true", help="the asyncio paths instead"
    )
    parser.add_argument("--driver", choices=("asyncpg", "psycopg"), default="asyncpg")
    args = parser.parse_args()
    if args.tenants < 1 or args.rows < 100 or args.threads < 1 or args.rounds < 1:
        parser.error("--tenants, --threads, --rounds >= 1 and --rows >= 100")

    # Statement logging off: measure the paths, not the log writer.
    with local_topology(args.workdir, statement_logging=False) as top:
        settings = top.settings
        cfg = Config(str(ROOT / "alembic.ini"), ini_section="veneer")
        command.upgrade(cfg, "head")
        shards = top.shards
        tenants = round_robin((f"qp_{i:03d}" for i in range(args.tenants)), shards)
        top.replace_tenants(tenants)  # only the benchmark's tenants take part
        build(settings, tenants, args.rows)
        if args.use_async:
            print(
                f"{args.tenants} tenants on {len(shards)} shards, {args.rows} rows each, "
                f"{args.threads} asyncio tasks in one event loop ({args.driver}), "
                f"{args.seconds:g} s per path and run, 1 in {RANGE_EVERY} queries a 20-row "
                "range scan; x direct = against async direct",
                flush=True,
            )
            report_async(asyncio.run(async_rounds(settings, tenants, args)), args.driver)
            return
        ops, close = operations(settings, tenants, args.threads)
        top.on_stop(close)  # the pools, before the servers stop
        names = list(tenants)
        print(
            f"{args.tenants} tenants on {len(shards)} shards, {args.rows} rows each, "
            f"{args.threads} client threads, {args.seconds:g} s per path and run, "
            f"1 in {RANGE_EVERY} queries a 20-row range scan",
            flush=True,
        )
        for path in PATHS:  # warm-up: pools full, placement cached, plans and caches warm
            measure(ops[path], names, args.rows, args.threads, min(1.0, args.seconds))
        results: dict[str, list[tuple[float, float]]] = {p: [] for p in PATHS}
        for run in range(args.rounds):
            order = PATHS[run % len(PATHS) :] + PATHS[: run % len(PATHS)]
            for path in order:
                tps, p50 = measure(ops[path], names, args.rows, args.threads, args.seconds)
                results[path].append((tps, p50))
            print(
                f"round {run + 1}: "
                + ", ".join(
                    f"{p} {results[p][-1][0]:.0f} tps {results[p][-1][1]:.3f} ms" for p in PATHS
                ),
                flush=True,
            )
        setup = connection_setup(settings, names[0], tenants[names[0]])

        def ratio(path: str, key: int, over: str = "direct") -> float:
            """Median over rounds of the same round's ``over``/``path`` (tps) or path/over (ms)."""
            if key == 0:
                return median_ratio([o[0] for o in results[over]], [p[0] for p in results[path]])
            return median_ratio([p[1] for p in results[path]], [o[1] for o in results[over]])

        med = {
            p: (median(t for t, _ in results[p]), median(m for _, m in results[p])) for p in PATHS
        }
        print()
        print(
            "strict isolation's connection setup (connect + one query, median of 20): "
            + ", ".join(f"{k} {v:.2f} ms" for k, v in setup.items())
        )
        r_tps, r_lat = ratio("router", 0), ratio("router", 1)
        print(
            f"target router <= 1.10 x direct: throughput {times(r_tps)}, p50 {times(r_lat)}: "
            + met(r_tps <= 1.10 and r_lat <= 1.10)
        )
        v = ratio("veneer", 0, over="handfdw")
        print(
            f"target veneer no slower than handfdw: handfdw's throughput / veneer's {v:.2f}: "
            + met(v <= 1.0)
        )
        print()
        for p in PATHS:
            tps, p50 = med[p]
            print(figure(p, f"{tps:.0f} tps, {p50:.3f} ms p50", times(ratio(p, 0), "direct")))


if __name__ == "__main__":
    main()
