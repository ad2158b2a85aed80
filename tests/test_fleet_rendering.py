"""The renderer reports data per revision: renderable (its SQL), or why not (which call reached
the database, in which file and line); no decision reads an error's message or a revision's
source. The create fast path takes the rendered statements from it directly."""

from __future__ import annotations

import io
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from ppp_env.fleet.commands import render_path
from ppp_env.fleet.hooks import Rendered, RevisionRender
from ppp_env.lifecycle import create_tenant, remove_tenant
from ppp_env.lifecycle.create import replayable_sql
from ppp_env.veneer import catalog
from tests.conftest import FLEET_SCRIPTS, ROOT, fleet_config, only, opts, shard_sql, states

FIRST = '''"""a plain table"""

import sqlalchemy as sa
from alembic import op

revision = "r001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("items", sa.Column("name", sa.Text))


def downgrade() -> None:
    op.drop_table("items")
'''

SECOND = '''"""the revision under test"""

import sqlalchemy as sa
from alembic import op

from ppp_env.fleet import current_tenant

revision = "r002"
down_revision = "r001"
branch_labels = None
depends_on = None
{flag}

def upgrade() -> None:
    bind = op.get_bind()
{body}


def downgrade() -> None:
    pass
'''

#: (body of r002's upgrade, the line that stops rendering (its text), expected kind, call).
CASES = {
    "reads": (
        'n = bind.execute(sa.text("SELECT count(*) FROM items")).scalar()',
        "reads",
        "Connection.execute(SELECT count(*) FROM items).scalar()",
    ),
    "select_fetchall": (
        'items = sa.table("items", sa.column("name"))\n'
        "rows = bind.execute(sa.select(items)).fetchall()",
        "reads",
        "Connection.execute(SELECT items.name FROM items).fetchall()",
    ),
    "inspects": (
        "names = sa.inspect(bind).get_table_names()",
        "reads",
        "Inspector.get_table_names()",
    ),
    "get_columns": (
        'columns = sa.inspect(bind).get_columns("items")',
        "reads",
        "Inspector.get_columns()",
    ),
    "reflects": (
        'items = sa.Table("items", sa.MetaData(), autoload_with=bind)',
        "reads",
        "Table() -> Inspector.inspection_context()",
    ),
    "session_query": (
        "from sqlalchemy.orm import Session\n"
        'items = sa.table("items", sa.column("name"))\n'
        "rows = Session(bind).query(items).all()",
        "reads",
        "Query.all() -> Connection.connect()",
    ),
    "session_execute": (
        "from sqlalchemy.orm import Session\n"
        'n = Session(bind).execute(sa.text("SELECT 1")).scalar()',
        "reads",
        "Session.execute() -> Connection.connect()",
    ),
    "driver_sql": (
        'bind.exec_driver_sql("UPDATE items SET name = name")',
        "reads",
        "Connection.exec_driver_sql()",
    ),
    "tenant": ("op.execute(f\"COMMENT ON TABLE items IS '{current_tenant()}'\")", "tenant", None),
    "error": ('raise ValueError("boom")', "error", "ValueError: boom"),
}


def chain(tmp_path: Path, body: str, flag: str = "") -> Config:
    scripts = tmp_path / "scripts"
    (scripts / "versions").mkdir(parents=True)
    shutil.copy(FLEET_SCRIPTS / "env.py", scripts / "env.py")
    (scripts / "versions" / "r001.py").write_text(FIRST)
    lines = "\n".join(f"    {line}" for line in body.splitlines())
    (scripts / "versions" / "r002.py").write_text(SECOND.format(body=lines, flag=flag))
    cfg = Config(stdout=io.StringIO(), output_buffer=io.StringIO())
    cfg.set_main_option("script_location", str(scripts))
    cfg.set_main_option("prepend_sys_path", str(ROOT))
    cfg.set_main_option("path_separator", "os")
    return cfg


