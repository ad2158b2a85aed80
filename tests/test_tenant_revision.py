"""Tenant onboarding revisions (`ppp tenant add`), their upgrade and downgrade, and the CLI.

Revisions are written into a private copy of veneer_migrations (ALEMBIC_CONFIG points at
an alembic.ini whose [veneer] section uses it), never into the repository's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from click.testing import CliRunner

from ppp_env.cli.common import PPPGroup, State
from ppp_env.cli.tenant import tenant_group
from ppp_env.cli.veneer import veneer_group
from ppp_env.errors import PPPError
from ppp_env.settings import Settings
from ppp_env.veneer import catalog
from ppp_env.veneer import env as veneer_env
from ppp_env.veneer.onboarding import (
    TENANT_FILE,
    add_tenant_revision,
    downgrade_tenant,
    find_tenant_revisions,
    structural_head,
    tenant_revisions,
)
from tests.plugins.veneer import (
    EXAMPLE,
    ROOT,
    alembic_config,
    app_conn,
    copy_script_dir,
    drop_tenant_data,
    make_tenant_data,
    register,
    shard_sql,
    unregister,
)

pytestmark = pytest.mark.usefixtures("veneer_ready")


@click.group(cls=PPPGroup)
@click.pass_context
def ppp(ctx: click.Context) -> None:
    """The veneer's part of `ppp` (the same groups ppp_env.cli registers)."""
    ctx.obj = State(None, False)


ppp.add_command(veneer_group)
ppp.add_command(tenant_group)


def run(*args: str) -> Any:
    return CliRunner().invoke(ppp, list(args), catch_exceptions=False)


