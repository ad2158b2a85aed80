#!/usr/bin/env python3
"""The veneer at its limit: N tenants x T tables of foreign tables in one veneer, measured
once each in one run (at this size a run takes minutes to hours; medians are taken where a
measure is cheap to repeat: the cold sessions).

Builds a throwaway topology (veneer + 3 shards, local servers, default server settings, no
statement logging, on --workdir: the disk by default, as 1M tables' files do not fit in
memory), gives every tenant T tables on its shard (veneer_refresh.py's 6-column table) and
an Alembic version table with PPP's version index trigger, as a migrated tenant has. Then,
in this order:

  cold (1 tenant)   a new session's first query through the veneer (SELECT from one foreign
                    table, as veneer_app), with ONE tenant wired: the baseline of the next row
  full refresh      `ppp veneer refresh`: every tenant new to the veneer
  cold (all)        the same first query, every tenant wired (target <= 50 ms)
  one-table, fleet  a revision changing one table of every tenant (ALTER TABLE and the version
                    update in one transaction per tenant, as `alembic upgrade` runs it), then
                    the refresh the fleet runner makes after it (target <= 60 s, <= 5 % of the
                    full refresh)
  one-table, compare  the same kind of change refreshed by comparing every table (what
                    `ppp veneer refresh` does): the baseline of the row above
  size              the veneer database and its largest catalogs
  pg_dump -s        of the veneer database, to /dev/null

Usage: python benchmarks/veneer_limit.py [--tenants 1000] [--tables 100] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import (
    Stopwatch,
    fail,
    find_bindir,
    group_by_shard,
    local_topology,
    met,
    round_robin,
)
from veneer_refresh import TABLES, per_shard, revise_one_table

from ppp_env import db
from ppp_env.identifiers import quote_ident
from ppp_env.servers.clients import Client, server_version
from ppp_env.settings import Settings
from ppp_env.tenant_state import ensure_index, track_sql
from ppp_env.veneer import env as veneer_env
from ppp_env.veneer import tables as veneer

#: Tenants built per shard session (a session that creates every table slows down).
PER_SESSION = 200


def build(settings: Settings, by_shard: dict[str, list[str]], tables: int) -> None:
    """Every tenant's tables and tracked version table, 20 tenants per round trip, a new
    session every :data:`PER_SESSION` tenants."""

    def work(cur: Any, shard: str, schemas: list[str]) -> None:
        app = settings.shards[shard].app_role
        ensure_index(cur, app)
        for start in range(0, len(schemas), PER_SESSION):
            with db.connection(settings.shards[shard], "admin", autocommit=True) as conn:
                c = conn.cursor()
                part = schemas[start : start + PER_SESSION]
                for i in range(0, len(part), 20):
                    c.execute(
                        "".join(
                            f"BEGIN; CREATE SCHEMA {quote_ident(s)};"
                            + TABLES.format(schema=quote_ident(s), last=tables - 1)
                            + f"CREATE TABLE {quote_ident(s)}.alembic_version (version_num "
                            "varchar(32) NOT NULL PRIMARY KEY);"
                            + track_sql(s, app)
                            + f"INSERT INTO {quote_ident(s)}.alembic_version VALUES ('v0');"
                            + "COMMIT;"
                            for s in part[i : i + 20]
                        )
                    )

    per_shard(settings, by_shard, work)


def refreshed(
    settings: Settings, expect: dict[str, int], tenants: Sequence[str] | None = None, **kw: Any
) -> float:
    with Stopwatch() as sw:
        report = veneer.refresh(settings, tenants, **kw)
    got = {
        "refreshed": len(report.refreshed),
        "created": report.tables_created,
        "dropped": report.tables_dropped,
    }
    if not report.ok or got != expect:
        fail(f"refresh did {got} (errors {list(report.errors.items())[:3]}), expected {expect}")
    return sw.seconds


def cold_query(settings: Settings, tenant: str, samples: int = 5) -> tuple[float, float]:
    """Median seconds of a new veneer_app session's connect, and of its first query (a
    foreign table of ``tenant``: the fdw connection to the shard included)."""
    connects, firsts = [], []
    for _ in range(samples):
        started = time.perf_counter()
        with db.connection(settings.veneer, "app", autocommit=True) as conn:
            connected = time.perf_counter()
            cur = conn.cursor()
            cur.execute(f"SELECT count(*) FROM {quote_ident(tenant)}.t000")
            cur.fetchall()
            firsts.append(time.perf_counter() - connected)
        connects.append(connected - started)
    return statistics.median(connects), statistics.median(firsts)


def sizes(settings: Settings) -> list[tuple[str, int]]:
    with db.connection(settings.veneer, "admin", autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute(
            "SELECT 'database', pg_database_size(current_database()) UNION ALL "
            "(SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
            "WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relkind = 'r' "
            "ORDER BY 2 DESC LIMIT 4)"
        )
        return [(name, int(n)) for name, n in cur.fetchall()]


def dump_seconds(settings: Settings) -> str:
    """``pg_dump -s`` of the veneer: its seconds, or why it failed (itself a finding: it
    locks every table it dumps in one transaction)."""
    with db.connection(settings.veneer, "admin", autocommit=True) as conn:
        version = server_version(conn.cursor())
    client = Client(settings.veneer, version, bindir=find_bindir())
    with Stopwatch() as sw:
        done = subprocess.run(
            client.command("pg_dump", "-s", "-f", os.devnull),
            env=client.environment(),
            capture_output=True,
        )
    if done.returncode:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        return f"FAILED after {sw.seconds:.1f} s: {' / '.join(lines[-2:])}"
    return f"{sw.seconds:9.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--tables", type=int, default=100)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    if args.tenants < 3 or args.tables < 1:
        parser.error("--tenants must be at least 3 and --tables at least 1")
    n, t = args.tenants, args.tables

    with local_topology(args.workdir, statement_logging=False) as top:
        settings = top.settings
        veneer_env.upgrade(settings, "heads")
        placed = round_robin((f"t{i:05d}" for i in range(n)), top.shards)
        by_shard = group_by_shard(placed, top.shards)
        top.replace_tenants(placed)
        names = list(placed)
        with Stopwatch() as sw:
            build(settings, by_shard, t)
        print(f"built {n:,} tenants x {t} tables on 3 shards in {sw.seconds:.0f} s", flush=True)

        refreshed(settings, {"refreshed": 1, "created": t, "dropped": 0}, [names[0]])
        small = cold_query(settings, names[0])
        print(f"cold session, 1 tenant wired: {small[1] * 1000:.1f} ms", flush=True)
        full = refreshed(settings, {"refreshed": n, "created": (n - 1) * t, "dropped": 0})
        print(f"full refresh: {full:.1f} s", flush=True)
        big = cold_query(settings, names[-1])
        revise_one_table(settings, by_shard, "extra_1", "v1")
        follow = refreshed(
            settings, {"refreshed": n, "created": n, "dropped": n}, names, follow_changes=True
        )
        print(f"one-table refresh, as the fleet runner makes it: {follow:.1f} s", flush=True)
        revise_one_table(settings, by_shard, "extra_2", "v2")
        compare = refreshed(settings, {"refreshed": n, "created": n, "dropped": n})
        sized = sizes(settings)
        dump = dump_seconds(settings)

        foreign = n * t
        print()
        print(
            f"veneer at its limit: {n:,} tenants x {t} tables = {foreign:,} foreign tables over "
            f"3 shards, {os.cpu_count()} cores, data on {args.workdir}"
        )
        rows = [
            ("full refresh (ppp veneer refresh, every tenant new)", f"{full:9.1f} s"),
            ("one-table revision, the fleet runner's refresh", f"{follow:9.1f} s"),
            ("one-table revision, refresh comparing every table", f"{compare:9.1f} s"),
            ("new session: connect, 1 tenant wired", f"{small[0] * 1000:9.1f} ms"),
            ("new session: connect, every tenant wired", f"{big[0] * 1000:9.1f} ms"),
            ("new session: first query, 1 tenant wired", f"{small[1] * 1000:9.1f} ms"),
            ("new session: first query, every tenant wired", f"{big[1] * 1000:9.1f} ms"),
            *((f"size: {name}", f"{size / 2**20:9.0f} MB") for name, size in sized),
            ("pg_dump -s of the veneer", dump),
        ]
        for what, value in rows:
            print(f"  {what:58}{value}")
        print()
        print(f"targets: one-table refresh <= 60 s: {met(follow <= 60)} ({follow:.1f} s)")
        print(
            f"         one-table refresh <= 5 % of the full refresh: "
            f"{met(follow <= 0.05 * full)} ({follow / full:.1%})"
        )
        print(
            f"         cold session's first query <= 50 ms: {met(big[1] <= 0.05)} "
            f"({big[1] * 1000:.1f} ms; {small[1] * 1000:.1f} ms with 1 tenant wired)"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
