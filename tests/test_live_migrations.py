"""Migrations under live traffic: bounded lock waits, retries, the blocker named, CONCURRENTLY.

Every statement of a tenant's migration waits for a table lock at most the migration lock
timeout, so an application query queues behind it at most that long; a tenant that hits it
rolls back and is retried later in the same run while the others go on.
"""

from __future__ import annotations

import shutil
import threading
import time

import pytest
from alembic import command
from alembic.util import CommandError

from ppp_env import db
from ppp_env.fleet.options import RunOptions
from tests.conftest import FLEET_SCRIPTS, fleet_config, only, opts, shard_sql, states


def _reader(settings, shard: str, tenant: str):
    """An application transaction that has read the tenant's table and stays open."""
    conn = db.connect(settings.shard(shard), "app", application_name="test-reader")
    conn.cursor().execute(f"SELECT count(*) FROM {tenant}.items")
    return conn


def _migration_waits(settings, shard: str) -> bool:
    rows = shard_sql(
        settings,
        shard,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ppp' "
        "AND wait_event_type = 'Lock'",
    )
    return rows[0][0] > 0


def test_a_long_reader_makes_its_tenant_retry_and_the_others_finish(fleet, settings):
    command.upgrade(fleet_config(**opts(**only(fleet))), "f001")
    victim = sorted(t for t, s in fleet.items() if s == "cyberdyne")[0]
    reader = _reader(settings, "cyberdyne", victim)
    released = threading.Event()

    def release_after_a_timeout() -> None:
        """Once the migration has waited for the reader and given up (lock timeout), end the
        reader: the retry then gets its locks. Bounded."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _migration_waits(settings, "cyberdyne"):
            time.sleep(0.02)
        while time.monotonic() < deadline and _migration_waits(settings, "cyberdyne"):
            time.sleep(0.02)
        reader.rollback()
        released.set()

    helper = threading.Thread(target=release_after_a_timeout)
    helper.start()
    try:
        cfg = fleet_config(**opts(**only(fleet), lock_timeout=0.3, retries=10))
        command.upgrade(cfg, "head")
    finally:
        helper.join()
        reader.close()
    assert released.is_set()
    result = cfg.attributes["ppp.result"]
    by_name = {t.tenant: t for t in result.tenants}
    assert by_name[victim].status == "migrated" and by_name[victim].attempts >= 2
    assert all(
        t.attempts == 1 and t.status == "migrated" for n, t in by_name.items() if n != victim
    )
    assert "lock retr" in result.summary()
    for t, shard in fleet.items():
        assert states(settings, shard, [t])[t].revision == "f003"


def test_a_reader_that_never_ends_leaves_its_tenant_locked_with_the_blocker_named(fleet, settings):
    command.upgrade(fleet_config(**opts(**only(fleet))), "f001")
    victim = sorted(t for t, s in fleet.items() if s == "initech")[0]
    reader = _reader(settings, "initech", victim)
    reader_pid = reader.get_backend_pid()
    try:
        cfg = fleet_config(**opts(**only(fleet), lock_timeout=0.2, retries=2))
        with pytest.raises(CommandError) as err:
            command.upgrade(cfg, "head")
    finally:
        reader.close()
    message = str(err.value)
    assert f"initech/{victim}: could not get its locks in 3 attempt(s) (lock_timeout 0.2 s): " in (
        message
    )
    assert f"blocked by pid {reader_pid} (application 'test-reader', idle in transaction" in message
    result = cfg.attributes["ppp.result"]
    assert result.count("locked") == 1 and result.count("migrated") == len(fleet) - 1
    # Nothing half-done: the tenant is where it was, its table untouched; a rerun finishes.
    assert states(settings, "initech", [victim])[victim].revision == "f001"
    unique = shard_sql(
        settings,
        "initech",
        "SELECT count(*) FROM pg_constraint WHERE conname = 'uq_items_name' "
        "AND connamespace = to_regnamespace(%s)",
        (victim,),
    )
    assert unique == [(0,)]
    cfg = fleet_config(**opts(**only(fleet)))
    command.upgrade(cfg, "head")
    assert cfg.attributes["ppp.result"].count("migrated") == 1


CONCURRENT_INDEX = '''"""an index built concurrently (outside a transaction)"""

from alembic import op

revision = "f004"
down_revision = "f003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index("ix_items_price", "items", ["price"], postgresql_concurrently=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_items_price", table_name="items", postgresql_concurrently=True)
'''

LATE_COLUMN = '''"""a column after the concurrent index"""

import sqlalchemy as sa
from alembic import op

revision = "f005"
down_revision = "f004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("items", sa.Column("weight", sa.Integer))


def downgrade() -> None:
    op.drop_column("items", "weight")
'''


def test_create_index_concurrently_runs_across_the_fleet(fleet, settings, tmp_path):
    scripts = tmp_path / "scripts"
    shutil.copytree(FLEET_SCRIPTS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "f004_index.py").write_text(CONCURRENT_INDEX)
    (scripts / "versions" / "f005_weight.py").write_text(LATE_COLUMN)
    cfg = fleet_config(scripts, **opts(**only(fleet)))
    command.upgrade(cfg, "head")
    result = cfg.attributes["ppp.result"]
    assert result.count("migrated") == len(fleet)
    assert (
        "outside a transaction"
        in result.online["revision f004 (an index built concurrently (outside a transaction))"]
    )
    for t, shard in fleet.items():
        assert states(settings, shard, [t])[t].revision == "f005"
        valid = shard_sql(
            settings,
            shard,
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = 'ix_items_price' AND c.relnamespace = to_regnamespace(%s)",
            (t,),
        )
        assert valid == [(True,)]
    command.downgrade(fleet_config(scripts, **opts(**only(fleet))), "f003")
    for t, shard in fleet.items():
        assert states(settings, shard, [t])[t].revision == "f003"
        assert shard_sql(settings, shard, "SELECT to_regclass(%s)", (f"{t}.ix_items_price",)) == [
            (None,)
        ]


SLOW = '''"""a slow data migration"""

from alembic import op

revision = "f004"
down_revision = "f003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("SELECT pg_sleep(2)")


def downgrade() -> None:
    pass
'''


def test_statement_timeout_bounds_a_slow_revision(fleet, settings, tmp_path):
    scripts = tmp_path / "scripts"
    shutil.copytree(FLEET_SCRIPTS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "f004_slow.py").write_text(SLOW)
    one = sorted(fleet)[:1]
    cfg = fleet_config(scripts, **opts(tenants=one, statement_timeout=0.2))
    with pytest.raises(
        CommandError, match="revision f004 \\(a slow data migration\\): QueryCanceled"
    ):
        command.upgrade(cfg, "head")
    assert states(settings, fleet[one[0]], one)[one[0]].revision is None


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("lock_timeout=soon", "-x lock_timeout='soon': expected a number of seconds"),
        ("retries=-1", "-x retries='-1': expected a number from 0 to 100"),
        ("statement_timeout=-5", "-x statement_timeout='-5': expected a number of seconds"),
    ],
)
def test_bad_timeouts_are_clear_errors_that_change_nothing(fleet, settings, option, message):
    cfg = fleet_config(**opts(**only(fleet)))
    cfg.cmd_opts = type("O", (), {"x": [option]})()
    with pytest.raises(CommandError, match=message.replace("(", r"\(")):
        command.upgrade(cfg, "head")
    for t, shard in fleet.items():
        assert not states(settings, shard, [t])[t].exists


def test_settings_give_the_defaults(settings):
    assert settings.migration_lock_timeout == 2.0
    assert settings.lock_retries == 5
    assert settings.statement_timeout == 0.0
    assert RunOptions.from_x({"lock_timeout": "0.5", "retries": "3"}).lock_timeout == 0.5
