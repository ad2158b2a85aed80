#!/usr/bin/env python3
"""A chain shaped like a real application's: PPP's default run beside fully online.

Builds a throwaway topology (veneer + 3 shards, local servers, on tmpfs when the machine has
one), generates (in its folder) a shared chain (schema ``shared_app``: users that tenant
tables reference by foreign key, applied once per shard) and a tenant chain of 150 revisions
ending with 100 tables per tenant: tables with foreign keys to the shared users and to each
other, columns, indexes, renderable data migrations, and one revision in seven that reads
the database the ways applications do (``Session(bind).query(...)``, ``Inspector.get_columns``,
``Table(..., autoload_with=bind)``), so it cannot be rendered. Registers 60 tenants (round
robin) and, in every run, from the same starting point (no tenant schema on any shard):

  (a) `alembic -x refresh=false upgrade head`, no render cache yet (the first run of a chain)
  (b) the same again from the same starting point, the render cache written by (a) in place
  (c) `alembic -x refresh=false -x render=false upgrade head`: every revision online, tenant
      by tenant (what a run costs without rendering)

The veneer refresh is left out of every row (it costs the same for all three). After every
row every tenant must be at head, its tables all there: else the script stops. Prints each
run, then the medians and the ratios of (c) to (a) and (b) (medians of per-run ratios).
Target: (c) / (b) >= 2.

Usage: python benchmarks/real_chain.py [--tenants 60] [--repeat 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

from common import (
    ROOT,
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
    veneer_catalog_only,
)

from ppp_env import db
from ppp_env.fleet.verdicts import CACHE_NAME
from ppp_env.identifiers import quote_ident
from ppp_env.settings import Settings
from ppp_env.tenant_state import read_states

REVISIONS = 150
TABLES = 100
#: One revision in seven cannot be rendered.
ONLINE_EVERY = 7
HEAD = f"r{REVISIONS:03d}"

HEADER = '''"""{doc}"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.orm import Session

revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
{up}


def downgrade() -> None:
{down_body}
'''

SHARED = '''"""shared_app: the users every tenant table of the shard references"""

import sqlalchemy as sa
from alembic import op

revision = "s001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE SCHEMA shared_app")
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.Text, nullable=False, unique=True),
        schema="shared_app",
    )
    op.execute(
        "INSERT INTO shared_app.users (id, email) "
        "SELECT n, 'user' || n || '@example.com' FROM generate_series(1, 50) n"
    )


def downgrade() -> None:
    op.execute("DROP SCHEMA shared_app CASCADE")