@pytest.fixture
def scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of veneer_migrations, and ALEMBIC_CONFIG pointing at it."""
    location = copy_script_dir(tmp_path)
    ini = (ROOT / "alembic.ini").read_text().replace("%(here)s/veneer_migrations", str(location))
    (tmp_path / "alembic.ini").write_text(ini)
    monkeypatch.setenv("ALEMBIC_CONFIG", str(tmp_path / "alembic.ini"))
    return location


def version_files(location: Path) -> list[str]:
    return sorted(p.name for p in (location / "versions").glob("*.py"))


# -- the committed revisions --------------------------------------------------------------------
def test_the_example_tenants_have_committed_revisions() -> None:
    cfg = alembic_config()
    script = ScriptDirectory.from_config(cfg)
    found = tenant_revisions(script)
    assert sorted(found) == sorted(EXAMPLE)
    catalog_rev = structural_head(script)
    assert "catalog" in script.get_revision(catalog_rev).doc.lower()
    for tenant, path in found.items():
        assert TENANT_FILE.fullmatch(path.name) and path.name.endswith(f"_{tenant}.py")
        sc = script.get_revision(path.name.split("_", 1)[0])
        assert (tenant, tenant) == (sc.module.TENANT, sc.module.SHARD)
        # Each tenant is a branch of its own from the catalog line (its head when the tenant
        # was added; structural revisions added later follow it): no tenant follows another.
        line = {r.revision for r in script.iterate_revisions(catalog_rev, "base")}
        assert sc.down_revision in line
    tenant_heads = [p.name.split("_", 1)[0] for p in found.values()]
    assert sorted(script.get_heads()) == sorted([*tenant_heads, catalog_rev])


# -- writing a revision -------------------------------------------------------------------------
def test_add_writes_a_revision_named_after_the_schema(settings: Settings, scripts: Path) -> None:
    before = version_files(scripts)
    result = run("tenant", "add", "vt_rev_new", "--shard", "initech")
    assert result.exit_code == 0, result.output
    (added,) = set(version_files(scripts)) - set(before)
    assert added.endswith("_vt_rev_new.py") and added in result.output
    body = (scripts / "versions" / added).read_text()
    assert "TENANT = 'vt_rev_new'" in body and "SHARD = 'initech'" in body
    assert "onboard(TENANT, SHARD)" in body and "offboard(TENANT)" in body
    assert settings.shards["initech"].host not in body
    assert str(settings.shards["initech"].port) not in body
    rev = added.split("_", 1)[0]
    script = ScriptDirectory.from_config(alembic_config(script_location=scripts))
    assert script.get_revision(rev).down_revision == structural_head(script)
    assert rev in script.get_heads() and len(script.get_heads()) == len(EXAMPLE) + 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["vt_rev_x", "--shard", "nope"], "Error: unknown shard 'nope'; PPP_SHARDS lists: "),
        (["Vt-Bad", "--shard", "initech"], "Error: invalid tenant schema name 'Vt-Bad'"),
        (["public", "--shard", "initech"], "Error: invalid tenant schema name 'public'"),
        (["pg_x", "--shard", "initech"], "names starting with 'pg_' are reserved"),
        # `$` in a regex matches before a trailing newline: names must match in full.
        (["vt_acme\n", "--shard", "initech"], "Error: invalid tenant schema name 'vt_acme\\n'"),
        (["vt_acme\n", "--shard", "initech", "--no-catalog-check"], "Error: invalid tenant"),
        (["vt_acme", "--shard", "initech\n"], "Error: unknown shard 'initech\\n'"),
        (
            ["bluth_co", "--shard", "bluth_co"],
            "Error: tenant 'bluth_co' already has an onboarding revision: ",
        ),
        (
            ["cyberdyne", "--shard", "initech", "--no-catalog-check"],
            "Error: tenant 'cyberdyne' already has an onboarding revision: ",
        ),
    ],
)
def test_add_refuses_bad_input_and_writes_nothing(
    scripts: Path, args: list[str], message: str
) -> None:
    before = version_files(scripts)
    result = run("tenant", "add", *args)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output and "AssertionError" not in result.output
    assert version_files(scripts) == before
    assert sorted(p.name for p in (scripts / "versions").iterdir() if p.suffix != ".py") == []


def test_add_refuses_a_tenant_already_in_the_catalog(settings: Settings, scripts: Path) -> None:
    register(settings, "vt_rev_dup", "cyberdyne")
    try:
        before = version_files(scripts)
        result = run("tenant", "add", "vt_rev_dup", "--shard", "bluth_co")
        assert result.exit_code == 1
        assert (
            "Error: tenant 'vt_rev_dup' is already in the catalog (on shard 'cyberdyne') "
            "without an onboarding revision"
        ) in result.output
        assert version_files(scripts) == before
    finally:
        unregister(settings, "vt_rev_dup")


def test_add_needs_a_reachable_veneer_unless_told(
    topology: Any, scripts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PPP_VENEER_PORT", "1")
    before = version_files(scripts)
    result = run("tenant", "add", "vt_rev_off", "--shard", "initech")
    assert result.exit_code == 1
    assert (
        "cannot connect to the veneer at postgresql+psycopg2://veneer_admin:***@" in result.output
    )
    assert "pass --no-catalog-check" in result.output
    assert topology.settings.veneer.admin_password not in result.output
    assert version_files(scripts) == before
    result = run("tenant", "add", "vt_rev_off", "--shard", "initech", "--no-catalog-check")
    assert result.exit_code == 0, result.output


# -- upgrade and downgrade of a tenant revision -------------------------------------------------
@pytest.fixture
def rev_tenant(settings: Settings, scripts: Path) -> Iterator[tuple[Settings, Any]]:
    """Tenant vt_rev on cyberdyne with data on its shard, and its revision (not applied)."""
    shard = settings.shards["cyberdyne"]
    drop_tenant_data(shard, "vt_rev")
    make_tenant_data(shard, "vt_rev")
    cfg = alembic_config(settings, script_location=scripts)
    add_tenant_revision(settings, "vt_rev", "cyberdyne", config=cfg)
    try:
        yield settings, cfg
    finally:
        undo(settings, scripts, "vt_rev")
        drop_tenant_data(shard, "vt_rev")


def undo(settings: Settings, scripts: Path, *tenants: str) -> None:
    """Take these tenants' onboarding revisions back if they are applied (test cleanup)."""
    script = ScriptDirectory.from_config(alembic_config(script_location=scripts))
    applied = veneer_env.current_versions(settings)
    for tenant in tenants:
        for found in find_tenant_revisions(script, tenant):
            if found.revision in applied:
                veneer_env.downgrade(
                    settings, f"{found.revision}@-1", alembic_config(settings, scripts)
                )


