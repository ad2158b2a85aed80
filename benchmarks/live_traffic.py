#!/usr/bin/env python3
"""Migrations under live traffic: what `alembic upgrade head` costs an application serving.

Builds a throwaway topology (veneer + 3 shards, local servers, on tmpfs when the machine
has one), registers N tenants in the catalog (round robin over the shards), and in every
run, for each configuration below, from the same starting point (every tenant at l001 of
benchmarks/live_chain: a table `items` seeded with 5,000 rows):

- an application load: C client threads, each with its own psycopg2 connection to every
  shard as the shard's app role (straight to the shards, no veneer), each looping over
  random tenants: SELECT by primary key (80 %), UPDATE by primary key (15 %), INSERT (5 %),
  autocommit; every query's start and end recorded. It starts 2 s before the migration
  (those 2 s, before anything else happens, are the "load alone" baseline) and stops 1 s
  after the migration ends; never later than the hard cap (120 s);
- long transactions on L tenants (one shard after the other): an application connection
  reads the tenant's `items` in a transaction and keeps it open for 6 s, started just
  before the migration, so those tenants' ALTERs must wait (or give up and retry);
- the migration: `alembic upgrade head` (l002 ADD COLUMN, l003 CREATE INDEX, l004 UPDATE
  every row), in its own process as a release pipeline runs it, timed.

Configurations:

  PPP defaults  `alembic upgrade head`: each statement's lock wait escalates per attempt of
                its tenant, 20 ms doubling to 2 s (PPP_MIGRATION_LOCK_TIMEOUT_START and
                PPP_MIGRATION_LOCK_TIMEOUT), retried with backoff
  fixed 2 s     `-x lock_timeout=2` (an explicit timeout is fixed): every attempt waits up to
                2 s, the default before escalation, retried with the same backoff
  fixed 10 s    `-x lock_timeout=10`: the wait before that

After each migration the script checks that every tenant is at the chain's head on its
shard and that the run reported no failed or locked tenant: it stops with an error
otherwise. It prints every run, then, side by side, the medians: the application's p50 /
p99 / max query latency, the longest stall (the longest interval in which a tenant with
load completed no query), the migration's duration and retries; then what escalation costs
in run time against the fixed 2 s, the target (with PPP's defaults the longest application
query takes at most 250 ms), and as its last line the median over the runs of the longest
application query with PPP's defaults: `max app wait: <s> s`.

Usage: python benchmarks/live_traffic.py [--tenants 30] [--clients 6] [--long 3]
                                         [--hold 6] [--repeat 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import BENCH, ROOT, fail, local_topology, median, met, run_command

from ppp_env import db
from ppp_env.fleet.options import RunOptions
from ppp_env.identifiers import quote_ident
from ppp_env.settings import Settings
from ppp_env.tenant_state import read_states

CHAIN = BENCH / "live_chain"
FIRST, HEAD = "l001", "l004"
#: Rows l001 seeds per tenant: the ids the application reads and updates.
SEED_ROWS = 5000
#: The longest an application query may take with PPP's defaults (the target).
TARGET = 0.25
#: No load, no migration, no long transaction outlives this (seconds).
HARD_CAP = 120.0
#: The load alone before anything else starts, and after the migration ends (seconds).
WARMUP, COOLDOWN = 2.0, 1.0
#: Bound on the queries one client thread records (far above what HARD_CAP allows here).
MAX_QUERIES_PER_CLIENT = 5_000_000
#: Marks the migrating process's result line on its stdout.
RESULT_MARK = "PPP-LIVE-RESULT "
READY_MARK = "PPP-LIVE-READY"

INI = """\
[alembic]
script_location = {script_location}
path_separator = os
prepend_sys_path = {root}
"""


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    x: tuple[str, ...]


CONFIGS = (
    Config("defaults", "PPP defaults", ()),
    Config("fixed", "fixed 2 s", ("lock_timeout=2",)),
    Config("old", "fixed 10 s", ("lock_timeout=10",)),
)


# -- the migrating process ---------------------------------------------------------------------
def migrate_main(ini: str, xs: list[str]) -> None:
    """`alembic -c INI [-x ...] upgrade head` in this process; print its result as JSON.

    Everything is imported first; then the process says it is ready and waits for a line on
    stdin, so the parent starts the long transactions just before the command itself.
    """
    from alembic import command
    from alembic.config import Config as AlembicConfig

    import ppp_env.fleet.env  # noqa: F401  (imported before the clock starts, as env.py does)

    cfg = AlembicConfig(ini, cmd_opts=argparse.Namespace(x=["output=quiet", *xs]))
    print(READY_MARK, flush=True)
    if sys.stdin.readline().strip() != "go":
        return  # the parent is gone or gave up
    error = None
    started = time.monotonic()
    try:
        command.upgrade(cfg, "head")
    except Exception as exc:  # reported to the parent, which fails loudly
        error = f"{type(exc).__name__}: {exc}"
    ended = time.monotonic()
    result = cfg.attributes.get("ppp.result")
    out = {
        "started": started,
        "ended": ended,
        "error": error,
        "result": result.to_json() if result is not None else None,
    }
    print(RESULT_MARK + json.dumps(out), flush=True)


@dataclass
class Migration:
    started: float
    ended: float
    result: dict[str, Any]

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def retries(self) -> int | None:
        """Sum of (attempts - 1) over the tenants; None when the runner does not retry."""
        tenants = self.result["tenants"]
        if any("attempts" not in t for t in tenants):
            return None
        return sum(max(int(t["attempts"]), 1) - 1 for t in tenants)


def migrate(
    ini: Path, config: Config, env: dict[str, str], deadline: float, just_before: Any
) -> Migration:
    """Run the migration in its own process; call ``just_before()`` right before it starts."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--migrate", str(ini)]
    cmd += [f"--x={x}" for x in config.x]
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if line.startswith(READY_MARK):
                    ready.set()

        reader = threading.Thread(target=read, name="migration-stdout", daemon=True)
        reader.start()
        try:
            if not ready.wait(max(deadline - time.monotonic(), 1.0)):
                fail(f"the migrating process did not get ready ({config.label})")
            just_before()
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.close()
            proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:
            fail(f"the migration ({config.label}) did not end within {HARD_CAP:.0f} s")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(timeout=10)
            err.seek(0)
            stderr = err.read()
    out = "".join(lines)
    results = [ln for ln in lines if ln.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not results:
        fail(f"the migrating process failed ({config.label}):\n{out[-2000:]}\n{stderr[-2000:]}")
    data = json.loads(results[-1][len(RESULT_MARK) :])
    if data["error"] or not data["result"] or not data["result"]["ok"]:
        fail(f"the migration ({config.label}) failed: {data['error'] or data['result']}")
    return Migration(data["started"], data["ended"], data["result"])


# -- the application ----------------------------------------------------------------------------
@dataclass
class Client:
    """One client thread's record: per query (tenant index, start, end), and its errors."""

    samples: list[tuple[int, float, float]] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None


class Load:
    """C client threads, each with a connection per shard as the app role, on random tenants."""

    def __init__(
        self, settings: Settings, tenants: list[tuple[str, str]], clients: int, seed: int
    ) -> None:
        self.settings = settings
        self.tenants = tenants
        self.clients = [Client() for _ in range(clients)]
        self.stop = threading.Event()
        self.seed = seed
        self.threads: list[threading.Thread] = []
        self.connected = threading.Barrier(clients + 1, timeout=30)
        sql = []
        for _shard, tenant in tenants:
            q = quote_ident(tenant)
            sql.append(
                (
                    f"SELECT id, name, qty FROM {q}.items WHERE id = %s",
                    f"UPDATE {q}.items SET qty = qty + 1 WHERE id = %s",
                    f"INSERT INTO {q}.items (name, qty) VALUES (%s, %s)",
                )
            )
        self.sql = sql

    def start(self) -> None:
        self.deadline = time.monotonic() + HARD_CAP
        for i, client in enumerate(self.clients):
            t = threading.Thread(target=self._run, args=(i, client), name=f"app-{i}", daemon=True)
            t.start()
            self.threads.append(t)
        try:
            self.connected.wait()  # every client connected: the load is on from here
        except threading.BrokenBarrierError:
            self.stop.set()
            errors = [c.first_error for c in self.clients if c.first_error]
            fail(f"the application clients could not connect: {errors[:1]}")
        self.started = time.monotonic()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=HARD_CAP)
        self.stopped = time.monotonic()
        if any(t.is_alive() for t in self.threads):
            fail("an application client did not stop")

    def _run(self, index: int, client: Client) -> None:
        rng = random.Random(self.seed * 1000 + index)
        conns = {}
        try:
            for shard in self.settings.shards:
                conns[shard] = db.connect(self.settings.shard(shard), "app", autocommit=True)
            self.connected.wait()
            curs = {s: c.cursor() for s, c in conns.items()}
            n = len(self.tenants)
            for _ in range(MAX_QUERIES_PER_CLIENT):
                if self.stop.is_set() or time.monotonic() > self.deadline:
                    break
                i = rng.randrange(n)
                cur = curs[self.tenants[i][0]]
                read, update, insert = self.sql[i]
                roll = rng.random()
                begun = time.monotonic()
                try:
                    if roll < 0.80:
                        cur.execute(read, (rng.randint(1, SEED_ROWS),))
                        cur.fetchall()
                    elif roll < 0.95:
                        cur.execute(update, (rng.randint(1, SEED_ROWS),))
                    else:
                        cur.execute(insert, ("live", rng.randrange(100)))
                except Exception as exc:
                    client.errors += 1
                    client.first_error = client.first_error or db.error_text(exc)
                    if client.errors > 1000:
                        break
                    continue
                client.samples.append((i, begun, time.monotonic()))
        except Exception as exc:
            client.errors += 1
            client.first_error = client.first_error or db.error_text(exc)
            self.connected.abort()
        finally:
            for c in conns.values():
                c.close()


