"""``ppp doctor``: every kind of difference between catalog, shards and veneer, made by hand."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from ppp_env.cli.main import cli
from ppp_env.errors import PPPError
from ppp_env.lifecycle import create_tenant, doctor
from ppp_env.veneer import catalog
from tests.conftest import ROOT, Topology, shard_sql
from tests.test_lifecycle import forget

INI = ROOT / "alembic.ini"
SHARD = "initech"


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def trio(veneer_head: Topology) -> Iterator[list[str]]:
    """Three fresh runtime tenants on one shard, at the tenant head, wired."""
    settings = veneer_head.settings
    names = [f"dr_{uuid.uuid4().hex[:8]}_{i}" for i in range(3)]
    try:
        for schema in names:
            create_tenant(settings, schema, SHARD, INI)
        yield names
    finally:
        forget(settings, names)


def kinds(report: Any, schema: str | None = None) -> set[str]:
    return {f.kind for f in report.findings if schema is None or f.schema == schema}


def test_clean_tenants_exit_zero(veneer_head: Topology, trio: list[str]) -> None:
    report = doctor(veneer_head.settings, INI, tenants=trio)
    assert report.ok, [f.line() for f in report.findings]
    out = run("doctor", *trio, "-c", str(INI))
    assert out.exit_code == 0, out.output
    assert "3 tenant(s) on 3 shard(s): all good" in out.output
    as_json = json.loads(run("doctor", *trio, "-c", str(INI), "--json").output)
    assert as_json["ok"] is True and as_json["findings"] == []


def test_drift_in_one_tenant_is_named(veneer_head: Topology, trio: list[str]) -> None:
    settings = veneer_head.settings
    odd = trio[1]
    shard_sql(settings, SHARD, f"CREATE INDEX authors_last_idx ON {odd}.authors (last_name)")
    report = doctor(settings, INI, tenants=trio)
    drift = [f for f in report.findings if f.kind == "drift"]
    assert [f.schema for f in drift] == [odd], [f.line() for f in report.findings]
    assert "at 0002" in drift[0].detail and trio[0] in drift[0].detail
    # An index changes no column: the veneer is still in step.
    assert kinds(report) == {"drift"}
    out = run("doctor", *trio, "-c", str(INI), "--json")
    assert out.exit_code == 1
    assert [f["schema"] for f in json.loads(out.output)["findings"]] == [odd]


def test_stale_missing_and_extra_foreign_tables(veneer_head: Topology, trio: list[str]) -> None:
    settings = veneer_head.settings
    stale, missing, extra = trio
    shard_sql(settings, SHARD, f"ALTER TABLE {stale}.authors ADD COLUMN born date")
    shard_sql(settings, SHARD, f"CREATE TABLE {missing}.books (id int PRIMARY KEY)")
    shard_sql(settings, SHARD, f"ALTER TABLE {extra}.authors RENAME TO writers")
    report = doctor(settings, INI, tenants=trio)
    lines = [f.line() for f in report.findings]
    assert "veneer_stale" in kinds(report, stale), lines
    assert any("born" in f.detail for f in report.findings if f.kind == "veneer_stale")
    assert "veneer_missing" in kinds(report, missing), lines
    assert {"veneer_missing", "veneer_extra"} <= kinds(report, extra), lines
    # Each of them also differs from the other two at the same revision.
    assert {f.schema for f in report.findings if f.kind == "drift"} == set(trio)


def test_missing_schema_behind_head_provisioning_and_move(
    veneer_head: Topology, trio: list[str]
) -> None:
    settings = veneer_head.settings
    gone, behind, moving = trio
    shard_sql(settings, SHARD, f"DROP SCHEMA {gone} CASCADE")
    shard_sql(settings, SHARD, f"UPDATE {behind}.alembic_version SET version_num = '0001'")
    with catalog.admin_connection(settings) as conn:
        conn.execute(
            text(
                "INSERT INTO ppp.moves (schema, source, target, mode, step, error) "
                "VALUES (:s, 'initech', 'bluth_co', 'block', 'copy', 'lost the target')"
            ),
            {"s": moving},
        )
    half = f"dr_{uuid.uuid4().hex[:8]}_half"
    with catalog.admin_connection(settings) as conn:
        conn.execute(
            text(
                "INSERT INTO ppp.tenants (schema, shard, state, origin) "
                "VALUES (:s, :shard, 'provisioning', 'runtime')"
            ),
            {"s": half, "shard": SHARD},
        )
    try:
        report = doctor(settings, INI, tenants=[*trio, half])
        lines = [f.line() for f in report.findings]
        assert "missing_schema" in kinds(report, gone), lines
        assert "behind_head" in kinds(report, behind), lines
        assert any("at 0001" in f.detail for f in report.findings if f.kind == "behind_head")
        assert kinds(report, moving) == {"move"}, lines
        assert "lost the target" in next(f.detail for f in report.findings if f.kind == "move")
        assert kinds(report, half) == {"provisioning"}, lines
        out = run("doctor", *trio, half, "-c", str(INI))
        assert out.exit_code == 1
        assert "problem(s)" in out.output and "1 move" in out.output
    finally:
        forget(settings, [half])  # the move row goes with the tenant (ON DELETE CASCADE)


def test_orphan_schema(veneer_head: Topology) -> None:
    settings = veneer_head.settings
    stray = f"dr_{uuid.uuid4().hex[:8]}_stray"
    shard_sql(settings, "cyberdyne", f"CREATE SCHEMA {stray}")
    try:
        report = doctor(settings, INI)
        found = [f for f in report.findings if f.schema == stray]
        assert [(f.kind, f.shard) for f in found] == [("orphan_schema", "cyberdyne")]
        # ppp, public and the shards' own schemas are never reported.
        assert not {"ppp", "public"} & {f.schema for f in report.findings}
    finally:
        shard_sql(settings, "cyberdyne", f"DROP SCHEMA {stray}")


def test_unknown_tenant_is_an_error(veneer_head: Topology) -> None:
    with pytest.raises(PPPError, match="unknown tenant\\(s\\) dr_nobody"):
        doctor(veneer_head.settings, INI, tenants=["dr_nobody"])
    out = run("doctor", "dr_nobody", "-c", str(INI))
    assert out.exit_code == 1 and out.output.startswith("Error: unknown tenant")


def test_a_removed_tenant_wired_again_is_found_and_fixed(veneer_head: Topology) -> None:
    from ppp_env.lifecycle import remove_tenant
    from ppp_env.veneer import refresh

    settings = veneer_head.settings
    schema = f"dr_{uuid.uuid4().hex[:8]}_gone"
    try:
        create_tenant(settings, schema, SHARD, INI)
        remove_tenant(settings, schema)
        assert doctor(settings, INI, tenants=[schema]).ok
        # A refresh never wires a removed tenant again, named or not ...
        named = refresh(settings, [schema])
        assert "it was removed (ppp tenant remove)" in named.errors[schema]
        assert schema not in refresh(settings).refreshed
        assert doctor(settings, INI, tenants=[schema]).ok
        # ... nor does the fleet migrate it.
        from alembic import command

        from ppp_env.fleet import RunOptions
        from tests.conftest import alembic_config

        cfg = alembic_config(**{"ppp.options": RunOptions(output="quiet", tenants=[schema])})
        command.upgrade(cfg, "head")
        assert cfg.attributes["ppp.result"].tenants == []
        # ... but wiring made by hand is found, and `ppp tenant remove` takes it away again.
        with catalog.admin_connection(settings) as conn:
            conn.exec_driver_sql(
                f'CREATE SCHEMA "{schema}"; IMPORT FOREIGN SCHEMA "{schema}" '
                f'FROM SERVER "{SHARD}" INTO "{schema}"'
            )
        report = doctor(settings, INI, tenants=[schema])
        assert [(f.kind, f.schema) for f in report.findings] == [("removed_wired", schema)]
        out = run("tenant", "remove", schema)
        assert out.exit_code == 0, out.output
        assert doctor(settings, INI, tenants=[schema]).ok
    finally:
        forget(settings, [schema])


#: Two statements run in every tenant of the trio, then one that differs in the odd one: the
#: fingerprint tells each difference apart (indexes, keys and checks are read from the
#: catalogs, not deparsed, except expressions).
SHAPES = {
    "index column": (
        "CREATE INDEX a_idx ON {s}.authors (first_name)",
        "DROP INDEX {s}.a_idx; CREATE INDEX a_idx ON {s}.authors (last_name)",
    ),
    "index order": (
        "CREATE INDEX a_idx ON {s}.authors (first_name, last_name)",
        "DROP INDEX {s}.a_idx; CREATE INDEX a_idx ON {s}.authors (last_name, first_name)",
    ),
    "index descending": (
        "CREATE INDEX a_idx ON {s}.authors (first_name)",
        "DROP INDEX {s}.a_idx; CREATE INDEX a_idx ON {s}.authors (first_name DESC)",
    ),
    "index expression": (
        "CREATE INDEX a_idx ON {s}.authors (lower(first_name))",
        "DROP INDEX {s}.a_idx; CREATE INDEX a_idx ON {s}.authors (upper(first_name))",
    ),
    "partial index": (
        "CREATE INDEX a_idx ON {s}.authors (first_name) WHERE last_name > 'a'",
        "DROP INDEX {s}.a_idx; CREATE INDEX a_idx ON {s}.authors (first_name) "
        "WHERE last_name > 'b'",
    ),
    "foreign key action": (
        "CREATE TABLE {s}.books (id int PRIMARY KEY, author_id uuid REFERENCES {s}.authors (id))",
        "ALTER TABLE {s}.books DROP CONSTRAINT books_author_id_fkey, ADD CONSTRAINT "
        "books_author_id_fkey FOREIGN KEY (author_id) REFERENCES {s}.authors (id) "
        "ON DELETE CASCADE",
    ),
    "check": (
        "ALTER TABLE {s}.authors ADD CONSTRAINT named CHECK (length(first_name) < 100)",
        "ALTER TABLE {s}.authors DROP CONSTRAINT named, ADD CONSTRAINT named "
        "CHECK (length(first_name) < 99)",
    ),
    "unique": (
        "ALTER TABLE {s}.authors ADD CONSTRAINT one UNIQUE (first_name)",
        "ALTER TABLE {s}.authors DROP CONSTRAINT one, ADD CONSTRAINT one UNIQUE (last_name)",
    ),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_drift_in_indexes_and_constraints(
    veneer_head: Topology, trio: list[str], shape: str
) -> None:
    settings = veneer_head.settings
    same, odd = SHAPES[shape]
    for schema in trio:
        shard_sql(settings, SHARD, same.format(s=schema))
    report = doctor(settings, INI, tenants=trio)
    assert not [f for f in report.findings if f.kind == "drift"], shape  # the same shape
    shard_sql(settings, SHARD, odd.format(s=trio[2]))
    report = doctor(settings, INI, tenants=trio)
    assert [f.schema for f in report.findings if f.kind == "drift"] == [trio[2]], shape
