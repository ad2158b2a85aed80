"""A worker opens a new shard session every ``TENANTS_PER_SESSION`` tenants: a backend that
created thousands of schemas made each further tenant slower (its caches walked on every
invalidation). Every tenant is still migrated once, in one transaction."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from ppp_env.fleet import worker
from tests.conftest import (
    FLEET_SCRIPTS,
    ROOT,
    drop_schemas,
    fleet_config,
    opts,
    register,
    shard_sql,
    unregister,
)

REVISION = '''"""records the session that migrated the tenant"""
from alembic import op

revision = "s001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.execute("CREATE TABLE session_pid AS SELECT pg_backend_pid() AS pid")


def downgrade():
    op.execute("DROP TABLE session_pid")
'''


def _chain(tmp_path: Path, **attributes) -> Config:
    scripts = tmp_path / "scripts"
    (scripts / "versions").mkdir(parents=True)
    shutil.copy(FLEET_SCRIPTS / "env.py", scripts / "env.py")
    (scripts / "versions" / "s001.py").write_text(REVISION)
    cfg = Config()
    cfg.set_main_option("script_location", str(scripts))
    cfg.set_main_option("prepend_sys_path", str(ROOT))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes.update(attributes)
    return cfg


@pytest.mark.parametrize("render", [True, False])
def test_a_worker_renews_its_session_and_migrates_every_tenant_once(
    veneer_head, tmp_path: Path, monkeypatch, render: bool
) -> None:
    settings = veneer_head.settings
    shard = "cyberdyne"
    tenants = {f"ws_{render:d}_{i}": shard for i in range(7)}
    register(settings, tenants)
    monkeypatch.setattr(worker, "TENANTS_PER_SESSION", 2)  # the workers fork: they inherit it
    try:
        cfg = _chain(tmp_path, **opts(tenants=sorted(tenants), refresh=False, render=render))
        command.upgrade(cfg, "head")
        result = cfg.attributes["ppp.result"]
        assert sorted(r.tenant for r in result.tenants) == sorted(tenants)
        assert {r.status for r in result.tenants} == {"migrated"}
        pids = [
            shard_sql(settings, shard, f'SELECT pid FROM "{t}".session_pid')[0][0]
            for t in sorted(tenants)
        ]
        # 7 tenants, 2 per session: 4 sessions, each serving consecutive tenants.
        assert len(set(pids)) == 4
        assert [pids.count(p) for p in dict.fromkeys(pids)] == [2, 2, 2, 1]
        command.upgrade(cfg, "head")  # and the next run finds every tenant current
        assert {r.status for r in cfg.attributes["ppp.result"].tenants} == {"current"}
    finally:
        drop_schemas(settings, tenants)
        unregister(settings, tenants)


def test_tenants_already_at_the_destination_are_settled_without_a_worker(
    veneer_head, monkeypatch
) -> None:
    """The parent reads every tenant's state once; a shard whose tenants are all where the
    command goes forks no worker (here any worker fails, to show which shards got one)."""
    from ppp_env.fleet import pool

    settings = veneer_head.settings
    tenants = {"settle_a": "bluth_co", "settle_b": "cyberdyne", "settle_c": "cyberdyne"}
    register(settings, tenants)
    try:
        command.upgrade(fleet_config(**opts(tenants=sorted(tenants), refresh=False)), "head")
        command.downgrade(fleet_config(**opts(tenants=["settle_c"], refresh=False)), "-1")

        def no_worker(job, *args, **kwargs):
            raise RuntimeError(f"a worker ran for {job.shard}: {job.tenants}")

        monkeypatch.setattr(pool, "run_shard", no_worker)
        cfg = fleet_config(**opts(tenants=sorted(tenants), refresh=False))
        with pytest.raises(Exception, match=r"worker"):
            command.upgrade(cfg, "head")
        result = cfg.attributes["ppp.result"]
        status = {r.tenant: r.status for r in result.tenants}
        assert status["settle_a"] == "current" and status["settle_b"] == "current"
        assert status.get("settle_c") != "current"
        assert list(result.shard_errors) == ["cyberdyne"]
        assert "['settle_c']" in result.shard_errors["cyberdyne"]  # only the tenant with work
    finally:
        drop_schemas(settings, tenants)
        unregister(settings, tenants)