class LongTransactions:
    """Application transactions that read a tenant's items and stay open for ``hold`` seconds."""

    def __init__(self, settings: Settings, tenants: list[tuple[str, str]], hold: float) -> None:
        self.settings = settings
        self.tenants = tenants
        self.hold = hold
        self.ready = threading.Event()
        self.release = threading.Event()
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, name="long-transactions", daemon=True)

    def start(self) -> None:
        self.thread.start()
        if not self.ready.wait(30) or self.error:
            fail(f"the long transactions did not start: {self.error}")

    def finish(self) -> None:
        self.release.set()
        if self.thread.ident is None:
            return  # never started
        self.thread.join(timeout=HARD_CAP)
        if self.thread.is_alive():
            fail("a long transaction did not end")

    def _run(self) -> None:
        conns = []
        try:
            for shard, tenant in self.tenants:
                conn = db.connect(self.settings.shard(shard), "app")
                conns.append(conn)
                cur = conn.cursor()
                cur.execute(f"SELECT count(*) FROM {quote_ident(tenant)}.items")
                cur.fetchall()
            self.held_from = time.monotonic()
            self.ready.set()
            self.release.wait(self.hold)
            for conn in conns:
                conn.rollback()
            self.held_until = time.monotonic()
        except Exception as exc:
            self.error = db.error_text(exc)
            self.ready.set()
        finally:
            for conn in conns:
                conn.close()


