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
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alembic.script import ScriptDirectory
from sqlalchemy import text

from ppp_env import db
from ppp_env.identifiers import quote_ident
from ppp_env.servers.local import EXAMPLE_SHARDS, LocalServers, find_bindir
from ppp_env.servers.provision import provision
from ppp_env.settings import Settings, load_settings
from ppp_env.veneer.catalog import admin_connection
from ppp_env.veneer.env import plan_upgrade_to_heads
from ppp_env.veneer.onboarding import structural_head, write_tenant_revision

INI = """\
[alembic]
script_location = {tenant_chain}
prepend_sys_path = {root}

[veneer]
script_location = {veneer}
prepend_sys_path = {root}
"""

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


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    res = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - started
    if res.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return took


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
        sys.exit(f"command failed: {' '.join(cmd)}\n{''.join(out)[-3000:]}")
    ends = [t for _, t in marks[1:]] + [started + took]
    return took, {name: end - t for (name, t), end in zip(marks, ends, strict=True)}


def scripts_with_catalog_only(dest: Path) -> Path:
    shutil.copytree(ROOT / "veneer_migrations", dest, ignore=shutil.ignore_patterns("__pycache__"))
    for path in (dest / "versions").glob("t*_*.py"):
        path.unlink()  # the example's tenants: only the benchmark's take part
    return dest


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


def med(runs: list[float]) -> float:
    return statistics.median(runs)


def fmt(runs: list[float]) -> str:
    return f"{med(runs):.2f} s (runs: {', '.join(f'{r:.2f}' for r in runs)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chain", choices=("tiny", "fleet"), default="tiny")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ppp-bench-onboarding-"))
    work.chmod(0o755)
    servers = LocalServers(work / "servers", find_bindir())
    try:
        values = servers.up(["veneer", *EXAMPLE_SHARDS])
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PPP_", "ALEMBIC_"))}
        env.update(values)
        env["PPP_PROJECT_DIR"] = str(work)
        os.environ.update(env)
        settings = load_settings()
        provision(settings)
        bin_dir = Path(sys.executable).parent
        ppp = str(bin_dir / "ppp")

        if args.chain == "tiny":
            chain = work / "tenant_chain"
            (chain / "versions").mkdir(parents=True)
            shutil.copy(ROOT / "benchmarks" / "fleet" / "env.py", chain / "env.py")
            shutil.copy(ROOT / "benchmarks" / "fleet" / "script.py.mako", chain)
            (chain / "versions" / "o001_notes.py").write_text(TINY)
        else:
            chain = ROOT / "benchmarks" / "fleet"
        veneer_dir = scripts_with_catalog_only(work / "veneer_migrations")
        empty_dir = scripts_with_catalog_only(work / "veneer_empty")
        ini = work / "alembic.ini"
        ini.write_text(INI.format(tenant_chain=chain, veneer=veneer_dir, root=ROOT))
        empty_ini = work / "empty.ini"
        empty_ini.write_text(INI.format(tenant_chain=chain, veneer=empty_dir, root=ROOT))
        env["ALEMBIC_CONFIG"] = str(ini)
        run([ppp, "veneer", "upgrade"], env, work)  # the catalog, servers, user mappings

        script = ScriptDirectory(str(veneer_dir))
        base = structural_head(script)
        shards = list(settings.shards)
        names = [f"bo_{i:05d}" for i in range(args.tenants)]
        by_shard: dict[str, list[str]] = {s: [] for s in shards}
        started = time.perf_counter()
        for i, name in enumerate(names):
            shard = shards[i % len(shards)]
            write_tenant_revision(script, name, shard, base)
            by_shard[shard].append(name)
        took = time.perf_counter() - started
        print(f"wrote {len(names)} onboarding revisions in {took:.1f} s", flush=True)

        # (a) ppp tenant add with N existing, against none existing and the bare start.
        start, add_n, add_0 = [], [], []
        for r in range(max(args.repeat, 5)):
            start.append(run([ppp, "--version"], env, work))
            for runs, cfg, folder in ((add_n, ini, veneer_dir), (add_0, empty_ini, empty_dir)):
                took = run(
                    [ppp, "tenant", "add", f"bo_new_{r}", "--shard", shards[0]],
                    {**env, "ALEMBIC_CONFIG": str(cfg)},
                    work,
                )
                runs.append(took)
                for path in (folder / "versions").glob(f"t*_bo_new_{r}.py"):
                    path.unlink()

        # (d) planning `upgrade heads` from the catalog, in-process.
        started = time.perf_counter()
        loaded = ScriptDirectory(str(veneer_dir))
        heads = loaded.get_heads()
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        ours = plan_upgrade_to_heads(loaded, (base,))
        ours_s = time.perf_counter() - started
        started = time.perf_counter()
        theirs = loaded._upgrade_revs("heads", (base,))
        theirs_s = time.perf_counter() - started
        assert len(ours) == len(theirs) == args.tenants, (len(ours), len(theirs))

        # (b) ppp veneer upgrade with N pending; (c) ppp migrate end to end.
        print(f"(a) ppp tenant add: {fmt(add_n)}; with none existing {fmt(add_0)}", flush=True)
        print(f"(d) plan: PPP {ours_s:.3f} s, Alembic {theirs_s:.2f} s, load {load_s:.2f} s")
        upgrade, migrate = [], []
        steps: list[dict[str, float]] = []
        for _ in range(args.repeat):
            reset(settings, names, by_shard, base)
            upgrade.append(run([ppp, "veneer", "upgrade"], env, work))
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
            sys.exit(f"after ppp migrate only {active} of {args.tenants} tenants are wired")

        n = f"{args.tenants:,}"
        print()
        print(f"Onboarding, N = {n} tenants on {len(shards)} shards, tenant chain: {args.chain}")
        print(f"medians of {args.repeat} runs ((a): {max(args.repeat, 5)} runs)")
        print()
        print("| | what | measured | target / baseline (same run) |")
        print("|---|---|---|---|")
        print(
            f"| (a) | `ppp tenant add` with {n} revisions existing | {fmt(add_n)} | "
            f"target < 0.5 s; with none existing {med(add_0):.2f} s; "
            f"`ppp --version` {med(start):.2f} s |"
        )
        print(
            f"| (b) | `ppp veneer upgrade`, {n} onboarding revisions pending | {fmt(upgrade)} | "
            f"{med(upgrade) / args.tenants * 1000:.2f} ms per revision "
            "(previous design: about 13 ms, not measured here) |"
        )
        print(
            f"| (c) | `ppp migrate` end to end, {n} pending: veneer, tenant chain, refresh | "
            f"{fmt(migrate)} | target < 30 s; by step (median): "
            + ", ".join(
                f"{k} {statistics.median(p.get(k, 0.0) for p in steps):.1f} s" for k in steps[0]
            )
            + " |"
        )
        print(
            f"| (d) | planning `upgrade heads` from the catalog ({len(heads):,} heads) | "
            f"PPP {ours_s:.3f} s | Alembic's plan {theirs_s:.2f} s; loading the "
            f"script directory {load_s:.2f} s |"
        )
    finally:
        servers.down(purge=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
