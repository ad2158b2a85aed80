#!/usr/bin/env python3
"""Fleet migration benchmark: PPP against the naive way and against the floor, in one run.

Builds a throwaway topology (veneer + 3 shards, local servers), registers N tenants in
the catalog (round robin over the shards), and applies five tenant revisions
(benchmarks/fleet: a table; a second table with a foreign key; an index; a new column; a
data migration). Printed side by side, medians over --repeat runs:

  (a) PPP: `alembic upgrade head` (one process, a worker per shard, one connection each)
  (b) naive: one `alembic -x tenant=T upgrade head` process per tenant, measured on a
      sample of --naive-sample tenants and extrapolated to N (stated as such)
  (c) floor: the same SQL rendered once (`alembic upgrade base:head --sql`) and run by
      one psql per shard, all shards at once
  (d) PPP's `alembic upgrade head` again, every tenant already at head
  (e) PPP with `-x render=false`: every tenant through Alembic online (no render-once)

Usage: python benchmarks/migrate_fleet.py [--tenants 1000] [--repeat 3] [--naive-sample 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ppp_env import db  # noqa: E402
from ppp_env.catalog import admin_connection, register_tenant, unregister_tenant  # noqa: E402
from ppp_env.fleet import read_states  # noqa: E402
from ppp_env.identifiers import quote_ident  # noqa: E402
from ppp_env.local import EXAMPLE_SHARDS, LocalServers, find_bindir  # noqa: E402
from ppp_env.provision import provision  # noqa: E402
from ppp_env.settings import load_settings  # noqa: E402

HEAD = "b005"
INI = """\
[alembic]
script_location = {root}/benchmarks/fleet
prepend_sys_path = {root}
"""


def sh(cmd: list[str], env: dict[str, str], **kw: object) -> float:
    started = time.perf_counter()
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    took = time.perf_counter() - started
    if res.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return took


def reset(settings, tenants_by_shard: dict[str, list[str]]) -> None:
    """Drop every benchmark tenant schema, so the next run starts from nothing."""
    for shard, schemas in tenants_by_shard.items():
        with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
            cur = conn.cursor()
            for i in range(0, len(schemas), 200):
                names = ", ".join(quote_ident(s) for s in schemas[i : i + 200])
                cur.execute(f"DROP SCHEMA IF EXISTS {names} CASCADE")
            cur.execute("VACUUM pg_catalog.pg_class")


def check_all_at_head(settings, tenants_by_shard: dict[str, list[str]]) -> None:
    for shard, schemas in tenants_by_shard.items():
        with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
            states = read_states(conn.cursor(), schemas)
        behind = [s for s, st in states.items() if st.heads != (HEAD,)]
        if behind:
            sys.exit(f"{len(behind)} tenants on {shard} are not at {HEAD}: {behind[:5]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--naive-sample", type=int, default=10)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ppp-bench-"))
    work.chmod(0o755)
    servers = LocalServers(work / "servers", find_bindir())
    try:
        values = servers.up(["veneer", *EXAMPLE_SHARDS])
        env = {k: v for k, v in os.environ.items() if not k.startswith("PPP_")}
        env.update(values)
        env["PPP_PROJECT_DIR"] = str(work)
        os.environ.update(env)
        settings = load_settings()
        provision(settings)
        bin_dir = Path(sys.executable).parent
        alembic = str(bin_dir / "alembic")
        sh([alembic, "-n", "veneer", "upgrade", "head"], env)
        ini = work / "bench.ini"
        ini.write_text(INI.format(root=ROOT))

        shards = list(settings.shards)
        names = [f"t{i:05d}" for i in range(args.tenants)]
        by_shard: dict[str, list[str]] = {s: [] for s in shards}
        with admin_connection(settings) as conn:
            for existing in EXAMPLE_SHARDS:  # only the benchmark's tenants take part
                unregister_tenant(conn, existing)
            for i, name in enumerate(names):
                shard = shards[i % len(shards)]
                register_tenant(conn, name, shard)
                by_shard[shard].append(name)

        ppp = [alembic, "-c", str(ini), "-x", "refresh=false", "-x", "output=plain"]
        a, c, d, e = [], [], [], []
        sql_dir = work / "sql"
        for run in range(args.repeat):
            # (c) the floor: render once, one psql per shard, all at once.
            reset(settings, by_shard)
            shutil.rmtree(sql_dir, ignore_errors=True)
            sh([*ppp, "-x", f"sql_dir={sql_dir}", "upgrade", "base:head", "--sql"], env)
            started = time.perf_counter()
            procs = []
            for shard in shards:
                inst = settings.shard(shard)
                penv = dict(env, PGPASSWORD=inst.admin_password)
                procs.append(
                    subprocess.Popen(
                        [
                            "psql",
                            "-X",
                            "-q",
                            "-v",
                            "ON_ERROR_STOP=1",
                            "-h",
                            inst.host,
                            "-p",
                            str(inst.port),
                            "-U",
                            inst.admin_role,
                            "-d",
                            inst.dbname,
                            "-f",
                            str(sql_dir / f"{shard}.sql"),
                        ],
                        env=penv,
                        stdout=subprocess.DEVNULL,
                    )
                )
            if any(p.wait() != 0 for p in procs):
                sys.exit("psql failed")
            c.append(time.perf_counter() - started)
            check_all_at_head(settings, by_shard)
            # (a) PPP from nothing, then (d) PPP with everything at head.
            reset(settings, by_shard)
            a.append(sh([*ppp, "upgrade", "head"], env))
            check_all_at_head(settings, by_shard)
            d.append(sh([*ppp, "upgrade", "head"], env))
            reset(settings, by_shard)
            e.append(sh([*ppp, "-x", "render=false", "upgrade", "head"], env))
            check_all_at_head(settings, by_shard)
            print(
                f"run {run + 1}: (a) {a[-1]:.2f} s  (c) {c[-1]:.2f} s  (d) {d[-1]:.2f} s  "
                f"(e) {e[-1]:.2f} s",
                file=sys.stderr,
            )

        # (b) naive: a process per tenant, on a sample.
        sample = names[: max(1, min(args.naive_sample, len(names)))]
        sample_by_shard = {s: [t for t in by_shard[s] if t in sample] for s in shards}
        reset(settings, sample_by_shard)
        started = time.perf_counter()
        for tenant in sample:
            sh([*ppp, "-x", f"tenant={tenant}", "upgrade", "head"], env)
        per_tenant = (time.perf_counter() - started) / len(sample)
        b = per_tenant * len(names)

        ma, mc, md = statistics.median(a), statistics.median(c), statistics.median(d)
        me = statistics.median(e)
        print()
        print(
            f"fleet migration: {len(names)} tenants over {len(shards)} shards, 5 revisions, "
            f"median of {args.repeat} runs, {os.cpu_count()} cores"
        )
        print(f"{'':4}{'what':72}{'seconds':>10}{'x floor':>9}")
        rows = [
            ("(a)", "PPP: alembic upgrade head", ma),
            (
                "(b)",
                f"naive: a process per tenant (extrapolated from {len(sample)}: "
                f"{per_tenant:.2f} s each)",
                b,
            ),
            ("(c)", "floor: SQL rendered once, one psql per shard, all at once", mc),
            ("(d)", "PPP: alembic upgrade head, everything at head", md),
            ("(e)", "PPP with -x render=false (Alembic online, tenant by tenant)", me),
        ]
        for tag, what, secs in rows:
            print(f"{tag:4}{what:72}{secs:10.2f}{secs / mc:9.2f}")
        print(
            f"\ntargets: (a) <= 1.5 x (c): {'met' if ma <= 1.5 * mc else 'NOT met'} "
            f"({ma / mc:.2f} x); (d) {md:.2f} s"
        )
    finally:
        servers.down(purge=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
