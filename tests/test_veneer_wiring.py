"""PPP_VENEER_WIRING=on-demand: the veneer wires only the tenants named once (their first use
through it); runs keep those in step and leave the others pending, reached by the router.
``ppp veneer unwire`` takes a tenant's foreign tables away again."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from alembic import command
from click.testing import CliRunner

from ppp_env import db, veneer
from ppp_env.cli.main import cli
from ppp_env.fleet.status import fleet_status
from ppp_env.veneer import catalog
from tests.conftest import drop_schemas, fleet_config, opts, register, unregister

SHARDS = {"ow_one": "bluth_co", "ow_two": "initech"}


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def veneer_schemas(settings) -> set[str]:
    with db.connection(settings.veneer, "admin", autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (list(SHARDS),))
        return {r[0] for r in cur.fetchall()}


def rows(settings) -> dict[str, tuple[str, str | None]]:
    found = catalog.list_tenants(settings, tenants=list(SHARDS))
    return {t.schema: (t.state, t.wired_revision) for t in found}


@pytest.fixture
def on_demand(veneer_head, monkeypatch):
    settings = veneer_head.settings
    register(settings, SHARDS)
    monkeypatch.setenv("PPP_VENEER_WIRING", "on-demand")  # the runs load their settings
    try:
        yield dataclasses.replace(settings, veneer_wiring="on-demand")
    finally:
        veneer.unwire_tenants(settings, [s for s in SHARDS if s in rows(settings)])
        drop_schemas(settings, SHARDS)
        unregister(settings, SHARDS)


def test_runs_wire_only_the_tenants_named_once(on_demand) -> None:
    settings = on_demand
    cfg = fleet_config(**opts(tenants=list(SHARDS)))
    command.upgrade(cfg, "f001")
    # Migrated on their shards, wired nowhere: pending (the router reaches pending tenants).
    assert rows(settings) == {"ow_one": ("pending", None), "ow_two": ("pending", None)}
    assert veneer_schemas(settings) == set()

    report = veneer.refresh(settings, ["ow_one"])  # the first use of ow_one through the veneer
    assert report.refreshed == ["ow_one"]
    assert rows(settings)["ow_one"] == ("active", "f001")

    command.upgrade(fleet_config(**opts(tenants=list(SHARDS))), "head")
    assert rows(settings) == {"ow_one": ("active", "f003"), "ow_two": ("pending", None)}
    assert veneer_schemas(settings) == {"ow_one"}

    out = run("veneer", "refresh")  # every tenant wired now: ow_two stays out
    assert out.exit_code == 0 and "ow_two" not in out.output, out.output
    assert veneer_schemas(settings) == {"ow_one"}

    statuses, _ = fleet_status(
        settings, catalog.list_tenants(settings, tenants=list(SHARDS)), ["f003"]
    )
    assert {s.tenant: s.veneer for s in statuses} == {"ow_one": "in step", "ow_two": "not wired"}


def test_unwire_takes_the_foreign_tables_away_and_refuses_unknown_names(on_demand) -> None:
    settings = on_demand
    command.upgrade(fleet_config(**opts(tenants=list(SHARDS))), "head")
    veneer.refresh(settings, list(SHARDS))
    assert veneer_schemas(settings) == set(SHARDS)

    bad = CliRunner().invoke(cli, ["veneer", "unwire", "ow_one", "nobody_here"])
    assert bad.exit_code == 1 and "nobody_here" in bad.output, bad.output
    assert veneer_schemas(settings) == set(SHARDS)  # nothing changed
    assert rows(settings)["ow_one"] == ("active", "f003")

    out = run("veneer", "unwire", "ow_one")
    assert out.exit_code == 0 and "unwired 1 tenant: ow_one" in out.output, out.output
    assert veneer_schemas(settings) == {"ow_two"}
    assert rows(settings) == {"ow_one": ("pending", None), "ow_two": ("active", "f003")}
    # Its data stays on its shard: wired again on its next use.
    assert veneer.refresh(settings, ["ow_one"]).refreshed == ["ow_one"]
    assert rows(settings)["ow_one"] == ("active", "f003")


def test_every_tenant_is_wired_by_default(veneer_head) -> None:
    settings = veneer_head.settings
    assert settings.veneer_wiring == "all"
    register(settings, SHARDS)
    try:
        command.upgrade(fleet_config(**opts(tenants=list(SHARDS))), "head")
        assert rows(settings) == {"ow_one": ("active", "f003"), "ow_two": ("active", "f003")}
    finally:
        veneer.unwire_tenants(settings, list(SHARDS))
        drop_schemas(settings, SHARDS)
        unregister(settings, SHARDS)


def test_a_bad_wiring_setting_is_refused(veneer_head, monkeypatch) -> None:
    monkeypatch.setenv("PPP_VENEER_WIRING", "lazy")
    out = CliRunner().invoke(cli, ["veneer", "refresh"])
    assert out.exit_code == 1 and "PPP_VENEER_WIRING" in out.output, out.output
    assert "Traceback" not in out.output
