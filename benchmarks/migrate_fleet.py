#!/usr/bin/env python3
"""Fleet migration benchmark: PPP's default command against the floor and the naive way.

Builds a throwaway topology (veneer + 3 shards, local servers, on tmpfs when the machine
has one), registers N tenants in the catalog (round robin over the shards) and, in every
run, times each row below from the same starting point (no tenant schema on any shard,
no tenant wired in the veneer). Every run is printed, then the medians, then the targets.
After every row the script checks that every tenant it migrated is at the chain's head
(and, for the rows that refresh, wired in the veneer at that revision): it stops with an
error otherwise.

The 5-revision chain (benchmarks/fleet: a table; a second table with a foreign key; an
index; a new column; a data migration):

  (a)  PPP, the default command: `alembic upgrade head` (veneer refresh on, the default
       PPP_JOBS_PER_SHARD)
  (a1) the same with one worker per shard: `alembic -x jobs_per_shard=1 upgrade head`
  (a/K) with --jobs-sweep K,...: the same with K workers per shard (how the default of
       PPP_JOBS_PER_SHARD was chosen)
  (a2) the same with `-x refresh=false`
  (b)  naive: Alembic's cookbook recipe for schema-per-tenant PostgreSQL
       (benchmarks/naive_cookbook/env.py), one `alembic -x tenant=T upgrade head`
       process per tenant, one tenant after the other; timed on a sample of
       --naive-sample tenants and extrapolated to N
  (c)  floor: the SQL PPP renders (`alembic upgrade base:head --sql`), sent by psycopg2
       over one connection per shard, all shards at once (a thread each), ONE query
       string per tenant: BEGIN; CREATE SCHEMA; SET LOCAL search_path; <SQL>; COMMIT
  (d)  `alembic upgrade head` again, every tenant already at head
  (e)  `alembic -x refresh=false -x render=false upgrade head`: Alembic online, tenant
       by tenant (no render-once); compare with (a2)

The 14-revision chain (benchmarks/fleet_mixed: tables, columns, indexes, data
migrations), in two twins with the same effect:

  (f)  `alembic -x refresh=false upgrade head` on the mixed chain: 2 of its 14 revisions
       read from the database (benchmarks/fleet_mixed/online), so they cannot be rendered
  (g)  the same on its all-renderable twin (benchmarks/fleet_mixed/renderable)

  (f) and (g) leave the veneer refresh out: it costs the same for both twins (same
  tables), so it would only dilute the ratio that measures the runner; (a) - (a2) shows
  what the refresh costs.

Targets: (a1) <= 1.5 x (c); (a) <= 0.8 x (c) (several workers per shard); (f) <= 2 x (g).

Usage: python benchmarks/migrate_fleet.py [--tenants 1000] [--repeat 3] [--naive-sample 10]
                                          [--jobs-sweep 2,3,4] [--markdown] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    BENCH,
    ROOT,
    Stopwatch,
    every,
    fail,
    figure,
    group_by_shard,
    local_topology,
    median,
    median_ratio,
    met,
    round_robin,
    run_command,
    times,
)

from ppp_env import db
from ppp_env.identifiers import quote_ident
from ppp_env.settings import JOBS_PER_SHARD, Settings
from ppp_env.tenant_state import read_states
from ppp_env.veneer.catalog import (
    admin_connection,
    find_tenants,
    register_tenant,
    unregister_tenant,
)


@dataclass(frozen=True)
class Chain:
    """A script directory and the revision folders an ini file gives it."""

    ini: str
    script_location: Path
    version_locations: tuple[Path, ...]
    head: str
    revisions: int


FLEET = Chain("fleet.ini", BENCH / "fleet", (BENCH / "fleet" / "versions",), "b005", 5)
NAIVE = Chain("naive.ini", BENCH / "naive_cookbook", FLEET.version_locations, "b005", 5)
MIXED_DIR = BENCH / "fleet_mixed"
MIXED = Chain("mixed.ini", MIXED_DIR, (MIXED_DIR / "versions", MIXED_DIR / "online"), "m14", 14)
RENDERABLE = Chain(
    "renderable.ini", MIXED_DIR, (MIXED_DIR / "versions", MIXED_DIR / "renderable"), "m14", 14
)

INI = """\
[alembic]
script_location = {script_location}
version_locations = {version_locations}
path_separator = os
prepend_sys_path = {root}
"""

#: Catalog tables a reset vacuums on each shard, so that run 3 does not pay for the dead
#: rows runs 1 and 2 left behind (each run creates and drops thousands of relations).
CATALOGS = (
    "pg_class",
    "pg_attribute",
    "pg_type",
    "pg_depend",
    "pg_namespace",
    "pg_constraint",
    "pg_index",
    "pg_attrdef",
    "pg_trigger",
    "pg_sequence",
)


def write_ini(work: Path, chain: Chain) -> Path:
    path = work / chain.ini
    path.write_text(
        INI.format(
            script_location=chain.script_location,
            version_locations=os.pathsep.join(str(p) for p in chain.version_locations),
            root=ROOT,
        )
    )
    return path


# -- the starting point of every row ---------------------------------------------------------------
def reset(settings: Settings, by_shard: dict[str, list[str]], *, veneer: bool = True) -> None:
    """No tenant schema on the shards; with ``veneer``, no tenant wired in the veneer."""
    for shard, schemas in by_shard.items():
        with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
            cur = conn.cursor()
            for i in range(0, len(schemas), 100):
                names = ", ".join(quote_ident(s) for s in schemas[i : i + 100])
                cur.execute(f"DROP SCHEMA IF EXISTS {names} CASCADE")
            cur.execute("VACUUM " + ", ".join(f"pg_catalog.{c}" for c in CATALOGS))
    if not veneer:
        return
    # Unregister and register again: drops the tenant's foreign tables, makes it pending.
    tenants = [(t, s) for s, names in by_shard.items() for t in names]
    for i in range(0, len(tenants), 100):
        with admin_connection(settings) as conn:
            for tenant, shard in tenants[i : i + 100]:
                unregister_tenant(conn, tenant)
                register_tenant(conn, tenant, shard)


def check_at_head(
    settings: Settings, by_shard: dict[str, list[str]], head: str, *, wired: bool = False
) -> None:
    """Every tenant of ``by_shard`` at ``head`` on its shard (and wired at it): else stop."""
    for shard, schemas in by_shard.items():
        with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
            states = read_states(conn.cursor(), schemas)
        behind = [s for s, st in states.items() if st.heads != (head,)]
        if behind:
            fail(f"{len(behind)} tenants on {shard} are not at {head}: {behind[:5]}")
    if wired:
        names = [t for schemas in by_shard.values() for t in schemas]
        with admin_connection(settings) as conn:
            found = find_tenants(conn, tenants=names)
        stale = [t.schema for t in found if t.wired_revision != head or t.state != "active"]
        if stale or len(found) != len(names):
            fail(f"{len(stale)} tenants are not wired in the veneer at {head}: {stale[:5]}")


def fingerprint(settings: Settings, by_shard: dict[str, list[str]]) -> list[tuple[Any, ...]]:
    """What the 14-revision chain left in the first tenant of each shard (twins must match)."""
    out: list[tuple[Any, ...]] = []
    for shard, schemas in by_shard.items():
        q = quote_ident(schemas[0])
        with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
            cur = conn.cursor()
            cur.execute(
                f"SELECT (SELECT string_agg(country, ',' ORDER BY id) FROM {q}.customers), "
                f"(SELECT string_agg(status, ',' ORDER BY id) FROM {q}.orders), "
                f"(SELECT count(*) FROM {q}.order_lines), "
                f"(SELECT count(*) || ':' || sum(amount) FROM {q}.invoices)"
            )
            out.append(cur.fetchone())
    return out


# -- the rows --------------------------------------------------------------------------------------
def rendered_body(alembic: list[str], env: dict[str, str], tenant: str) -> str:
    """The SQL PPP renders for the 5-revision chain, without its per-tenant frame."""
    _, out = run_command([*alembic, "-x", f"tenant={tenant}", "upgrade", "base:head", "--sql"], env)
    marker = f"SET LOCAL search_path TO {quote_ident(tenant)};\n"
    if marker not in out or not out.rstrip().endswith("COMMIT;"):
        fail(f"unexpected --sql output:\n{out[:2000]}")
    body = out.split(marker, 1)[1].rstrip()
    return body[: -len("COMMIT;")].strip() + "\n"


def floor(settings: Settings, by_shard: dict[str, list[str]], body: str) -> float:
    """(c): one connection per shard, all at once, ONE query string per tenant."""
    queries = {
        shard: [
            f"BEGIN;\nCREATE SCHEMA {quote_ident(t)};\nSET LOCAL search_path TO {quote_ident(t)};\n"
            f"{body}COMMIT;"
            for t in schemas
        ]
        for shard, schemas in by_shard.items()
    }
    errors: list[str] = []

    def one(shard: str) -> None:
        try:
            with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
                cur = conn.cursor()
                for sql in queries[shard]:
                    cur.execute(sql)
        except Exception as exc:
            errors.append(f"{shard}: {db.first_line(exc)}")

    threads = [threading.Thread(target=one, args=(s,)) for s in by_shard]
    with Stopwatch() as sw:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        fail("the floor's client failed: " + "; ".join(errors))
    return sw.seconds


def naive(
    settings: Settings,
    alembic: list[str],
    env: dict[str, str],
    sample_by_shard: dict[str, list[str]],
) -> float:
    """(b) on the sample: one cookbook `alembic -x tenant=T upgrade head` per tenant."""
    order = [(s, t) for s, names in sample_by_shard.items() for t in names]
    urls = {
        s: settings.shard(s).url("admin").render_as_string(hide_password=False)
        for s in sample_by_shard
    }
    with Stopwatch() as sw:
        for shard, tenant in order:
            run_command(
                [*alembic, "-x", f"tenant={tenant}", "upgrade", "head"],
                dict(env, NAIVE_DATABASE_URL=urls[shard]),
            )
    return sw.seconds / len(order)


# -- report ----------------------------------------------------------------------------------------
@dataclass
class Row:
    tag: str
    what: str
    command: str
    runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return median(self.runs)


def seconds(value: float) -> str:
    return f"{value:,.2f} s" if value < 100 else f"{value:,.0f} s"


def report(rows: dict[str, Row], args: argparse.Namespace, shards: int, sample: int) -> list[str]:
    """The summary, one line per row: median, ratio, every run; then the targets."""
    a, a1, f = ratio_value("a", rows), ratio_value("a1", rows), ratio_value("f", rows)
    lines = [
        f"fleet migration: {args.tenants:,} tenants over {shards} shards, median of "
        f"{args.repeat} run(s), {os.cpu_count()} cores; (b) extrapolated from {sample} "
        "tenants per run",
        "",
    ]
    for key, row in rows.items():
        line = figure(
            f"{row.tag:6}{row.what:75}",
            seconds(row.median),
            ratio(key, rows),
            sep="",
            gap="",
            value_width=11,
            ratio_width=16,
        )
        lines.append(f"{line}   runs: {every(row.runs)}")
        lines.append(f"{'':5}$ {row.command}")
    lines += [
        "",
        "ratios: the median of the ratios measured within each run",
        f"target (a1) <= 1.5 x (c): {met(a1 <= 1.5)} ({times(a1)})",
        f"target (a) <= 0.8 x (c): {met(a <= 0.8)} ({times(a)}; PPP_JOBS_PER_SHARD default "
        f"{JOBS_PER_SHARD})",
        f"target (f) <= 2 x (g): {met(f <= 2)} ({times(f)})",
    ]
    return lines


#: What each row is compared with ("": nothing: (g) is the base of (f)).
BASES = {"a": "c", "a1": "c", "a2": "c", "b": "c", "c": "c", "d": "c", "e": "a2", "f": "g", "g": ""}


def ratio_value(key: str, rows: dict[str, Row]) -> float:
    """The median of the row's ratios to its base within each run (both measured minutes
    apart, at most): see ``common.median_ratio``."""
    return median_ratio(rows[key].runs, rows[BASES.get(key, "c")].runs)


def ratio(key: str, rows: dict[str, Row]) -> str:
    base = BASES.get(key, "c")
    if not base:
        return ""
    name = "floor" if base == "c" else rows[base].tag
    return times(ratio_value(key, rows), name)


def markdown(rows: dict[str, Row], args: argparse.Namespace, per_tenant: float) -> list[str]:
    """The README's table, exactly as this run measured it."""
    head = f"{args.tenants:,} tenants, median of {args.repeat}"
    lines = [
        f"| | what | command | {head} | ratio (median of per-run ratios) | every run (s) |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in rows.items():
        what = row.what
        if key == "b":
            what += f" ({per_tenant:.2f} s per tenant)"
        lines.append(
            f"| {row.tag} | {what} | `{row.command}` | {seconds(row.median)} | "
            f"{ratio(key, rows) or '-'} | {every(row.runs)} |"
        )
    return lines


# -- main ------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--naive-sample", type=int, default=10)
    parser.add_argument(
        "--jobs-sweep",
        default="",
        help="also time the default command with each of these workers per shard (2,3,4)",
    )
    parser.add_argument("--markdown", action="store_true", help="also print the README's table")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the servers live (default: tmpfs)"
    )
    args = parser.parse_args()
    if args.tenants < 3 or args.repeat < 1 or args.naive_sample < 1:
        parser.error("--tenants must be at least 3, --repeat and --naive-sample at least 1")
    try:
        sweep = [int(k) for k in args.jobs_sweep.split(",") if k.strip()]
    except ValueError:
        parser.error("--jobs-sweep takes whole numbers separated by commas, e.g. 2,3,4")
    if any(k < 1 for k in sweep):
        parser.error("--jobs-sweep: every number must be at least 1")

    with local_topology(args.workdir) as top:
        settings, env = top.settings, top.environ()
        alembic = str(Path(sys.executable).parent / "alembic")
        run_command([alembic, "-n", "veneer", "upgrade", "head"], env)
        ini = {c.ini: write_ini(top.work, c) for c in (FLEET, NAIVE, MIXED, RENDERABLE)}

        shards = top.shards
        names = [f"t{i:05d}" for i in range(args.tenants)]
        placed = round_robin(names, shards)
        by_shard = group_by_shard(placed, shards)
        top.replace_tenants(placed)  # only the benchmark's tenants take part
        sample = names[: min(args.naive_sample, len(names))]
        sample_by_shard = {s: [t for t in by_shard[s] if t in sample] for s in shards}
        sample_by_shard = {s: t for s, t in sample_by_shard.items() if t}

        fleet = [alembic, "-c", str(ini[FLEET.ini])]
        body = rendered_body(fleet, env, names[0])
        # The arguments each PPP row runs (after `alembic -c <its ini>`), also its label.
        upgrade = ["upgrade", "head"]
        no_refresh = ["-x", "refresh=false", *upgrade]
        argv = {
            "a": upgrade,
            "a1": ["-x", "jobs_per_shard=1", *upgrade],
            **{f"k{k}": ["-x", f"jobs_per_shard={k}", *upgrade] for k in sweep if k != 1},
            "a2": no_refresh,
            "d": upgrade,
            "e": ["-x", "refresh=false", "-x", "render=false", *upgrade],
            "f": no_refresh,
            "g": no_refresh,
        }

        def label(key: str) -> str:
            return " ".join(["alembic", *argv[key]])

        rows = {
            "a": Row("(a)", "PPP, the default command (veneer refresh on)", label("a")),
            "a1": Row("(a1)", "PPP, the default command, one worker per shard", label("a1")),
            **{
                f"k{k}": Row(
                    f"(a/{k})", f"PPP, the default command, {k} workers per shard", label(f"k{k}")
                )
                for k in sweep
                if k != 1
            },
            "a2": Row("(a2)", "PPP without the veneer refresh", label("a2")),
            "b": Row(
                "(b)",
                "naive: Alembic cookbook env.py, a process per tenant, extrapolated",
                "alembic -x tenant=T upgrade head (once per tenant)",
            ),
            "c": Row(
                "(c)",
                "floor: rendered SQL, psycopg2, a connection per shard, 1 query per tenant",
                "BEGIN; CREATE SCHEMA t; SET LOCAL search_path TO t; <the --sql body>; COMMIT",
            ),
            "d": Row("(d)", "PPP, every tenant already at head", label("d")),
            "e": Row(
                "(e)", "PPP online, tenant by tenant (no render-once, no refresh)", label("e")
            ),
            "f": Row("(f)", "PPP, 14-revision chain, 2 revisions read the database", label("f")),
            "g": Row("(g)", "PPP, its all-renderable twin (same effect)", label("g")),
        }

        def ppp(row: str, cmd: list[str], chain: Chain, *, wired: bool) -> None:
            reset(settings, by_shard)
            took, _ = run_command(cmd, env)
            check_at_head(settings, by_shard, chain.head, wired=wired)
            rows[row].runs.append(took)

        per_tenant: list[float] = []
        prints: dict[str, list[tuple[Any, ...]]] = {}
        for n in range(args.repeat):
            reset(settings, by_shard)
            rows["c"].runs.append(floor(settings, by_shard, body))
            check_at_head(settings, by_shard, FLEET.head)

            ppp("a", [*fleet, *argv["a"]], FLEET, wired=True)
            for key in ["a1", *(k for k in argv if k.startswith("k"))]:
                ppp(key, [*fleet, *argv[key]], FLEET, wired=True)
            took, _ = run_command([*fleet, *argv["d"]], env)
            check_at_head(settings, by_shard, FLEET.head, wired=True)
            rows["d"].runs.append(took)
            ppp("a2", [*fleet, *argv["a2"]], FLEET, wired=False)
            ppp("e", [*fleet, *argv["e"]], FLEET, wired=False)

            reset(settings, sample_by_shard, veneer=False)
            naive_cmd = [alembic, "-c", str(ini[NAIVE.ini])]
            per_tenant.append(naive(settings, naive_cmd, env, sample_by_shard))
            check_at_head(settings, sample_by_shard, NAIVE.head)
            rows["b"].runs.append(per_tenant[-1] * len(names))

            for key, chain in (("f", MIXED), ("g", RENDERABLE)):
                ppp(key, [alembic, "-c", str(ini[chain.ini]), *argv[key]], chain, wired=False)
                prints[key] = fingerprint(settings, by_shard)
            if prints["f"] != prints["g"]:
                fail(f"the twins left different data: {prints['f']} != {prints['g']}")

            print(
                f"run {n + 1}: "
                + "  ".join(f"{r.tag} {r.runs[-1]:.2f} s" for r in rows.values())
                + f"  (a)/(c) {rows['a'].runs[-1] / rows['c'].runs[-1]:.2f}"
                + f"  (f)/(g) {rows['f'].runs[-1] / rows['g'].runs[-1]:.2f}",
                file=sys.stderr,
                flush=True,
            )

        print()
        for line in report(rows, args, len(shards), len(sample)):
            print(line)
        print(
            "\nfiles: (a) (a2) (d) (e) benchmarks/fleet; (b) benchmarks/naive_cookbook/env.py "
            "with benchmarks/fleet/versions;\n(f) benchmarks/fleet_mixed/{versions,online}; "
            "(g) benchmarks/fleet_mixed/{versions,renderable}"
        )
        if args.markdown:
            print()
            for line in markdown(rows, args, median(per_tenant)):
                print(line)


if __name__ == "__main__":
    main()