'''

ENV = "from ppp_env.fleet.env import run_migrations\n\nrun_migrations()\n"


def _indent(code: str) -> str:
    return textwrap.indent(textwrap.dedent(code).strip("\n"), "    ")


def _create(n: int) -> tuple[str, str, str]:
    """Table ``t{n:03d}``: owned by a shared user; every fourth references the one before."""
    name = f"t{n:03d}"
    parent = (
        f',\n            sa.Column("parent_id", sa.Integer, sa.ForeignKey("t{n - 1:03d}.id"))'
        if n > 1 and n % 4 == 0
        else ""
    )
    up = f"""
        op.create_table(
            "{name}",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.Text, nullable=False),
            sa.Column("owner_id", sa.Integer, sa.ForeignKey("shared_app.users.id")),
            sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now()){parent},
        )
        op.execute("INSERT INTO {name} (id, name, owner_id) VALUES (1, 'a', 1), (2, 'b', 2)")
    """
    return f"table {name}", up, f'op.drop_table("{name}")'


def _change(i: int, table: str) -> tuple[str, str, str]:
    """A renderable change of an existing table: a column, an index, or a data migration."""
    kind = i % 3
    if kind == 0:
        up = f'op.add_column("{table}", sa.Column("c{i:03d}", sa.Integer, server_default="0"))'
        return f"{table}.c{i:03d}", up, f'op.drop_column("{table}", "c{i:03d}")'
    if kind == 1:
        up = f'op.create_index("ix_{table}_{i:03d}", "{table}", ["name"])'
        return f"index on {table}", up, f'op.drop_index("ix_{table}_{i:03d}", table_name="{table}")'
    up = f"op.execute(\"UPDATE {table} SET name = name || '{i}' WHERE id = 1\")"
    down = f'op.execute("UPDATE {table} SET name = left(name, -{len(str(i))}) WHERE id = 1")'
    return f"data in {table}", up, down


def _online(i: int, table: str) -> tuple[str, str, str]:
    """A revision that reads the database: a Session query, the Inspector, or reflection."""
    kind = (i // ONLINE_EVERY) % 3
    if kind == 0:
        up = f"""
            count = Session(op.get_bind()).query(sa.table("{table}", sa.column("id"))).count()
            update = sa.text("UPDATE {table} SET name = name || :n WHERE id = 2")
            op.execute(update.bindparams(n=str(count)))
        """
        down = f"op.execute(\"UPDATE {table} SET name = 'b' WHERE id = 2\")"
        return f"Session.query on {table}", up, down
    if kind == 1:
        up = f"""
            columns = {{c["name"] for c in sa.inspect(op.get_bind()).get_columns("{table}")}}
            if "note" not in columns:
                op.add_column("{table}", sa.Column("note", sa.Text))
        """
        return f"Inspector on {table}", up, f'op.drop_column("{table}", "note")'
    up = f"""
        table = sa.Table("{table}", sa.MetaData(), autoload_with=op.get_bind())
        rows = [{{"id": {1000 * i} + n, "name": f"r{{n}}", "owner_id": 3}} for n in range(3)]
        op.bulk_insert(table, rows)
    """
    down = f'op.execute("DELETE FROM {table} WHERE id BETWEEN {1000 * i} AND {1000 * i + 2}")'
    return f"reflected {table}", up, down


def write_chain(folder: Path) -> tuple[Path, Path]:
    """The tenant chain (``tenant/``) and the shared one (``shared/``) in ``folder``."""
    tenant, shared = folder / "tenant", folder / "shared"
    for where in (tenant, shared):
        (where / "versions").mkdir(parents=True)
        (where / "env.py").write_text(
            ENV.replace("fleet.env", "shared.env" if where == shared else "fleet.env")
        )
    (shared / "versions" / "s001.py").write_text(SHARED)
    tables = 0
    for i in range(1, REVISIONS + 1):
        last = f"t{tables:03d}" if tables < TABLES else f"t{(i * 11) % TABLES + 1:03d}"
        if i % ONLINE_EVERY == 0 and tables:
            doc, up, down = _online(i, last)
        elif tables < TABLES:
            tables += 1
            doc, up, down = _create(tables)
        else:
            doc, up, down = _change(i, f"t{(i * 7) % TABLES + 1:03d}")
        rev, before = f"r{i:03d}", (f"r{i - 1:03d}" if i > 1 else None)
        (tenant / "versions" / f"{rev}.py").write_text(
            HEADER.format(doc=doc, rev=rev, down=before, up=_indent(up), down_body=_indent(down))
        )
    if tables != TABLES:
        fail(f"the generated chain has {tables} tables, not {TABLES}")
    return tenant, shared


def write_ini(work: Path, tenant: Path, shared: Path, veneer: Path) -> Path:
    def section(name: str, location: Path) -> str:
        return (
            f"[{name}]\nscript_location = {location}\nprepend_sys_path = {ROOT}\n"
            "path_separator = os\n"
        )

    ini = work / "real_chain.ini"
    ini.write_text(
        "\n".join(
            [section("alembic", tenant), section("shared", shared), section("veneer", veneer)]
        )
    )
    return ini


def reset(settings: Settings, by_shard: dict[str, list[str]]) -> None:
    """No tenant schema on any shard (the shared chain stays); the catalogs vacuumed."""
    for shard, schemas in by_shard.items():
        with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
            cur = conn.cursor()
            for schema in schemas:  # one at a time: 100 tables' locks each
                cur.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
            cur.execute(
                "VACUUM pg_catalog.pg_class, pg_catalog.pg_attribute, pg_catalog.pg_type, "
                "pg_catalog.pg_depend, pg_catalog.pg_constraint, pg_catalog.pg_index"
            )


def check(settings: Settings, by_shard: dict[str, list[str]]) -> None:
    """Every tenant at head with its 100 tables: else stop."""
    for shard, schemas in by_shard.items():
        with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
            cur = conn.cursor()
            states = read_states(cur, schemas)
            cur.execute(
                "SELECT n.nspname, count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = "
                "c.relnamespace WHERE n.nspname = ANY(%s) AND c.relkind = 'r' "
                "AND c.relname <> 'alembic_version' GROUP BY 1",
                (schemas,),
            )
            tables = dict(cur.fetchall())
        wrong = [s for s in schemas if states[s].heads != (HEAD,) or tables.get(s) != TABLES]
        if wrong:
            fail(
                f"{len(wrong)} tenants on {shard} are not at {HEAD} with {TABLES} tables: "
                f"{wrong[:5]}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="where the servers live")
    args = parser.parse_args()
    if args.tenants < 3 or args.repeat < 1:
        parser.error("--tenants must be at least 3, --repeat at least 1")

    with local_topology(args.workdir) as top:
        settings, env = top.settings, top.environ()
        tenant, shared = write_chain(top.work / "chain")
        ini = write_ini(top.work, tenant, shared, veneer_catalog_only(top.work / "veneer"))
        alembic = [str(Path(sys.executable).parent / "alembic"), "-c", str(ini)]
        run_command([*alembic, "-n", "veneer", "upgrade", "head"], env)
        run_command([*alembic, "-n", "shared", "upgrade", "head"], env)
        names = [f"app{i:03d}" for i in range(args.tenants)]
        placed = round_robin(names, top.shards)
        by_shard = group_by_shard(placed, top.shards)
        top.replace_tenants(placed)
        online = sum(1 for i in range(1, REVISIONS + 1) if i % ONLINE_EVERY == 0)
        print(
            f"chain: {REVISIONS} tenant revisions ({online} read the database: Session.query, "
            f"Inspector, reflection), {TABLES} tables per tenant, foreign keys to a shared "
            f"schema; {args.tenants} tenants on {len(top.shards)} shards; {os.cpu_count()} cores "
            "(shared with other work: figures are noisy, compare within a run)",
            flush=True,
        )
        rows = {
            "a": ("(a) default, first run (no render cache)", ["-x", "refresh=false"]),
            "b": ("(b) default, render cache from (a)", ["-x", "refresh=false"]),
            "c": (
                "(c) fully online (-x render=false)",
                ["-x", "refresh=false", "-x", "render=false"],
            ),
        }
        runs: dict[str, list[float]] = {k: [] for k in rows}
        cache = tenant / CACHE_NAME
        for n in range(args.repeat):
            for key, (_what, extra) in rows.items():
                if key == "a":
                    cache.unlink(missing_ok=True)
                reset(settings, by_shard)
                took, _ = run_command(
                    [*alembic, *extra, "-x", "output=quiet", "upgrade", "head"], env
                )
                check(settings, by_shard)
                runs[key].append(took)
            print(
                f"run {n + 1}: " + ", ".join(f"{k} {runs[k][-1]:.2f} s" for k in rows), flush=True
            )
        print()
        for key, (what, extra) in rows.items():
            ratio = (
                "" if key == "c" else times(median_ratio(runs["c"], runs[key]), "faster than (c)")
            )
            print(figure(f"{what:45}", f"{median(runs[key]):.2f} s", ratio, value_width=9))
            print(f"    $ alembic {' '.join(extra)} upgrade head   runs: {every(runs[key])}")
        best = median_ratio(runs["c"], runs["b"])
        print(f"\ntarget (c) / (b) >= 2: {met(best >= 2)} ({times(best)})")


if __name__ == "__main__":
    main()
