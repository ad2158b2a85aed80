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

Usage: python benchmarks/query_paths.py [--tenants 6] [--rows 10000] [--threads 4]
                                        [--seconds 1] [--rounds 9] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

from ppp_env import db
from ppp_env.identifiers import quote_ident, quote_literal
from ppp_env.routing import TenantRouter, isolation
from ppp_env.servers.local import EXAMPLE_SHARDS, LocalServers, find_bindir
from ppp_env.servers.provision import provision
from ppp_env.settings import Settings, load_settings
from ppp_env.veneer.catalog import admin_connection, register_tenant, unregister_tenant
from ppp_env.veneer.tables import refresh

PATHS = ("direct", "router", "strict", "veneer", "handfdw")
PK = "SELECT id, balance, note FROM {t}accounts WHERE id = :id"
RANGE = "SELECT id, balance, note FROM {t}accounts WHERE id BETWEEN :id AND :id + 19"
RANGE_EVERY = 5


def fail(message: str) -> None:
    sys.exit(f"benchmark failed: {message}")


def default_workdir() -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm
    return Path(tempfile.gettempdir())


def superuser_sql(settings: Settings, name: str, sql: str, dbname: str | None = None) -> None:
    inst = settings.instance(name)
    with db.connection(inst, "superuser", dbname=dbname, autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("SET log_statement = 'none'")
        cur.execute(sql)


def build(settings: Settings, tenants: dict[str, str], rows: int) -> None:
    for name in ("veneer", *settings.shards):  # measure the paths, not the log writer
        superuser_sql(settings, name, "ALTER SYSTEM SET log_statement = 'none'")
        superuser_sql(settings, name, "SELECT pg_reload_conf()")
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
    with admin_connection(settings) as conn:
        for existing in EXAMPLE_SHARDS:  # only the benchmark's tenants take part
            unregister_tenant(conn, existing)
        for schema, shard in tenants.items():
            register_tenant(conn, schema, shard)
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
    return len(every) / took, statistics.median(every) * 1000


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
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            conn = psycopg2.connect(
                host=inst.host, port=inst.port, dbname=inst.dbname, user=user, password=password
            )
            conn.cursor().execute("SELECT 1")
            times.append(time.perf_counter() - t0)
            conn.close()
        out[label] = statistics.median(times) * 1000
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=6)
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--workdir", type=Path, default=None, help="default: tmpfs")
    args = parser.parse_args()
    if args.tenants < 1 or args.rows < 100 or args.threads < 1 or args.rounds < 1:
        parser.error("--tenants, --threads, --rounds >= 1 and --rows >= 100")

    def interrupted(signum: int, _frame: Any) -> None:
        raise SystemExit(f"benchmark interrupted by signal {signum}")

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    work = Path(tempfile.mkdtemp(prefix="ppp-bench-", dir=args.workdir or default_workdir()))
    work.chmod(0o755)
    servers = LocalServers(work / "servers", find_bindir())
    close: Callable[[], None] = lambda: None  # noqa: E731
    try:
        values = servers.up(["veneer", *EXAMPLE_SHARDS])
        values["PPP_PROJECT_DIR"] = str(work)
        os.environ.update(values)
        os.environ.pop("PPP_ENV", None)
        settings = load_settings()
        provision(settings)
        cfg = Config(str(ROOT / "alembic.ini"), ini_section="veneer")
        command.upgrade(cfg, "head")
        shards = list(settings.shards)
        tenants = {f"qp_{i:03d}": shards[i % len(shards)] for i in range(args.tenants)}
        build(settings, tenants, args.rows)
        ops, close = operations(settings, tenants, args.threads)
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
            pairs = zip(results[over], results[path], strict=True)
            if key == 0:
                return statistics.median(o[0] / p[0] for o, p in pairs)
            return statistics.median(p[1] / o[1] for o, p in pairs)

        med = {
            p: (
                statistics.median(t for t, _ in results[p]),
                statistics.median(m for _, m in results[p]),
            )
            for p in PATHS
        }
        print()
        print(
            "strict isolation's connection setup (connect + one query, median of 20): "
            + ", ".join(f"{k} {v:.2f} ms" for k, v in setup.items())
        )
        r_tps, r_lat = ratio("router", 0), ratio("router", 1)
        print(
            f"target router <= 1.10 x direct: throughput {r_tps:.2f} x, p50 {r_lat:.2f} x: "
            + ("met" if r_tps <= 1.10 and r_lat <= 1.10 else "NOT met")
        )
        v = ratio("veneer", 0, over="handfdw")
        print(
            f"target veneer no slower than handfdw: handfdw's throughput / veneer's {v:.2f}: "
            + ("met" if v <= 1.0 else "NOT met")
        )
        print()
        for p in PATHS:
            tps, p50 = med[p]
            print(f"{p}: {tps:.0f} tps, {p50:.3f} ms p50, {ratio(p, 0):.2f} x direct")
    finally:
        print("stopping and deleting the benchmark's servers", file=sys.stderr, flush=True)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        close()
        servers.down(purge=True)
        if servers.instances():
            time.sleep(2)
            servers.down(purge=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