# -- figures ------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    return values[max(math.ceil(q * len(values)) - 1, 0)]


@dataclass
class Figures:
    queries: int
    qps: float
    p50: float
    p99: float
    max: float
    stall: float | None = None
    stall_tenant: str | None = None
    fleet_stall: float | None = None
    migration: float | None = None
    retries: int | None = None
    at_head: bool | None = None
    errors: int = 0


def latency(samples: list[tuple[int, float, float]], seconds: float) -> Figures:
    lat = sorted(end - begun for _i, begun, end in samples)
    if not lat:
        fail("the application completed no query")
    return Figures(
        len(lat), len(lat) / seconds, percentile(lat, 0.5), percentile(lat, 0.99), lat[-1]
    )


def longest_gap(ends: list[float], start: float, stop: float) -> float:
    """The longest interval in [start, stop] without an element of sorted ``ends``."""
    points = [start, *[e for e in ends if start <= e <= stop], stop]
    return max(b - a for a, b in itertools.pairwise(points))


def run_figures(
    load: Load, names: list[str], migration: Migration, window: tuple[float, float], at_head: bool
) -> tuple[Figures, Figures]:
    """(load alone, under migration) from one run's samples."""
    samples = [s for c in load.clients for s in c.samples]
    quiet_end, migrating_from = window
    alone = latency([s for s in samples if s[1] < quiet_end], quiet_end - load.started)
    # Every query started from the long transactions' start to the migration's end.
    during = [s for s in samples if migrating_from <= s[1] <= migration.ended]
    under = latency(during, migration.ended - migrating_from)
    by_tenant: dict[int, list[float]] = {}
    for i, _begun, end in samples:
        by_tenant.setdefault(i, []).append(end)
    stalls = {
        i: longest_gap(sorted(ends), migrating_from, load.stopped) for i, ends in by_tenant.items()
    }
    worst = max(stalls, key=lambda i: stalls[i])
    under.stall, under.stall_tenant = stalls[worst], names[worst]
    ends = sorted(e for _i, _b, e in samples)
    under.fleet_stall = longest_gap(ends, migrating_from, load.stopped)
    under.migration = migration.seconds
    under.retries = migration.retries
    under.at_head = at_head
    under.errors = sum(c.errors for c in load.clients)
    return alone, under


