"""Tenant lifecycle at runtime: create, remove, list; the catalog's lifecycle revision."""

from __future__ import annotations

import json
import select
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from ppp_env import db
from ppp_env.cli.main import cli
from ppp_env.errors import PPPError
from ppp_env.lifecycle import choose_shard, create_tenant, remove_tenant, tenant_rows
from ppp_env.lifecycle.placement import placement_policy
from ppp_env.settings import Settings
from ppp_env.veneer import catalog
from ppp_env.veneer import env as veneer_env
from ppp_env.veneer.onboarding import register_tenants
from tests.client_programs import (
    assert_one_sentence,
    fake_client_programs,
    secrets_of,
    without_containers,
)
from tests.conftest import ROOT, Topology, shard_sql

INI = ROOT / "alembic.ini"


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def name(prefix: str = "lc") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def catalog_row(settings: Settings, schema: str) -> Any:
    with catalog.admin_connection(settings) as conn:
        return conn.execute(
            text("SELECT schema, shard, state, origin FROM ppp.tenants WHERE schema = :s"),
            {"s": schema},
        ).first()


def schema_on(settings: Settings, shard: str, schema: str) -> bool:
    rows = shard_sql(settings, shard, "SELECT to_regnamespace(%s) IS NOT NULL", (schema,))
    return bool(rows and rows[0][0])


def veneer_schema(settings: Settings, schema: str) -> bool:
    with catalog.admin_connection(settings) as conn:
        return bool(
            conn.execute(text("SELECT to_regnamespace(:s) IS NOT NULL"), {"s": schema}).scalar()
        )


