#!/usr/bin/env python3
"""Onboarding benchmark: `ppp tenant add` and applying N onboarding revisions, in one run.

Builds a throwaway topology (veneer + 3 shards, local servers), copies veneer_migrations
into a temporary folder (the repository's is never touched) with only the catalog
revision, writes N onboarding revisions there the way `ppp tenant add` does
(ppp_env.veneer.onboarding.write_tenant_revision, round robin over the shards), and times:

  (a) `ppp tenant add` with N revisions existing           target < 0.5 s
      baseline: the same with no tenant revision, and `ppp --version` (process start)
  (b) `ppp veneer upgrade` applying the N pending revisions (registered in bulk; their
      wiring finds no schema yet)
  (c) `ppp migrate` end to end with the N revisions pending: veneer, the tenant chain on
      every new tenant (schemas created), the veneer refresh        target < 30 s
  (d) Alembic's own plan for `upgrade heads` against PPP's linear plan, in-process on the
      same script directory, and the time to load it

The tenant chain is a one-table revision written into the temporary folder (--chain
fleet uses benchmarks/fleet, five revisions). Medians of --repeat runs; every run printed.

Usage: python benchmarks/onboarding.py [--tenants 10000] [--repeat 3] [--chain tiny|fleet]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alembic.script import ScriptDirectory
from common import (
    BENCH,
    Stopwatch,
    every,
    fail,
    local_topology,
    median,
    run_command,
    veneer_catalog_only,
    write_ini,
)
from sqlalchemy import text

from ppp_env import db
from ppp_env.identifiers import quote_ident
from ppp_env.settings import Settings
from ppp_env.veneer.catalog import admin_connection
from ppp_env.veneer.env import plan_upgrade_to_heads
from ppp_env.veneer.onboarding import structural_head, write_tenant_revision

TINY = '''\
"""One table per tenant."""
import sqlalchemy as sa
from alembic import op

revision = "o001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("notes", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("body", sa.Text, nullable=False))


def downgrade() -> None:
    op.drop_table("notes")
'''


def run_steps(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, dict[str, float]]:
    """Run ``ppp migrate``; its total time and the seconds of each step (`N/M name` lines)."""
    started = time.perf_counter()
    marks: list[tuple[str, float]] = []
    out: list[str] = []
    with subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if re.match(r"\d/\d \w", line):
                marks.append((line.split(":")[0].strip(), time.perf_counter()))
    took = time.perf_counter() - started
    if proc.returncode != 0:
        fail(f"command failed: {' '.join(cmd)}\n{''.join(out)[-3000:]}")
    ends = [t for _, t in marks[1:]] + [started + took]
    return took, {name: end - t for (name, t), end in zip(marks, ends, strict=True)}


def reset(settings: Settings, names: list[str], by_shard: dict[str, list[str]], base: str) -> None:
    """The veneer back at the catalog revision with no tenant; no tenant schema on a shard."""
    with admin_connection(settings, begin=False) as conn:
        wired = list(
            conn.execute(
                text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :p"), {"p": "bo\\_%"}
            ).scalars()
        )
        for i in range(0, len(wired), 50):
            names_sql = ", ".join(quote_ident(s) for s in wired[i : i + 50])
            conn.exec_driver_sql(f"DROP SCHEMA {names_sql} CASCADE")
            conn.commit()
        conn.exec_driver_sql("DELETE FROM ppp.tenants")
        conn.exec_driver_sql("DELETE FROM ppp.alembic_version")
        conn.execute(text("INSERT INTO ppp.alembic_version (version_num) VALUES (:v)"), {"v": base})
        conn.commit()
    for shard, schemas in by_shard.items():
        with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
            cur = conn.cursor()
            for i in range(0, len(schemas), 200):
                cur.execute(
                    "DROP SCHEMA IF EXISTS "
                    + ", ".join(quote_ident(s) for s in schemas[i : i + 200])
                    + " CASCADE"
                )
            cur.execute("VACUUM pg_catalog.pg_class, pg_catalog.pg_attribute")


def fmt(runs: list[float]) -> str:
    return f"{median(runs):.2f} s (runs: {every(runs)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chain", choices=("tiny", "fleet"), default="tiny")
    args = parser.parse_args()

    # The temp folder, not tmpfs: where this benchmark's figures were measured.
    with local_topology(Path(tempfile.gettempdir()), prefix="ppp-bench-onboarding-") as top:
        settings, work = top.settings, top.work
        bin_dir = Path(sys.executable).parent
        ppp = str(bin_dir / "ppp")

        if args.chain == "tiny":
            chain = work / "tenant_chain"
            (chain / "versions").mkdir(parents=True)
            shutil.copy(BENCH / "fleet" / "env.py", chain / "env.py")
            shutil.copy(BENCH / "fleet" / "script.py.mako", chain)
            (chain / "versions" / "o001_notes.py").write_text(TINY)
        else:
            chain = BENCH / "fleet"
        veneer_dir = veneer_catalog_only(work / "veneer_migrations")
        empty_dir = veneer_catalog_only(work / "veneer_empty")
        ini = write_ini(work / "alembic.ini", chain, veneer_dir)
        empty_ini = write_ini(work / "empty.ini", chain, empty_dir)
        env = top.environ(ALEMBIC_CONFIG=str(ini))
        run_command([ppp, "veneer", "upgrade"], env, work)  # the catalog, servers, user mappings

        script = ScriptDirectory(str(veneer_dir))
        base = structural_head(script)
        shards = list(settings.shards)
        names = [f"bo_{i:05d}" for i in range(args.tenants)]
        by_shard: dict[str, list[str]] = {s: [] for s in shards}
        with Stopwatch() as sw:
            for i, name in enumerate(names):
                shard = shards[i % len(shards)]
                write_tenant_revision(script, name, shard, base)
                by_shard[shard].append(name)
        print(f"wrote {len(names)} onboarding revisions in {sw.seconds:.1f} s", flush=True)

        # (a) ppp tenant add with N existing, against none existing and the bare start.
        start, add_n, add_0 = [], [], []
        for r in range(max(args.repeat, 5)):
            start.append(run_command([ppp, "--version"], env, work)[0])
            for runs, cfg, folder in ((add_n, ini, veneer_dir), (add_0, empty_ini, empty_dir)):
                took, _ = run_command(
                    [ppp, "tenant", "add", f"bo_new_{r}", "--shard", shards[0]],
                    {**env, "ALEMBIC_CONFIG": str(cfg)},
                    work,
                )
                runs.append(took)
                for path in (folder / "versions").glob(f"t*_bo_new_{r}.py"):
                    path.unlink()

        # (d) planning `upgrade heads` from the catalog, in-process.
        with Stopwatch() as load:
            loaded = ScriptDirectory(str(veneer_dir))
            heads = loaded.get_heads()
        with Stopwatch() as plan_ours:
            ours = plan_upgrade_to_heads(loaded, (base,))
        with Stopwatch() as plan_theirs:
            theirs = loaded._upgrade_revs("heads", (base,))
        load_s, ours_s, theirs_s = load.seconds, plan_ours.seconds, plan_theirs.seconds
        assert len(ours) == len(theirs) == args.tenants, (len(ours), len(theirs))

        # (b) ppp veneer upgrade with N pending; (c) ppp migrate end to end.
        print(f"(a) ppp tenant add: {fmt(add_n)}; with none existing {fmt(add_0)}", flush=True)
        print(f"(d) plan: PPP {ours_s:.3f} s, Alembic {theirs_s:.2f} s, load {load_s:.2f} s")
        upgrade, migrate = [], []
        steps: list[dict[str, float]] = []
        for _ in range(args.repeat):
            reset(settings, names, by_shard, base)
            upgrade.append(run_command([ppp, "veneer", "upgrade"], env, work)[0])
            print(f"(b) ppp veneer upgrade: {upgrade[-1]:.2f} s", flush=True)
            reset(settings, names, by_shard, base)
            took, parts = run_steps([ppp, "migrate", "-c", str(ini)], env, work)
            migrate.append(took)
            steps.append(parts)
            shown = ", ".join(f"{k} {v:.1f} s" for k, v in parts.items())
            print(f"(c) ppp migrate: {took:.2f} s ({shown})", flush=True)
        with admin_connection(settings) as conn:
            active = conn.exec_driver_sql(
                "SELECT count(*) FROM ppp.tenants WHERE state = 'active' AND wired_revision "
                "IS NOT NULL"
            ).scalar()
        if active != args.tenants:
            fail(f"after ppp migrate only {active} of {args.tenants} tenants are wired")

        n = f"{args.tenants:,}"
        print()
        print(f"Onboarding, N = {n} tenants on {len(shards)} shards, tenant chain: {args.chain}")
        print(f"medians of {args.repeat} runs ((a): {max(args.repeat, 5)} runs)")
        print()
        print("| | what | measured | target / baseline (same run) |")
        print("|---|---|---|---|")
        print(
            f"| (a) | `ppp tenant add` with {n} revisions existing | {fmt(add_n)} | "
            f"target < 0.5 s; with none existing {median(add_0):.2f} s; "
            f"`ppp --version` {median(start):.2f} s |"
        )
        print(
            f"| (b) | `ppp veneer upgrade`, {n} onboarding revisions pending | {fmt(upgrade)} | "
            f"{median(upgrade) / args.tenants * 1000:.2f} ms per revision "
            "(previous design: about 13 ms, not measured here) |"
        )
        print(
            f"| (c) | `ppp migrate` end to end, {n} pending: veneer, tenant chain, refresh | "
            f"{fmt(migrate)} | target < 30 s; by step (median): "
            + ", ".join(f"{k} {median(p.get(k, 0.0) for p in steps):.1f} s" for k in steps[0])
            + " |"
        )
        print(
            f"| (d) | planning `upgrade heads` from the catalog ({len(heads):,} heads) | "
            f"PPP {ours_s:.3f} s | Alembic's plan {theirs_s:.2f} s; loading the "
            f"script directory {load_s:.2f} s |"
        )


if __name__ == "__main__":
    main()