# -- the fleet ----------------------------------------------------------------------------------
def reset(
    settings: Settings, by_shard: dict[str, list[str]], alembic: list[str], env: dict[str, str]
) -> None:
    """Every tenant at l001, freshly seeded, vacuumed and analyzed: the same start every run."""
    for shard, schemas in by_shard.items():
        with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
            cur = conn.cursor()
            names = ", ".join(quote_ident(s) for s in schemas)
            cur.execute(f"DROP SCHEMA IF EXISTS {names} CASCADE")
    run_command([*alembic, "upgrade", FIRST], env, timeout=HARD_CAP)
    for shard, schemas in by_shard.items():
        with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
            cur = conn.cursor()
            cur.execute("VACUUM ANALYZE " + ", ".join(f"{quote_ident(s)}.items" for s in schemas))
    check_at(settings, by_shard, FIRST)


def check_at(settings: Settings, by_shard: dict[str, list[str]], revision: str) -> bool:
    """Every tenant at ``revision`` on its shard: else stop."""
    for shard, schemas in by_shard.items():
        with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
            states = read_states(conn.cursor(), schemas)
        behind = [s for s in schemas if s not in states or states[s].heads != (revision,)]
        if behind:
            fail(f"{len(behind)} tenants on {shard} are not at {revision}: {behind[:5]}")
    return True