def forget(settings: Settings, schemas: list[str]) -> None:
    """Remove test tenants wherever they got to (catalog, veneer, shard)."""
    with catalog.admin_connection(settings) as conn:
        shards = dict(
            conn.execute(
                text("SELECT schema, shard FROM ppp.tenants WHERE schema = ANY(:s)"),
                {"s": schemas},
            ).all()
        )
        for schema in schemas:
            catalog.unregister_tenant(conn, schema)
    for schema in schemas:
        for shard in [shards[schema]] if schema in shards else list(settings.shards):
            shard_sql(settings, shard, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def tenants(veneer_head: Topology) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    forget(veneer_head.settings, made)


def test_create_wire_remove_keep_then_drop_with_archive(
    veneer_head: Topology, tenants: list[str], tmp_path: Path
) -> None:
    settings = veneer_head.settings
    schema = name()
    tenants.append(schema)
    result = create_tenant(settings, schema, "cyberdyne", INI)
    assert (result.schema, result.shard, result.revision, result.resumed) == (
        schema,
        "cyberdyne",
        "0002",
        False,
    )
    assert tuple(catalog_row(settings, schema)) == (schema, "cyberdyne", "active", "runtime")
    # The application reaches it through the veneer as its app role.
    with db.connection(settings.veneer, "app", autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute(
            f"INSERT INTO {schema}.authors (first_name, last_name) VALUES ('Ada', 'Lovelace')"
        )
        cur.execute(f"SELECT last_name FROM {schema}.authors WHERE first_name = 'Ada'")
        assert cur.fetchall() == [("Lovelace",)]
    assert shard_sql(
        settings, "cyberdyne", f"SELECT count(*) FROM {schema}.authors WHERE first_name = 'Ada'"
    ) == [(1,)]

    listed = json.loads(run("tenant", "list", "--json", schema).output)
    assert len(listed) == 1
    row = listed[0]
    assert (row["shard"], row["state"], row["origin"], row["revision"]) == (
        "cyberdyne",
        "active",
        "runtime",
        "0002",
    )
    assert row["exists"] is True and row["size"] > 0
    table = run("tenant", "list", schema)
    assert table.exit_code == 0 and "runtime" in table.output and "0002" in table.output

    # Remove: unwired, marked removed, data kept.
    out = run("tenant", "remove", schema)
    assert out.exit_code == 0, out.output
    assert "its data stays on shard cyberdyne" in out.output
    assert catalog_row(settings, schema).state == "removed"
    assert not veneer_schema(settings, schema)
    assert shard_sql(
        settings, "cyberdyne", f"SELECT count(*) FROM {schema}.authors WHERE first_name = 'Ada'"
    ) == [(1,)]
    again = run("tenant", "remove", schema)
    assert again.exit_code == 1 and "already removed" in again.output

    # --drop-data needs --yes; nothing changes without it.
    refused = run("tenant", "remove", schema, "--drop-data")
    assert refused.exit_code == 1 and "--yes" in refused.output
    assert schema_on(settings, "cyberdyne", schema)

    archive = tmp_path / "tenant.dump"
    out = run("tenant", "remove", schema, "--drop-data", "--yes", "--archive", str(archive))
    assert out.exit_code == 0, out.output
    assert "verified" in out.output and "schema dropped" in out.output
    assert archive.stat().st_size > 0
    assert not schema_on(settings, "cyberdyne", schema)
    assert catalog_row(settings, schema) is None
    # The archive holds the tenant's rows (listed by the same client programs that wrote it).
    from ppp_env.servers.clients import for_instance

    with archive.open("rb") as stream:
        client = for_instance(settings.shard("cyberdyne"))
        done = client.start("pg_restore", "--list", stdin=stream, connect=False)
        listing = done.communicate()[0].decode()
    assert done.returncode == 0
    assert f"TABLE DATA {schema} authors" in listing


def test_archive_never_overwrites_and_nothing_is_dropped(
    veneer_head: Topology, tenants: list[str], tmp_path: Path
) -> None:
    settings = veneer_head.settings
    schema = name()
    tenants.append(schema)
    create_tenant(settings, schema, "initech", INI)
    existing = tmp_path / "taken.dump"
    existing.write_text("keep me")
    with pytest.raises(PPPError, match="already exists: the archive never overwrites"):
        remove_tenant(settings, schema, drop_data=True, archive=existing)
    assert existing.read_text() == "keep me"
    assert catalog_row(settings, schema).state == "active"
    assert schema_on(settings, "initech", schema) and veneer_schema(settings, schema)


def _reject_create_schema(settings: Settings, shard: str, on: bool) -> None:
    inst = settings.shard(shard)
    with db.connection(inst, "superuser", dbname=inst.dbname, autocommit=True) as conn:
        cur = conn.cursor()
        if on:
            cur.execute(
                "CREATE FUNCTION public.ppp_test_reject() RETURNS event_trigger "
                "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected: CREATE SCHEMA "
                "rejected'; END $$"
            )
            cur.execute(
                "CREATE EVENT TRIGGER ppp_test_reject ON ddl_command_start "
                "WHEN TAG IN ('CREATE SCHEMA') EXECUTE FUNCTION public.ppp_test_reject()"
            )
        else:
            cur.execute("DROP EVENT TRIGGER IF EXISTS ppp_test_reject")
            cur.execute("DROP FUNCTION IF EXISTS public.ppp_test_reject()")


def test_create_resumes_after_a_failure_midway(veneer_head: Topology, tenants: list[str]) -> None:
    settings = veneer_head.settings
    schema = name()
    tenants.append(schema)
    _reject_create_schema(settings, "bluth_co", True)
    try:
        with pytest.raises(PPPError, match="injected: CREATE SCHEMA rejected") as err:
            create_tenant(settings, schema, "bluth_co", INI)
        assert "run the same create again" in str(err.value)
    finally:
        _reject_create_schema(settings, "bluth_co", False)
    assert tuple(catalog_row(settings, schema)) == (schema, "bluth_co", "provisioning", "runtime")
    assert not schema_on(settings, "bluth_co", schema)
    # Not another shard while it is half made; the same call finishes it.
    with pytest.raises(PPPError, match="is being created on shard 'bluth_co'"):
        create_tenant(settings, schema, "initech", INI)
    out = run("tenant", "create", schema, "-c", str(INI))
    assert out.exit_code == 0, out.output
    assert f"tenant {schema} finished on shard bluth_co at 0002" in out.output
    assert catalog_row(settings, schema).state == "active"
    assert veneer_schema(settings, schema)


def test_bad_input_changes_nothing(veneer_head: Topology, tenants: list[str]) -> None:
    settings = veneer_head.settings
    schema = name()
    tenants.append(schema)
    with catalog.admin_connection(settings) as conn:
        before = conn.execute(text("SELECT count(*) FROM ppp.tenants")).scalar()

    def count() -> Any:
        with catalog.admin_connection(settings) as conn:
            return conn.execute(text("SELECT count(*) FROM ppp.tenants")).scalar()

    for bad, message in [
        (("Bad-Name",), "invalid"),
        (("pg_nope",), "pg_"),
        ((schema, "--shard", "nope"), "unknown shard 'nope'"),
        (("bluth_co",), "an onboarding revision"),
    ]:
        out = run("tenant", "create", *bad, "-c", str(INI))
        assert out.exit_code == 1, (bad, out.output)
        assert out.output.startswith("Error: ") and message in out.output, out.output
    assert count() == before
    assert catalog_row(settings, schema) is None

    # An unreachable shard: a clear error, nothing registered.
    env = veneer_head.variant(PPP_SHARD_INITECH_PORT="1")
    unreachable = veneer_head.settings_for(env)
    with pytest.raises(PPPError, match="initech") as err:
        create_tenant(unreachable, schema, "initech", INI)
    assert "pw" not in str(err.value)
    assert catalog_row(settings, schema) is None and count() == before

    # A stray schema of that name on the shard is not adopted.
    shard_sql(settings, "initech", f"CREATE SCHEMA {schema}")
    with pytest.raises(PPPError, match="no catalog entry claims it"):
        create_tenant(settings, schema, "initech", INI)
    assert catalog_row(settings, schema) is None
    shard_sql(settings, "initech", f"DROP SCHEMA {schema}")

    create_tenant(settings, schema, "initech", INI)
    with pytest.raises(PPPError, match=f"tenant '{schema}' already exists on shard 'initech'"):
        create_tenant(settings, schema, None, INI)

    # remove with its shard unreachable: an error, still wired and active
    with pytest.raises(PPPError, match="initech"):
        remove_tenant(unreachable, schema)
    assert catalog_row(settings, schema).state == "active" and veneer_schema(settings, schema)

    # remove: unknown tenant, a revision's tenant
    example = tuple(catalog_row(settings, "bluth_co"))
    for bad, message in [
        (("lc_nobody_here",), "unknown tenant 'lc_nobody_here'"),
        (("bluth_co",), "ppp veneer downgrade --tenant bluth_co"),
    ]:
        out = run("tenant", "remove", *bad)
        assert out.exit_code == 1 and message in out.output, out.output
    assert tuple(catalog_row(settings, "bluth_co")) == example


def test_onboarding_refuses_a_runtime_tenant(veneer_head: Topology, tenants: list[str]) -> None:
    settings = veneer_head.settings
    schema = name()
    tenants.append(schema)
    create_tenant(settings, schema, "cyberdyne", INI)
    with (
        pytest.raises(PPPError, match="created at runtime"),
        catalog.admin_connection(settings) as conn,
    ):
        register_tenants(conn, [(schema, "cyberdyne")])
    from ppp_env.veneer.onboarding import add_tenant_revision

    with pytest.raises(PPPError, match="already in the catalog"):
        add_tenant_revision(settings, schema, "cyberdyne")


def test_placement_policies(
    veneer_head: Topology, tenants: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = veneer_head.settings
    assert placement_policy(None) == "fewest"
    monkeypatch.setenv("PPP_PLACEMENT", "random")
    with pytest.raises(PPPError, match="PPP_PLACEMENT='random': expected one of fewest"):
        placement_policy()
    monkeypatch.delenv("PPP_PLACEMENT")
    with catalog.admin_connection(settings) as conn:
        counts = dict(
            conn.execute(
                text(
                    "SELECT s.name, count(t.schema) FILTER (WHERE t.state <> 'removed') "
                    "FROM ppp.shards s LEFT JOIN ppp.tenants t ON t.shard = s.name GROUP BY 1"
                )
            ).all()
        )
        fewest = choose_shard(conn, settings, "fewest")
    assert counts[fewest] == min(counts.values())
    schema = name()
    tenants.append(schema)
    made = create_tenant(settings, schema, None, INI)
    assert made.shard == fewest
    with catalog.admin_connection(settings) as conn:
        following = choose_shard(conn, settings, "round_robin")
    names = sorted(settings.shards)
    assert following == names[(names.index(fewest) + 1) % len(names)]


def test_placement_function_and_notifications(veneer_head: Topology, tenants: list[str]) -> None:
    settings = veneer_head.settings
    schema = name()
    tenants.append(schema)
    listener = db.connect(settings.veneer, "app", autocommit=True)
    try:
        cur = listener.cursor()
        cur.execute("LISTEN ppp_placement")
        create_tenant(settings, schema, "initech", INI)
        cur.execute("SELECT shard, state FROM ppp.placement() WHERE schema = %s", (schema,))
        assert cur.fetchall() == [("initech", "active")]
        seen: set[str] = set()
        for _ in range(20):
            listener.poll()
            seen |= {n.payload for n in listener.notifies if n.channel == "ppp_placement"}
            if schema in seen:
                break
            select.select([listener], [], [], 0.1)
        assert schema in seen
        # The app role reads placement, never the catalog itself.
        for table in ("ppp.tenants", "ppp.shards", "ppp.moves", "ppp.alembic_version"):
            with pytest.raises(Exception, match="permission denied"):
                cur.execute(f"SELECT * FROM {table}")
    finally:
        listener.close()


def test_lifecycle_revision_downgrade_refused_with_runtime_tenants(
    veneer_head: Topology, tenants: list[str]
) -> None:
    settings = veneer_head.settings
    schema = name()
    tenants.append(schema)
    create_tenant(settings, schema, "bluth_co", INI)
    before = veneer_env.current_versions(settings)
    # Two steps down that line: the release revision (tags, rollouts), then the lifecycle's.
    with pytest.raises(PPPError, match="1 tenant\\(s\\) created at runtime"):
        veneer_env.downgrade(settings, f"{catalog.LIFECYCLE_REVISION}@-2")
    assert veneer_env.current_versions(settings) == before
    assert catalog_row(settings, schema).origin == "runtime"


def test_concurrent_creates(veneer_head: Topology, tenants: list[str]) -> None:
    settings = veneer_head.settings
    names = [name("lcc") for _ in range(20)]
    tenants.extend(names)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda s: create_tenant(settings, s, None, INI), names))
    assert sorted(r.schema for r in results) == sorted(names)
    rows = {r.schema: r for r in tenant_rows(settings, tenants=names)}
    assert {(r.state, r.origin, r.revision) for r in rows.values()} == {
        ("active", "runtime", "0002")
    }
    assert len({r.shard for r in rows.values()}) == 3  # fewest spreads them


def test_create_finishes_a_schema_left_half_way(veneer_head: Topology, tenants: list[str]) -> None:
    """A schema already there (an earlier call got that far): the fleet runner finishes it."""
    settings = veneer_head.settings
    schema = name()
    tenants.append(schema)
    with catalog.admin_connection(settings) as conn:
        conn.execute(
            text(
                "INSERT INTO ppp.tenants (schema, shard, state, origin) "
                "VALUES (:s, 'cyberdyne', 'provisioning', 'runtime')"
            ),
            {"s": schema},
        )
    shard_sql(settings, "cyberdyne", f"CREATE SCHEMA {schema}")
    result = create_tenant(settings, schema, None, INI)
    assert (result.shard, result.revision, result.resumed) == ("cyberdyne", "0002", True)
    assert catalog_row(settings, schema).state == "active"
    rows = tenant_rows(settings, tenants=[schema])
    assert (rows[0].revision, rows[0].exists) == ("0002", True)


def test_archive_with_client_programs_older_than_the_server_drops_nothing(
    veneer_head: Topology, tenants: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg_dump older than the server refuses to dump it: PPP says so before it unwires or
    drops anything, and writes no archive."""
    settings = veneer_head.settings
    schema = name()
    tenants.append(schema)
    create_tenant(settings, schema, "initech", INI)
    old = fake_client_programs(tmp_path / "bin")
    monkeypatch.setenv("PPP_PG_BINDIR", str(old))
    local = without_containers(veneer_head)
    archive = tmp_path / "tenant.dump"
    with pytest.raises(PPPError) as caught:
        remove_tenant(local, schema, drop_data=True, archive=archive)
    message = str(caught.value)
    assert message.startswith(
        "no pg_dump/psql/pg_restore in PPP_PG_BINDIR can work with shard 'initech' (PostgreSQL "
    )
    assert f"found 9.6.0 in {old}; install postgresql-client-" in message
    assert_one_sentence(message, secrets_of(local))
    assert not archive.exists()
    assert catalog_row(settings, schema).state == "active"
    assert schema_on(settings, "initech", schema) and veneer_schema(settings, schema)
    monkeypatch.delenv("PPP_PG_BINDIR")
    out = run("tenant", "remove", schema, "--drop-data", "--yes", "--archive", str(archive))
    assert out.exit_code == 0, out.output  # with the session's settings it works
    assert archive.stat().st_size > 0 and not schema_on(settings, "initech", schema)


def test_list_estimates_sizes_for_the_fleet_and_is_exact_on_request(
    veneer_head: Topology, tenants: list[str]
) -> None:
    """Exact sizes open every relation of every tenant on the shard (too slow for a whole
    large fleet): the fleet's list estimates them, named tenants and --exact-sizes are exact."""
    settings = veneer_head.settings
    schema = name("lsz")
    tenants.append(schema)
    create_tenant(settings, schema, "initech", INI)
    shard_sql(
        settings,
        "initech",
        f"INSERT INTO {schema}.authors (first_name, last_name) "
        "SELECT 'a' || i, repeat('x', 500) FROM generate_series(1, 2000) i",
    )
    shard_sql(settings, "initech", f"ANALYZE {schema}.authors")
    fleet = {r["schema"]: r for r in json.loads(run("tenant", "list", "--json").output)}
    row = fleet[schema]
    assert row["size"] is None and row["size_estimate"] > 1_000_000  # 2,000 rows of 500 bytes
    exact = {
        r["schema"]: r for r in json.loads(run("tenant", "list", "--json", "--exact-sizes").output)
    }
    assert exact[schema]["size"] >= row["size_estimate"]
    (named,) = json.loads(run("tenant", "list", "--json", schema).output)
    assert named["size"] == exact[schema]["size"]
    table = run("tenant", "list", "--shard", "initech").output
    assert "~" in next(line for line in table.splitlines() if schema in line)
    assert len(fleet) == len(exact) >= 1  # one JSON array however many rows