def line_of(cfg: Config, needle: str) -> int:
    path = Path(cfg.get_main_option("script_location") or "") / "versions" / "r002.py"
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def second(rendered: Rendered) -> RevisionRender:
    first, stopped = rendered.revisions
    assert first.label == "revision r001 (a plain table)" and first.replayable
    assert "CREATE TABLE items" in first.sql and first.heads_after == ("r001",)
    return stopped


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_revision_that_cannot_be_rendered_says_why_where(tmp_path: Path, case: str) -> None:
    body, kind, call = CASES[case]
    cfg = chain(tmp_path, body)
    stopped = second(render_path(cfg))
    assert stopped.label == "revision r002 (the revision under test)"
    # Stepped over: no SQL, but the heads it leaves are known (rendering goes on after it).
    assert stopped.blocker is not None and stopped.heads_after == ("r002",)
    assert stopped.sql == ""
    assert (stopped.blocker.kind, stopped.blocker.call) == (kind, call)
    where = stopped.blocker.where
    assert where is not None and Path(where.file).name == "r002.py"
    assert where.line == line_of(cfg, body.splitlines()[-1])
    assert str(where) in stopped.blocker.reason()
    assert replayable_sql(render_path(cfg)) is None  # create takes the fleet runner


def test_the_default_schema_needs_the_tenant(tmp_path: Path) -> None:
    cfg = chain(
        tmp_path, 'op.execute(f"SET LOCAL search_path TO {bind.dialect.default_schema_name}")'
    )
    stopped = second(render_path(cfg))
    assert stopped.blocker is not None and stopped.blocker.kind == "default_schema"
    assert stopped.blocker.per_tenant
    assert stopped.blocker.reason() == "it uses the default schema (the tenant)"


def test_flagged_online(tmp_path: Path) -> None:
    stopped = second(render_path(chain(tmp_path, "pass", flag="ppp_online = True\n")))
    assert stopped.blocker is not None and stopped.blocker.kind == "flagged"
    assert stopped.sql == ""


def test_autocommit_block_is_rendered_but_not_replayable(tmp_path: Path) -> None:
    body = (
        "with op.get_context().autocommit_block():\n"
        '    op.create_index("ix_name", "items", ["name"], postgresql_concurrently=True)'
    )
    cfg = chain(tmp_path, body)
    rendered = render_path(cfg)
    stopped = second(rendered)
    assert stopped.blocker is None and not stopped.replayable
    assert "CREATE INDEX CONCURRENTLY ix_name ON items (name)" in stopped.sql
    assert stopped.outside_transaction is not None
    assert stopped.outside_transaction.line == line_of(cfg, "autocommit_block")
    assert len(rendered.replayable()) == 1
    assert replayable_sql(rendered) is None  # one transaction cannot hold it


def test_a_tenant_named_like_a_table_keeps_the_rendered_chain(tmp_path: Path) -> None:
    cfg = chain(tmp_path, 'op.create_table("orders", sa.Column("id", sa.Integer))')
    rendered = render_path(cfg)
    assert all(r.replayable for r in rendered.revisions) and len(rendered.revisions) == 2
    sql = replayable_sql(rendered)
    assert sql is not None and "CREATE TABLE orders" in sql
    assert "alembic_version" in sql and "search_path" not in sql  # schema-neutral