def test_upgrade_wires_and_downgrade_unwires_keeping_shard_data(
    rev_tenant: tuple[Settings, Any], scripts: Path
) -> None:
    settings, cfg = rev_tenant
    result = veneer_env.upgrade(settings, "head", cfg)
    assert result.after != result.before
    (tenant,) = catalog.list_tenants(settings, tenants=["vt_rev"])
    assert (tenant.shard, tenant.state) == ("cyberdyne", "active")
    conn = app_conn(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT last_name FROM vt_rev.authors WHERE first_name = 'Ernest'")
            assert cur.fetchall() == [("Hemingway",)]
    finally:
        conn.close()

    result = downgrade_tenant(settings, "vt_rev", alembic_config(settings, scripts))
    assert result.after == veneer_env.status(settings, alembic_config(settings)).heads
    with pytest.raises(PPPError, match="unknown tenant vt_rev"):
        catalog.list_tenants(settings, tenants=["vt_rev"])
    with catalog.admin_connection(settings) as conn:
        assert conn.exec_driver_sql("SELECT to_regnamespace('vt_rev')").scalar() is None
    rows = shard_sql(settings.shards["cyberdyne"], "SELECT count(*) FROM vt_rev.authors")
    assert rows == [(3,)]


def test_upgrade_of_a_tenant_without_schema_leaves_it_pending(
    settings: Settings, scripts: Path
) -> None:
    cfg = alembic_config(settings, script_location=scripts)
    drop_tenant_data(settings.shards["initech"], "vt_rev_later")
    add_tenant_revision(settings, "vt_rev_later", "initech", config=cfg)
    try:
        result = veneer_env.upgrade(settings, "head", cfg)
        assert result.registered == ["vt_rev_later"]
        assert result.wired is not None and result.wired.pending == ["vt_rev_later"]
        (tenant,) = catalog.list_tenants(settings, tenants=["vt_rev_later"])
        assert tenant.state == "pending"
    finally:
        undo(settings, scripts, "vt_rev_later")
    assert catalog.list_tenants(settings, tenants=list(EXAMPLE))


# -- the other commands -------------------------------------------------------------------------
def test_tenant_list(settings: Settings) -> None:
    result = run("tenant", "list", "--json", "bluth_co", "initech")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["schema"], r["shard"], r["state"]) for r in rows] == [
        ("bluth_co", "bluth_co", "active"),
        ("initech", "initech", "active"),
    ]
    result = run("tenant", "list", "--shard", "cyberdyne")
    assert result.exit_code == 0, result.output
    assert "cyberdyne" in result.output and "bluth_co" not in result.output
    result = run("tenant", "list", "--shard", "nope")
    assert result.exit_code == 1
    assert result.output.startswith("Error: unknown shard nope: the catalog has bluth_co")


def test_veneer_refresh_command(settings: Settings) -> None:
    result = run("veneer", "refresh", "bluth_co", "cyberdyne")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("refreshed 2 tenants in ")
    assert result.output.rstrip().endswith(": bluth_co, cyberdyne")
    result = run("veneer", "refresh", "vt_nope")
    assert result.exit_code == 1
    assert "Error: unknown tenant vt_nope: not in the catalog" in result.output


def test_veneer_upgrade_and_status_commands(settings: Settings) -> None:
    result = run("veneer", "upgrade")
    assert result.exit_code == 0, result.output
    assert "no revision to apply" in result.output
    result = run("veneer", "status")
    assert result.exit_code == 0, result.output
    assert "(at head)" in result.output
    for shard in settings.shards:
        assert shard in result.output


def test_alembic_command_line(settings: Settings) -> None:
    """`alembic -n veneer ...` as users type it, from the project folder."""
    alembic = str(Path(sys.executable).parent / "alembic")
    done = subprocess.run(
        [alembic, "-n", "veneer", "upgrade", "head"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [alembic, "-n", "veneer", "current"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "(head)" in done.stdout
    env = {k: v for k, v in os.environ.items() if k != "PPP_SHARDS"}
    done = subprocess.run(
        [alembic, "-n", "veneer", "upgrade", "head"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode != 0
    assert "FAILED: PPP_SHARDS is not set" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_offline_sql_is_refused_clearly(settings: Settings) -> None:
    with pytest.raises(CommandError, match="--sql is not supported for `alembic -n veneer`"):
        command.upgrade(alembic_config(settings), "head", sql=True)
