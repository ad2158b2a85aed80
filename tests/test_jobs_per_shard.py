"""Several workers per shard (PPP_JOBS_PER_SHARD, ``-x jobs_per_shard``, a rollout stage's
``parallel``): a shard's tenants dealt to lanes, each on its own connection, every tenant
migrated once."""

from __future__ import annotations

import threading
import time

from alembic import command

from ppp_env import db
from ppp_env.fleet.options import RunOptions
from ppp_env.fleet.pool import lanes
from tests.conftest import (
    drop_schemas,
    fleet_config,
    opts,
    register,
    shard_sql,
    states,
    unregister,
)


def test_lanes_deal_tenants_round_robin():
    jobs = lanes("s", ["a", "b", "c", "d", "e"], 2)
    assert [(j.key, j.tenants) for j in jobs] == [("s#0", ["a", "c", "e"]), ("s#1", ["b", "d"])]
    assert [j.tenants for j in lanes("s", ["a"], 8)] == [["a"]]  # never an empty lane
    assert RunOptions.from_x({"jobs_per_shard": "3"}).jobs_per_shard == 3


def _waiting(settings, shard: str) -> int:
    rows = shard_sql(
        settings,
        shard,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
        "AND wait_event_type = 'Lock'",
        (db.APPLICATION_NAME,),
    )
    return int(rows[0][0])


def test_two_lanes_of_one_shard_wait_at_once_and_every_tenant_runs_once(veneer_head):
    settings = veneer_head.settings
    shard = "bluth_co"
    tenants = {f"ft_lanes_{i}": shard for i in range(6)}
    register(settings, tenants)
    try:
        command.upgrade(fleet_config(**opts(tenants=sorted(tenants), refresh=False)), "f001")
        blocked = sorted(tenants)[:2]  # lane 0 and lane 1 each take one of them first
        holders = []
        for t in blocked:
            conn = db.connect(settings.shard(shard), "admin", application_name="test-holder")
            conn.cursor().execute(f'BEGIN; LOCK TABLE "{t}".items IN ACCESS SHARE MODE')
            holders.append(conn)
        seen = []

        def watch() -> None:
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                seen.append(_waiting(settings, shard))
                if seen[-1] >= 2:
                    break
                time.sleep(0.05)
            for conn in holders:
                conn.rollback()

        watcher = threading.Thread(target=watch)
        watcher.start()
        cfg = fleet_config(
            **opts(tenants=sorted(tenants), refresh=False, jobs_per_shard=2, lock_timeout=10)
        )
        command.upgrade(cfg, "head")
        watcher.join()
        assert max(seen) == 2  # both lanes waited for their locks at the same time
        result = cfg.attributes["ppp.result"]
        assert sorted(r.tenant for r in result.tenants) == sorted(tenants)
        assert {r.status for r in result.tenants} == {"migrated"}
        assert {s.revision for s in states(settings, shard, sorted(tenants)).values()} == {"f003"}
    finally:
        for conn in holders:
            conn.close()
        unregister(settings, tenants)
        drop_schemas(settings, tenants)
