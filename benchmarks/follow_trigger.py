#!/usr/bin/env python3
"""What following tenants' changes costs a migration: the shard's deferred trigger.

Builds a throwaway topology (veneer + 3 shards, local servers) and, on one shard, N tenant
schemas of T tables each with an Alembic version table tracked by the shard's index (rows
started anew, as after a refresh). Then, in every run, one transaction per tenant over one
connection, as the fleet runner sends a rendered revision:

  (a) a one-table revision: `ALTER TABLE t000 ADD COLUMN ...` and the version update,
      with the change tracking trigger (what a migration costs now)
  (b) baseline of (a): the same with the trigger disabled (what it cost before)
  (c) a data-only revision (an UPDATE and the version update), with the trigger
  (d) baseline of (c): the same with the trigger disabled

Prints the medians of --repeat runs, every run, and the trigger's cost per tenant.

Usage: python benchmarks/follow_trigger.py [--tenants 300] [--tables 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from common import Stopwatch, every, local_topology, median

from ppp_env import db
from ppp_env.identifiers import quote_ident
from ppp_env.tenant_state import FOLLOW_TRIGGER, ensure_index, track_sql

TABLE = "CREATE TABLE {s}.t{i:03d} (id integer PRIMARY KEY, name text NOT NULL, note text);"


def build(cur: Any, app_role: str, schemas: list[str], tables: int) -> None:
    ensure_index(cur, app_role)
    for s in schemas:
        q = quote_ident(s)
        cur.execute(
            f"BEGIN; DROP SCHEMA IF EXISTS {q} CASCADE; CREATE SCHEMA {q};"
            + "".join(TABLE.format(s=q, i=i) for i in range(tables))
            + f"CREATE TABLE {q}.alembic_version (version_num varchar(32) PRIMARY KEY);"
            f"INSERT INTO {q}.alembic_version VALUES ('r0');" + track_sql(s) + "COMMIT;"
        )
    cur.execute(
        "UPDATE ppp.tenant_versions SET changed = '{}', changed_since = heads "
        "WHERE schema_name = ANY(%s)",
        (schemas,),
    )


def revise(cur: Any, schemas: list[str], change: str, revision: str, trigger: bool) -> float:
    """One transaction per tenant: ``change`` ({s}: the schema) and the version update."""
    state = "ENABLE" if trigger else "DISABLE"
    cur.execute(f"ALTER TABLE ppp.tenant_versions {state} TRIGGER {FOLLOW_TRIGGER}")
    with Stopwatch() as sw:
        for s in schemas:
            q = quote_ident(s)
            cur.execute(
                f"BEGIN; {change.format(s=q)}; "
                f"UPDATE {q}.alembic_version SET version_num = '{revision}'; COMMIT;"
            )
    cur.execute(f"ALTER TABLE ppp.tenant_versions ENABLE TRIGGER {FOLLOW_TRIGGER}")
    return sw.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=300)
    parser.add_argument("--tables", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    n = args.tenants
    schemas = [f"f{i:05d}" for i in range(n)]
    with local_topology(args.workdir) as top:
        inst = top.settings.shards[top.shards[0]]
        with db.connection(inst, "admin", autocommit=True) as conn, conn.cursor() as cur:
            build(cur, inst.app_role, schemas, args.tables)
            rows: dict[str, list[float]] = {k: [] for k in "abcd"}
            for run in range(args.repeat):
                alter = "ALTER TABLE {s}.t000 ADD COLUMN x%s integer"
                rows["a"].append(revise(cur, schemas, alter % f"{run}a", f"r{run}a", True))
                rows["b"].append(revise(cur, schemas, alter % f"{run}b", f"r{run}b", False))
                data = "UPDATE {s}.t001 SET note = 'x'"
                rows["c"].append(revise(cur, schemas, data, f"r{run}c", True))
                rows["d"].append(revise(cur, schemas, data, f"r{run}d", False))
            cur.execute(
                "SELECT count(*) FILTER (WHERE changed = ARRAY[to_regclass("
                "format('%%I.t000', schema_name))::oid]) FROM ppp.tenant_versions "
                "WHERE schema_name = ANY(%s)",
                (schemas,),
            )
            followed = cur.fetchone()[0]
    m = {k: median(v) for k, v in rows.items()}
    print(
        f"\nchange tracking trigger: {n} tenants x {args.tables} tables on one shard, one "
        f"transaction per tenant, median of {args.repeat} runs, {os.cpu_count()} cores"
    )
    labels = {
        "a": "one-table revision, trigger on",
        "b": "one-table revision, trigger off (baseline)",
        "c": "data-only revision, trigger on",
        "d": "data-only revision, trigger off (baseline)",
    }
    print(f"{'':4}{'what':46}{'seconds':>9}{'ms/tenant':>11}")
    for k, what in labels.items():
        print(f"({k}) {what:46}{m[k]:9.2f}{m[k] / n * 1000:11.3f}")
    print("\nevery run (s):")
    for k in labels:
        print(f"  ({k}) " + every(rows[k]))
    print(
        f"\ntrigger cost per tenant: one-table {(m['a'] - m['b']) / n * 1000:.3f} ms, "
        f"data-only {(m['c'] - m['d']) / n * 1000:.3f} ms; tenants whose row names t000 (and "
        f"nothing else) as changed: {followed} of {n}"
    )


if __name__ == "__main__":
    main()