def pick_long(by_shard: dict[str, list[str]], count: int) -> list[tuple[str, str]]:
    """``count`` tenants, one shard after the other, from the middle of each shard's list."""
    picked: list[tuple[str, str]] = []
    for depth in range(max(len(schemas) for schemas in by_shard.values())):
        for shard, schemas in by_shard.items():
            if len(picked) < count and depth < len(schemas):
                picked.append((shard, schemas[(len(schemas) // 2 + depth) % len(schemas)]))
    return picked


def one_run(
    settings: Settings,
    config: Config,
    tenants: list[tuple[str, str]],
    long: list[tuple[str, str]],
    args: argparse.Namespace,
    ini: Path,
    env: dict[str, str],
    seed: int,
) -> tuple[Figures, Figures]:
    by_shard: dict[str, list[str]] = {}
    for shard, tenant in tenants:
        by_shard.setdefault(shard, []).append(tenant)
    alembic = [str(Path(sys.executable).parent / "alembic"), "-c", str(ini)]
    reset(settings, by_shard, alembic, env)
    load = Load(settings, tenants, args.clients, seed)
    holders = LongTransactions(settings, long, args.hold)
    load.start()
    try:
        time.sleep(WARMUP)
        marks = [time.monotonic()]  # the end of the load alone

        def just_before() -> None:
            marks.append(time.monotonic())  # the migration's window starts
            holders.start()

        migration = migrate(ini, config, env, load.deadline, just_before)
        time.sleep(COOLDOWN)
    finally:
        load.finish()
        holders.finish()
    at_head = check_at(settings, by_shard, HEAD)
    problems = [t for t in migration.result["tenants"] if t["status"] not in ("migrated",)]
    if problems:
        fail(f"tenants not migrated ({config.label}): {problems[:5]}")
    return run_figures(load, [t for _s, t in tenants], migration, (marks[0], marks[1]), at_head)


# -- report -------------------------------------------------------------------------------------
def ms(value: float) -> str:
    return f"{value * 1000:,.1f} ms" if value < 1 else f"{value:,.2f} s"


def med(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return median(present) if present else None


def report(
    args: argparse.Namespace,
    alone: list[Figures],
    under: dict[str, list[Figures]],
    labels: dict[str, str],
) -> list[str]:
    runs = f"median of {args.repeat} run(s)" if args.repeat > 1 else "1 run"
    lines = [
        f"migrations under live traffic: {args.tenants} tenants over 3 shards, {args.clients} "
        f"client threads, {args.long} long transaction(s) of {args.hold:g} s, {runs}, "
        f"{os.cpu_count()} cores",
        "",
    ]
    cols = ["load alone (no migration)", *(labels[k] for k in under)]
    width = 28
    lines.append(f"{'':40}" + "".join(f"{c:>{width}}" for c in cols))

    def row(name: str, alone_value: str, values: list[str]) -> None:
        lines.append(f"{name:40}{alone_value:>{width}}" + "".join(f"{v:>{width}}" for v in values))

    figs = list(under.values())
    row(
        "queries per second",
        f"{med([a.qps for a in alone]):,.0f}",
        [f"{med([f.qps for f in fs]):,.0f}" for fs in figs],
    )
    for attr, name in (("p50", "p50 latency"), ("p99", "p99 latency"), ("max", "max latency")):
        row(
            name,
            ms(med([getattr(a, attr) for a in alone])),
            [ms(med([getattr(f, attr) for f in fs])) for fs in figs],
        )
    row(
        "worst max latency of all runs",
        ms(max(a.max for a in alone)),
        [ms(max(f.max for f in fs)) for fs in figs],
    )
    row(
        "longest stall on one tenant",
        "-",
        [ms(med([f.stall for f in fs])) for fs in figs],
    )
    row(
        "longest stall of the whole application",
        "-",
        [ms(med([f.fleet_stall for f in fs])) for fs in figs],
    )
    row(
        "migration (alembic upgrade head)",
        "-",
        [f"{med([f.migration for f in fs]):.2f} s" for fs in figs],
    )
    row(
        "retries (sum of attempts - 1)",
        "-",
        [
            "n/a" if med([f.retries for f in fs]) is None else f"{med([f.retries for f in fs]):g}"
            for fs in figs
        ],
    )
    row(
        f"every tenant at {HEAD}",
        "-",
        ["yes" if all(f.at_head for f in fs) else "NO" for fs in figs],
    )
    row("application errors", "-", [str(sum(f.errors for f in fs)) for fs in figs])
    lines.append("")
    for key, fs in under.items():
        for n, f in enumerate(fs, 1):
            lines.append(
                f"{labels[key]}, run {n}: p50 {ms(f.p50)}, p99 {ms(f.p99)}, max {ms(f.max)}, "
                f"stall {ms(f.stall or 0)} ({f.stall_tenant}), migration {f.migration or 0:.2f} s, "
                f"retries {'n/a' if f.retries is None else f.retries}"
            )
    return lines


# -- main ---------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=30)
    parser.add_argument("--clients", type=int, default=6, help="application client threads")
    parser.add_argument("--long", type=int, default=3, help="tenants with a long transaction")
    parser.add_argument("--hold", type=float, default=6.0, help="seconds a long transaction lasts")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the servers live (default: tmpfs)"
    )
    parser.add_argument("--migrate", metavar="INI", help=argparse.SUPPRESS)
    parser.add_argument("--x", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.migrate:
        migrate_main(args.migrate, args.x)
        return
    if not 3 <= args.tenants <= 3000 or not 1 <= args.clients <= 64 or args.repeat < 1:
        parser.error("--tenants from 3 to 3000, --clients from 1 to 64, --repeat at least 1")
    if not 0 <= args.long <= args.tenants or not 0 < args.hold <= HARD_CAP / 4:
        parser.error(f"--long from 0 to --tenants, --hold above 0 and at most {HARD_CAP / 4:g}")

    retry = "lock_timeout" in RunOptions.X_KEYS
    configs = [c for c in CONFIGS if retry or not c.x]
    if not retry:
        print(
            "note: this runner has no -x lock_timeout (no per-statement lock timeout and retry "
            "yet): only PPP's current default is measured",
            file=sys.stderr,
        )

    with local_topology(args.workdir, prefix="ppp-live-") as top:
        settings, env = top.settings, top.environ()
        alembic = str(Path(sys.executable).parent / "alembic")
        run_command([alembic, "-n", "veneer", "upgrade", "head"], env, timeout=HARD_CAP)
        ini = top.work / "live.ini"
        ini.write_text(INI.format(script_location=CHAIN, root=ROOT))

        shards = top.shards
        tenants = [(shards[i % len(shards)], f"t{i:05d}") for i in range(args.tenants)]
        top.replace_tenants({name: shard for shard, name in tenants})  # only the benchmark's
        by_shard: dict[str, list[str]] = {}
        for shard, name in tenants:
            by_shard.setdefault(shard, []).append(name)
        long = pick_long(by_shard, args.long)

        alone: list[Figures] = []
        under: dict[str, list[Figures]] = {c.key: [] for c in configs}
        for run in range(args.repeat):
            for n, config in enumerate(configs):
                a, u = one_run(settings, config, tenants, long, args, ini, env, run * 10 + n)
                alone.append(a)
                under[config.key].append(u)
                print(
                    f"run {run + 1}, {config.label}: max latency {ms(u.max)}, longest stall "
                    f"{ms(u.stall or 0)}, migration {u.migration or 0:.2f} s, retries "
                    f"{'n/a' if u.retries is None else u.retries}",
                    file=sys.stderr,
                    flush=True,
                )

        labels = {c.key: c.label for c in configs}
        print()
        for line in report(args, alone, under, labels):
            print(line)
        print(f"\nlong transactions on: {', '.join(f'{s}/{t}' for s, t in long) or '(none)'}")
        for line in conclusion(settings, under, labels):
            print(line)


def conclusion(
    settings: Settings, under: dict[str, list[Figures]], labels: dict[str, str]
) -> list[str]:
    """What escalation costs in run time, the target, and the last line: the max app wait."""
    lines = []
    defaults = under["defaults"]
    seconds = med([f.migration for f in defaults])
    if "fixed" in under:
        base = med([f.migration for f in under["fixed"]])
        lines.append(
            f"run time (alembic upgrade head): PPP defaults {seconds:.2f} s, "
            f"{labels['fixed']} {base:.2f} s ({seconds - base:+.2f} s, {seconds / base:.2f}x)"
        )
    start = getattr(settings, "migration_lock_timeout_start", None)
    steps = f"{start * 1000:g} ms doubling to " if start else ""
    wait = med([f.max for f in defaults])
    worst = max(f.max for f in defaults)
    lines.append(
        f"target: with PPP's defaults (lock waits {steps}{settings.migration_lock_timeout:g} s) "
        f"no application query takes longer than {TARGET * 1000:.0f} ms: "
        f"{met(wait <= TARGET)} (median of the runs' longest: {ms(wait)}; worst: {ms(worst)})"
    )
    lines.append(f"max app wait: {wait:.3f} s")
    return lines


if __name__ == "__main__":
    main()
