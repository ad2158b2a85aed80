"""A realistic chain over 30 tenants on 3 shards, end to end, at default server settings.

The chain (tests/scripts/realistic, see tests/realistic.py) has the shapes a real
application's has: 56 tables per tenant, an enum type that gains a label, foreign keys and
triggers into a shard-wide shared schema, a branch and a merge, revisions that read the
database or reflect it, renderable data migrations, a column added and one dropped, a table
renamed. After every step the veneer must match the shards exactly and work as veneer_app.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from click.testing import CliRunner

from ppp_env.settings import Settings
from tests import realistic as rc


@pytest.fixture
def realistic_fleet(veneer_head, tmp_path) -> Iterator[tuple[Path, dict[str, str]]]:
    """30 tenants (10 per shard) registered for the realistic chain; afterwards the tenants,
    their schemas and the shared chain are gone from every shard and the veneer."""
    settings: Settings = veneer_head.settings
    ini = rc.write_ini(tmp_path)
    tenants = rc.tenant_names(settings)
    rc.cleanup(settings, ini, tenants)  # leftovers of an interrupted run
    try:
        rc.register(settings, tenants)
        yield ini, tenants
    finally:
        rc.cleanup(settings, ini, tenants)


def assert_at(settings: Settings, tenants: dict[str, str], revision: str | None) -> None:
    found = {t: st.revision for t, st in rc.states(settings, tenants).items()}
    assert found == dict.fromkeys(tenants, revision)


def assert_veneer(settings: Settings, tenants: dict[str, str], probe: int) -> None:
    rc.check_veneer_matches_shards(settings, tenants)
    rc.check_through_veneer(settings, tenants, probe)


def test_realistic_chain_end_to_end(realistic_fleet, settings):
    ini, tenants = realistic_fleet
    names = sorted(tenants)

    # 1. ppp migrate: veneer, shared chain on every shard, 30 tenants from base, refresh.
    from ppp_env.cli.main import cli

    result = CliRunner().invoke(cli, ["migrate", "-c", str(ini), "--tenant", ",".join(names)])
    assert result.exit_code == 0, result.output
    assert_at(settings, tenants, rc.HEAD)
    tables = rc.shard_tables(settings, tenants)
    assert all(len(t) >= 50 for t in tables.values()), {k: len(v) for k, v in tables.items()}
    assert_veneer(settings, tenants, probe=101)

    # 2. Three revisions back (a table renamed back, a column restored, one removed).
    command.downgrade(rc.tenant_config(ini, names), "-3")
    assert_at(settings, tenants, rc.MINUS_3)
    tables = rc.shard_tables(settings, tenants)
    assert all("notes_7" in t and "memos" not in t for t in tables.values())
    assert_veneer(settings, tenants, probe=102)

    # 3. Forward again; then all the way down and up.
    command.upgrade(rc.tenant_config(ini, names), "head")
    assert_at(settings, tenants, rc.HEAD)
    assert_veneer(settings, tenants, probe=103)

    command.downgrade(rc.tenant_config(ini, names), "base")
    assert_at(settings, tenants, None)
    for shard, schemas in rc.by_shard(tenants).items():
        leftovers = rc.shard_rows(
            settings,
            shard,
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'S') "
            "AND c.relname <> 'alembic_version' UNION ALL "
            "SELECT n.nspname, t.typname FROM pg_type t JOIN pg_namespace n "
            "ON n.oid = t.typnamespace WHERE n.nspname = ANY(%s) AND t.typtype = 'e'",
            (schemas, schemas),
        )
        assert leftovers == [], f"{shard}: downgrade to base left {leftovers}"
    rc.check_veneer_matches_shards(settings, tenants)  # no foreign tables left either

    command.upgrade(rc.tenant_config(ini, names), "head")
    assert_at(settings, tenants, rc.HEAD)
    assert_veneer(settings, tenants, probe=104)

    # 4. The revisions that read the database saw the tenant as SQLAlchemy's default schema.
    for tenant, shard in sorted(tenants.items()):
        log = rc.shard_rows(
            settings,
            shard,
            f'SELECT revision, default_schema, detail FROM "{tenant}".migration_log ORDER BY 1',
        )
        assert log == [
            ("rc10", tenant, "accounts=3"),
            ("rc11", tenant, ",".join(rc.CATALOG_TABLES)),
        ], tenant
        kv = rc.shard_rows(
            settings,
            shard,
            f'SELECT key, value FROM "{tenant}".settings_kv ORDER BY key',
        )
        assert kv == [("account_count", "3"), ("currency", "EUR"), ("theme", "dark")], tenant
        indexes = rc.shard_rows(
            settings,
            shard,
            "SELECT count(*) FROM pg_indexes WHERE schemaname = %s "
            "AND indexname LIKE 'ix\\_catalog\\_%%\\_label\\_lower'",
            (tenant,),
        )
        assert indexes == [(10,)], tenant
