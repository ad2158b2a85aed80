"""Contract tests of ppp_env.alembic_adapter: one (or more) per touchpoint T1-T11, each failing
the day Alembic or SQLAlchemy changes what PPP relies on. Run on every Alembic minor from the
lowest declared to the newest published (ci/alembic_matrix.sh).

Most need no database: an EnvironmentContext and a MigrationContext can be built directly
(public constructors) and rendered offline. T7 and T8 need a live PostgreSQL connection."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic import op as alembic_op
from alembic.config import CommandLine, Config
from alembic.operations import Operations
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import ScriptDirectory
from sqlalchemy.exc import NoInspectionAvailable
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from ppp_env import alembic_adapter as adapter
from ppp_env import db
from tests.conftest import ROOT, shard_sql

#: An env.py that hands Alembic's context to a probe the test put in the Config.
PROBE_ENV = """
from alembic import context

context.config.attributes["probe"](context)
"""

REVISION = '''"""{doc}"""

revision = {rev!r}
down_revision = {down!r}
branch_labels = None
depends_on = {deps!r}


def upgrade():
    from alembic import op

    op.execute("SELECT 'up {rev}'")


def downgrade():
    from alembic import op

    op.execute("SELECT 'down {rev}'")
'''

#: a1 <- b1, a1 <- c1, a1 <- d1 (which depends on c1): three heads.
REVISIONS = {"a1": (None, None), "b1": ("a1", None), "c1": ("a1", None), "d1": ("a1", "c1")}


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    location = tmp_path / "scripts"
    (location / "versions").mkdir(parents=True)
    (location / "env.py").write_text(PROBE_ENV)
    for rev, (down, deps) in REVISIONS.items():
        (location / "versions" / f"{rev}.py").write_text(
            REVISION.format(rev=rev, down=down, deps=deps, doc=f"the {rev} revision\n\nmore")
        )
    return location


def config(location: Path, **attributes: Any) -> Config:
    cfg = Config(stdout=io.StringIO(), output_buffer=io.StringIO())
    cfg.set_main_option("script_location", str(location))
    cfg.set_main_option("prepend_sys_path", str(ROOT))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes.update(attributes)
    return cfg


def probe(location: Path, run: Callable[[Config], None], fn: Callable[[Any], Any]) -> Any:
    """Run an Alembic command whose env.py calls ``fn(context)``; return what it returned."""
    seen: list[Any] = []
    cfg = config(location, probe=lambda context: seen.append(fn(context)))
    run(cfg)
    assert len(seen) == 1
    return seen[0]


def environment(location: Path, **kw: Any) -> EnvironmentContext:
    """An EnvironmentContext of our own (public constructor), no env.py run."""
    cfg = config(location)
    return EnvironmentContext(cfg, ScriptDirectory.from_config(cfg), **kw)


# -- T1 ------------------------------------------------------------------------------------------
def test_t1_running_environment_is_the_commands_own(scripts: Path) -> None:
    def check(context: Any) -> bool:
        env = adapter.running_environment()
        return (
            isinstance(env, EnvironmentContext)
            and env.config is context.config
            and env.script is context.script
            and env.is_offline_mode() is False
        )

    assert probe(scripts, lambda cfg: command.current(cfg), check) is True


# -- T2 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("run", "name"),
    [
        (lambda cfg: command.upgrade(cfg, "a1", sql=True), "upgrade"),
        (lambda cfg: command.downgrade(cfg, "a1:base", sql=True), "downgrade"),
        (lambda cfg: command.stamp(cfg, "a1", sql=True), "stamp"),
        (lambda cfg: command.current(cfg), "current"),
    ],
)
def test_t2_step_functions_name_their_command(scripts: Path, run: Any, name: str) -> None:
    def named(context: Any) -> str:
        return adapter.command_name(adapter.running_environment())

    assert probe(scripts, run, named) == name


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["upgrade", "head"], "upgrade"),
        (["downgrade", "base"], "downgrade"),
        (["stamp", "head"], "stamp"),
        (["current"], "current"),
        (["history", "-i"], "history"),
        (["check"], "check"),
    ],
)
def test_t2_the_command_line_keeps_the_command_function_in_cmd_opts(
    argv: list[str], name: str
) -> None:
    options = CommandLine(prog="alembic").parser.parse_args(argv)
    assert options.cmd[0] is getattr(command, name)
    cfg = Config(cmd_opts=options)
    env = EnvironmentContext(cfg, None)  # type: ignore[arg-type]
    assert adapter.command_name(env) == name


def test_t2_ppp_attribute_wins(scripts: Path) -> None:
    env = environment(scripts, fn=lambda heads, ctx: [])
    env.config.attributes[adapter.COMMAND_KEY] = "upgrade"
    assert adapter.command_name(env) == "upgrade"


# -- T3 ------------------------------------------------------------------------------------------
def test_t3_the_step_function_plans_from_any_heads(scripts: Path) -> None:
    def plan(context: Any) -> dict[tuple[str, ...], list[str]]:
        env = adapter.running_environment()
        fn = adapter.step_function(env)
        assert fn is not None
        planner = adapter.Planner(env, fn)
        return {
            heads: [adapter.describe(s).script.revision for s in planner(heads)]  # type: ignore[union-attr]
            for heads in [(), ("a1",), ("b1", "d1")]
        }

    planned = probe(scripts, lambda cfg: command.upgrade(cfg, "heads"), plan)
    assert planned[()][0] == "a1" and sorted(planned[()]) == sorted(REVISIONS)
    assert sorted(planned[("a1",)]) == ["b1", "c1", "d1"]
    assert planned[("b1", "d1")] == []  # c1 is d1's dependency: applied


def test_t3_downgrade_and_stamp_steps(scripts: Path) -> None:
    def plan(context: Any) -> list[adapter.StepInfo]:
        env = adapter.running_environment()
        fn = adapter.step_function(env)
        assert fn is not None
        return [adapter.describe(s) for s in adapter.Planner(env, fn)(("b1",))]

    down = probe(scripts, lambda cfg: command.downgrade(cfg, "b1:a1", sql=True), plan)
    assert [(i.script.revision, i.upgrade) for i in down] == [("b1", False)]  # type: ignore[union-attr]
    stamp = probe(scripts, lambda cfg: command.stamp(cfg, "c1", sql=True), plan)
    assert stamp and all(i.script is None and i.label for i in stamp)


@pytest.mark.parametrize(
    ("run", "given"),
    [
        (lambda cfg: command.upgrade(cfg, "heads", sql=True), "heads"),
        (lambda cfg: command.downgrade(cfg, "b1:a1", sql=True), "a1"),
        (lambda cfg: command.current(cfg), None),
    ],
)
def test_t3_the_destination_as_given(scripts: Path, run: Any, given: str | None) -> None:
    env_given = probe(
        scripts, run, lambda context: adapter.destination_argument(adapter.running_environment())
    )
    assert env_given == given


# -- T4 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("run", "every"),
    [
        (lambda cfg: command.upgrade(cfg, "head", sql=True), True),
        (lambda cfg: command.upgrade(cfg, "heads", sql=True), True),
        (lambda cfg: command.upgrade(cfg, "b1", sql=True), False),
        (lambda cfg: command.downgrade(cfg, "b1:a1", sql=True), False),
        (lambda cfg: command.current(cfg), False),
    ],
)
def test_t4_head_among_several_heads_is_every_head(scripts: Path, run: Any, every: bool) -> None:
    def check(context: Any) -> bool:
        return adapter.targets_every_head(adapter.running_environment())

    assert probe(scripts, run, check) is every


# -- T5, T6 --------------------------------------------------------------------------------------
def test_t5_t6_a_step_ppp_planned_runs_as_alembics_do(scripts: Path) -> None:
    env = environment(scripts)
    a1 = env.script.get_revision("a1")
    assert a1 is not None
    step = adapter.upgrade_step(env.script, a1)
    info = adapter.describe(step)
    assert info.label == "revision a1 (the a1 revision)"
    assert info.path == str(scripts / "versions" / "a1.py") and info.upgrade
    assert callable(info.module.upgrade)
    applied: list[MigrationInfo] = []
    buf = io.StringIO()
    ctx = adapter.migration_context(
        env,
        [step],
        {"output_buffer": buf},
        on_applied=lambda **kw: applied.append(kw["step"]),
    )
    adapter.run(ctx)
    sql = buf.getvalue()
    assert "SELECT 'up a1'" in sql
    assert "INSERT INTO alembic_version (version_num) VALUES ('a1')" in sql
    assert [i.up_revision_id for i in applied] == ["a1"]


def test_migration_context_renders_from_the_given_heads_and_reports_heads(scripts: Path) -> None:
    env = environment(scripts)
    steps = [
        adapter.upgrade_step(env.script, env.script.get_revision(r))  # type: ignore[arg-type]
        for r in ("b1", "c1")
    ]
    heads: list[set[str]] = []
    buf = io.StringIO()
    options = {"output_buffer": buf, "starting_rev": ["a1"], "version_table_schema": "t"}
    ctx = adapter.migration_context(
        env, steps, options, on_applied=lambda **kw: heads.append(kw["heads"])
    )
    assert ctx.as_sql and ctx.get_current_heads() == ("a1",)
    adapter.run(ctx)
    assert heads == [{"b1"}, {"b1", "c1"}]
    sql = buf.getvalue()
    assert "UPDATE t.alembic_version SET version_num='b1'" in sql
    assert "INSERT INTO t.alembic_version (version_num) VALUES ('c1')" in sql
    assert "CREATE TABLE" not in sql  # not from base: no version table


# -- T7 (live) -----------------------------------------------------------------------------------
@pytest.fixture
def scratch(settings: Any) -> Iterator[tuple[sa.engine.Connection, str]]:
    """A connection to a shard and an empty scratch schema on it."""
    schema = f"adapter_{uuid.uuid4().hex[:10]}"
    shard = next(iter(settings.shards))
    shard_sql(settings, shard, f"CREATE SCHEMA {schema}")
    engine = db.engine(settings.shard(shard), "admin", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            yield conn, schema
    finally:
        engine.dispose()
        shard_sql(settings, shard, f"DROP SCHEMA {schema} CASCADE")


def test_t7_bulk_heads_are_what_alembic_reads_back(
    scripts: Path, scratch: tuple[sa.engine.Connection, str]
) -> None:
    conn, schema = scratch
    env = environment(scripts)
    a1 = adapter.upgrade_step(env.script, env.script.get_revision("a1"))  # type: ignore[arg-type]
    ctx = adapter.migration_context(env, [a1], {"version_table_schema": schema}, connection=conn)
    adapter.run(ctx, own_transaction=True)  # Alembic creates its version table and writes a1
    assert ctx.get_current_heads() == ("a1",)
    adapter.replace_heads(ctx, ["a1"], ["b1", "c1", "d1"])
    conn.commit()
    assert sorted(ctx.get_current_heads()) == ["b1", "c1", "d1"]
    columns = shard_sql_columns(conn, schema)
    assert columns == ["version_num"]  # the layout replace_heads writes


def shard_sql_columns(conn: sa.engine.Connection, schema: str) -> list[str]:
    return [c["name"] for c in sa.inspect(conn).get_columns("alembic_version", schema=schema)]


# -- T8 (live) -----------------------------------------------------------------------------------
def test_t8_default_schema_is_what_revisions_and_the_inspector_see(
    scripts: Path, scratch: tuple[sa.engine.Connection, str]
) -> None:
    conn, schema = scratch
    before = conn.dialect.default_schema_name
    ctx = MigrationContext.configure(connection=conn)
    with adapter.default_schema(conn.dialect, schema), Operations.context(ctx):
        assert alembic_op.get_bind().dialect.default_schema_name == schema
        assert sa.inspect(alembic_op.get_bind()).default_schema_name == schema
    assert conn.dialect.default_schema_name == before
    # Offline, the bind's dialect is the context's: one attribute to set.
    offline = adapter.migration_context(environment(scripts), [], {"output_buffer": io.StringIO()})
    assert offline.bind is not None and offline.bind.dialect is offline.dialect


# -- T9 ------------------------------------------------------------------------------------------
def test_t9_the_guarded_offline_bind_says_when_a_revision_reads(scripts: Path) -> None:
    buf = io.StringIO()
    ctx = adapter.migration_context(environment(scripts), [], {"output_buffer": buf})
    adapter.guard_offline_bind(ctx)
    with Operations.context(ctx):
        bind = alembic_op.get_bind()
        assert bind is ctx.bind and bind.dialect is ctx.dialect
        bind.execute(sa.text("UPDATE items SET price = 1"))  # written, never read: fine
        with pytest.raises(adapter.DatabaseRead) as read:
            bind.execute(sa.text("SELECT count(*) FROM items")).scalar()
        assert read.value.call == "Connection.execute(SELECT count(*) FROM items).scalar()"
        with pytest.raises(adapter.DatabaseRead, match="exec_driver_sql"):
            bind.exec_driver_sql("SELECT 1")
        with pytest.raises(adapter.DatabaseRead, match=r"Connection\.connect\(\)"):
            Session(bind).query(sa.table("items", sa.column("name"))).all()
        # T13: the inspector of the offline bind answers the default schema, nothing else.
        inspector = sa.inspect(bind)
        assert inspector.default_schema_name == ctx.dialect.default_schema_name
        with pytest.raises(adapter.DatabaseRead) as read:
            inspector.get_columns("items")
        assert read.value.call == "Inspector.get_columns()"
        with pytest.raises(adapter.DatabaseRead, match="Inspector"):
            sa.Table("items", sa.MetaData(), autoload_with=bind)
        with pytest.raises(NoInspectionAvailable):
            sa.inspect(object())  # SQLAlchemy's registry itself is unchanged
        with pytest.raises(adapter.DatabaseRead):
            list(bind.execute(sa.text("SELECT 2")))
        # DDL through the bind (Alembic creates its version table so) still renders.
        sa.Table("t9", sa.MetaData(), sa.Column("x", sa.Integer)).create(bind)
    sql = buf.getvalue()
    assert "UPDATE items SET price = 1" in sql and "CREATE TABLE t9" in sql


# -- T12 -----------------------------------------------------------------------------------------
def test_t12_a_step_runs_another_function_and_alembic_keeps_the_heads(scripts: Path) -> None:
    env = environment(scripts)
    steps = adapter.Planner(env, lambda heads, ctx: env.script._upgrade_revs("b1", heads))(())
    assert [adapter.describe(s).script.revision for s in steps] == ["a1", "b1"]
    original = adapter.revision_function(steps[0])
    assert original.__name__ == "upgrade"
    calls: list[dict[str, Any]] = []
    replaced = [adapter.with_function(steps[0], lambda **kw: calls.append(kw)), steps[1]]
    buf = io.StringIO()
    applied: list[Any] = []
    ctx = adapter.migration_context(
        env, replaced, {"output_buffer": buf}, on_applied=lambda **kw: applied.append(kw["heads"])
    )
    adapter.run(ctx)
    sql = buf.getvalue()
    assert "up a1" not in sql and "SELECT 'up b1'" in sql  # a1's function replaced
    assert len(calls) == 1 and [set(h) for h in applied] == [{"a1"}, {"b1"}]
    assert "INSERT INTO alembic_version (version_num) VALUES ('a1')" in sql
    assert adapter.revision_function(steps[0]) is original  # the planned step is unchanged


# -- T10 -----------------------------------------------------------------------------------------
def test_t10_autocommit_block_is_seen_before_it_runs(scripts: Path) -> None:
    buf = io.StringIO()
    ctx = adapter.migration_context(environment(scripts), [], {"output_buffer": buf})
    entered: list[str] = []
    adapter.watch_autocommit(ctx, lambda: entered.append(buf.getvalue()))
    with Operations.context(ctx):
        alembic_op.execute("SELECT 'before'")
        with alembic_op.get_context().autocommit_block():
            alembic_op.execute("SELECT 'inside'")
    assert len(entered) == 1 and "inside" not in entered[0] and "before" in entered[0]
    assert "SELECT 'inside'" in buf.getvalue()

    class Refused(Exception):
        pass

    def refuse() -> None:
        raise Refused

    other = adapter.migration_context(environment(scripts), [], {"output_buffer": io.StringIO()})
    adapter.watch_autocommit(other, refuse)
    with (
        Operations.context(other),
        pytest.raises(Refused),
        alembic_op.get_context().autocommit_block(),
    ):
        alembic_op.execute("SELECT 'never'")
    assert "never" not in other.output_buffer.getvalue()


# -- T11 -----------------------------------------------------------------------------------------
def test_t11_script_directory_folders(scripts: Path, tmp_path: Path) -> None:
    script = ScriptDirectory.from_config(config(scripts))
    assert adapter.version_dirs(script) == [scripts / "versions"]
    assert adapter.versions_dir(script) == scripts / "versions"
    assert adapter.template_dir(script) == scripts
    other = tmp_path / "more"
    other.mkdir()
    several = ScriptDirectory(
        str(scripts), version_locations=[str(scripts / "versions"), str(other)]
    )
    assert adapter.version_dirs(several) == [scripts / "versions", other]


# -- the adapter is the only doorway -------------------------------------------------------------
def test_no_other_module_reaches_alembic_internals() -> None:
    """What the adapter wraps is spelled nowhere else in the package."""
    internals = [
        "context_opts",
        "cmd_opts.cmd",
        "upgrade_from_script",
        "migration_fn",
        "on_version_apply_callbacks",
        "default_schema_name =",
        "MultipleHeads",
        "_upgrade_revs",
        "load_python_file",
        "impl.connection",
    ]
    package = ROOT / "ppp_env"
    offenders = []
    for path in package.rglob("*.py"):
        if path.name == "alembic_adapter.py" or "templates" in path.parts:
            continue
        text = path.read_text()
        offenders += [f"{path.relative_to(ROOT)}: {word}" for word in internals if word in text]
    assert offenders == []