# -- the create fast path on the project's chain ---------------------------------------------------
@pytest.fixture
def authors(veneer_head) -> Iterator[str]:
    """A runtime tenant named like the chain's table, removed afterwards."""
    settings = veneer_head.settings
    name = "authors"
    yield name
    with catalog.admin_connection(settings) as conn:
        shard = conn.execute(
            text("SELECT shard FROM ppp.tenants WHERE schema = :s"), {"s": name}
        ).scalar()
    if shard is not None:
        remove_tenant(settings, name, drop_data=True)
    for other in settings.shards:
        shard_sql(settings, other, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def test_create_replays_the_chain_for_a_tenant_named_in_it(veneer_head, authors: str) -> None:
    """The project's chain creates table `authors`: a tenant of that name still gets the
    rendered chain (the old fast path dropped it when the name appeared in the SQL)."""
    ini = ROOT / "alembic.ini"
    rendered = render_path(Config(str(ini), ini_section="alembic", stdout=io.StringIO()))
    assert "CREATE TABLE authors" in (replayable_sql(rendered) or "")
    result = create_tenant(veneer_head.settings, authors, None, ini)
    assert result.replayed and result.revision == "0002"
    again = f"pr_{uuid.uuid4().hex[:8]}"
    try:
        assert create_tenant(veneer_head.settings, again, None, ini).replayed
    finally:
        remove_tenant(veneer_head.settings, again, drop_data=True)


# -- autocommit_block entered online, inside the tenant's transaction ------------------------------
READ_THEN_INDEX = '''"""read, then an index built concurrently"""

import sqlalchemy as sa
from alembic import op

revision = "f004"
down_revision = "f003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.get_bind().execute(sa.text("SELECT count(*) FROM items")).scalar()
    with op.get_context().autocommit_block():
        op.create_index("ix_items_name2", "items", ["name"], postgresql_concurrently=True)


def downgrade() -> None:
    op.drop_index("ix_items_name2", table_name="items")
'''


@pytest.mark.parametrize("render", [True, False])
def test_autocommit_found_online_rolls_back_and_runs_alone(fleet, settings, tmp_path, render):
    """f004 cannot be rendered (it reads), so PPP learns only when it runs, inside the
    tenant's transaction, that it enters autocommit_block: that tenant rolls back and every
    tenant then runs f004 alone."""
    scripts = tmp_path / "scripts"
    shutil.copytree(FLEET_SCRIPTS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "f004_read_index.py").write_text(READ_THEN_INDEX)
    cfg = fleet_config(scripts, **opts(**only(fleet), render=render))
    command.upgrade(cfg, "head")
    result = cfg.attributes["ppp.result"]
    assert result.count("migrated") == len(fleet), result.failure_message()
    reason = result.online["revision f004 (read, then an index built concurrently)"]
    assert reason.startswith(
        "it runs outside a transaction (autocommit_block, f004_read_index.py line"
    )
    for t, shard in fleet.items():
        assert states(settings, shard, [t])[t].revision == "f004"
        valid = shard_sql(
            settings,
            shard,
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = 'ix_items_name2' AND c.relnamespace = to_regnamespace(%s)",
            (t,),
        )
        assert valid == [(True,)]


# -- a worker's plan: segments cut from the whole path rendered once -----------------------------
def test_the_plan_renders_once_and_runs_consecutive_online_revisions_together() -> None:
    """r1 r2 render, b3 b4 cannot (one online segment, the heads after b4 known), r5 renders,
    b6 cannot: four segments from one rendering of the path."""
    from ppp_env.fleet.hooks import AlembicHooks, Blocker
    from ppp_env.fleet.segments import PathPlan

    steps = ["r1", "r2", "b3", "b4", "r5", "b6"]
    renders: list[tuple[str, ...]] = []

    def render(path, heads) -> Rendered:
        renders.append(tuple(path))
        return Rendered(
            [
                RevisionRender(s, f"-- {s}\n", (s,), None)
                if s[0] == "r"
                else RevisionRender(s, "", (s,), Blocker("reads", "Inspector.get_columns()"))
                for s in path
            ]
        )

    def never(*_args) -> None:
        raise AssertionError("the plan runs nothing")

    plan = PathPlan(AlembicHooks("upgrade", lambda heads: list(steps), render, never, str))
    cut, pos = [], 0
    while pos < len(steps):
        seg = plan.segment((), pos)
        cut.append((seg.sql or seg.online, seg.heads_after))
        pos += seg.size
    assert cut == [
        ("-- r1\n-- r2\n", ("r2",)),
        (("b3", "b4"), ("b4",)),
        ("-- r5\n", ("r5",)),
        (("b6",), ("b6",)),
    ]
    assert renders == [tuple(steps)]  # the path rendered once, every revision of it
    assert plan.online == dict.fromkeys(
        ["b3", "b4", "b6"], "it reads from the database (Inspector.get_columns())"
    )
