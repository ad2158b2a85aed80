"""Tenants onboarded on parallel branches, then merged: no Alembic merge needed.

Each "branch" is a private copy of veneer_migrations in which `ppp tenant add` ran; the
merge copies both new files into one folder (what git does). The veneer is then upgraded
with `ppp veneer upgrade`, plain `alembic -n veneer upgrade head|heads`, or `ppp migrate`,
one tenant is taken back, and the upgrade runs again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from click.testing import CliRunner

from ppp_env.cli.main import cli
from ppp_env.settings import Settings
from ppp_env.veneer import catalog
from ppp_env.veneer import env as veneer_env
from ppp_env.veneer.env import plan_upgrade_to_heads
from ppp_env.veneer.onboarding import add_tenant_revision, find_tenant_revisions, structural_head
from tests.plugins.veneer import (
    EXAMPLE,
    ROOT,
    alembic_config,
    app_conn,
    copy_script_dir,
    drop_tenant_data,
    make_tenant_data,
)

pytestmark = pytest.mark.usefixtures("veneer_ready")

A, B = "vt_onb_a", "vt_onb_b"
SHARDS = {A: "bluth_co", B: "initech"}


def ini_for(tmp: Path, location: Path) -> Path:
    """An alembic.ini like the project's, whose veneer section uses ``location``."""
    text = (ROOT / "alembic.ini").read_text()
    text = text.replace("%(here)s/veneer_migrations", str(location))
    text = text.replace("%(here)s/", str(ROOT) + "/")
    ini = tmp / "alembic.ini"
    ini.write_text(text)
    return ini


@pytest.fixture
def merged(settings: Settings, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """Two branches each add a tenant from the same head; the merged script folder, and
    each tenant's revision. Cleans the veneer and the shards up afterwards."""
    branches = {}
    for tenant in (A, B):
        location = copy_script_dir(tmp_path / tenant)
        cfg = alembic_config(settings, location)
        add_tenant_revision(settings, tenant, SHARDS[tenant], config=cfg)
        branches[tenant] = location
    main = copy_script_dir(tmp_path / "main")
    revs = {}
    for tenant, location in branches.items():
        (found,) = find_tenant_revisions(
            ScriptDirectory.from_config(alembic_config(None, location)), tenant
        )
        shutil.copy(found.path, main / "versions" / found.path.name)
        revs[tenant] = found.revision
    for tenant in (A, B):
        drop_tenant_data(settings.shards[SHARDS[tenant]], tenant)
    try:
        yield main, revs
    finally:
        applied = veneer_env.current_versions(settings)
        for tenant, rev in revs.items():
            if rev in applied:
                veneer_env.downgrade(settings, f"{rev}@-1", alembic_config(settings, main))
            drop_tenant_data(settings.shards[SHARDS[tenant]], tenant)


def registered(settings: Settings) -> dict[str, str]:
    with catalog.admin_connection(settings) as conn:
        return {
            t.schema: t.state for t in catalog.find_tenants(conn) if t.schema in (A, B, *EXAMPLE)
        }


def test_two_adds_from_the_same_head_have_two_heads(
    settings: Settings, merged: tuple[Path, dict[str, str]]
) -> None:
    main, revs = merged
    script = ScriptDirectory.from_config(alembic_config(None, main))
    base = structural_head(script)
    for rev in revs.values():
        assert script.get_revision(rev).down_revision == base
    assert set(revs.values()) <= set(script.get_heads())


@pytest.mark.parametrize("first", [A, B])
def test_merged_branches_apply_in_either_order_and_one_comes_back(
    settings: Settings, merged: tuple[Path, dict[str, str]], tmp_path: Path, first: str
) -> None:
    main, revs = merged
    second = B if first == A else A
    make_tenant_data(settings.shards[SHARDS[first]], first)
    # One branch's tenant was applied before the merge (its file alone), then the merge.
    alone = copy_script_dir(tmp_path / "alone")
    shutil.copy(next((main / "versions").glob(f"{revs[first]}_*.py")), alone / "versions")
    result = veneer_env.upgrade(settings, "head", alembic_config(settings, alone))
    assert result.registered == [first]
    assert result.wired is not None and result.wired.refreshed == [first]
    result = veneer_env.upgrade(settings, "head", alembic_config(settings, main))
    assert result.registered == [second]
    assert result.wired is not None and result.wired.pending == [second]
    assert registered(settings) == {
        **{t: "active" for t in EXAMPLE},
        first: "active",
        second: "pending",
    }
    assert set(result.after) == set(
        ScriptDirectory.from_config(alembic_config(None, main)).get_heads()
    )

    # Take one tenant back; every other tenant stays registered and wired.
    env = {"ALEMBIC_CONFIG": str(ini_for(tmp_path, main))}
    out = CliRunner().invoke(cli, ["veneer", "downgrade", "--tenant", first], env=env)
    assert out.exit_code == 0, out.output
    assert registered(settings) == {**{t: "active" for t in EXAMPLE}, second: "pending"}
    with catalog.admin_connection(settings) as conn:
        assert conn.exec_driver_sql(f"SELECT to_regnamespace('{first}')").scalar() is None
    conn = app_conn(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM bluth_co.authors")
            assert cur.fetchone()[0] > 0
    finally:
        conn.close()

    # ... and upgrade again brings it back.
    out = CliRunner().invoke(cli, ["veneer", "upgrade"], env=env)
    assert out.exit_code == 0, out.output
    assert f"wired 1 tenant: {first}" in out.output
    assert registered(settings)[first] == "active"


def test_plain_alembic_head_and_heads_and_ppp_migrate(
    settings: Settings, merged: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    main, revs = merged
    ini = ini_for(tmp_path, main)
    alembic = str(Path(sys.executable).parent / "alembic")
    env = {**os.environ, "ALEMBIC_CONFIG": str(ini)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [alembic, "-n", "veneer", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = run("upgrade", "head")
    assert done.returncode == 0, done.stderr
    assert registered(settings)[A] == "pending" and registered(settings)[B] == "pending"
    done = run("downgrade", f"{revs[A]}@-1")
    assert done.returncode == 0, done.stderr
    assert A not in registered(settings) and B in registered(settings)
    done = run("upgrade", "heads")
    assert done.returncode == 0, done.stderr
    assert A in registered(settings)
    done = run("current")
    assert done.returncode == 0, done.stderr
    assert {revs[A], revs[B]} <= {line.split()[0] for line in done.stdout.splitlines() if line}

    # ppp migrate end to end: the tenants' schemas are created on their shards and wired.
    out = CliRunner().invoke(
        cli, ["migrate", "-c", str(ini), "--tenant", f"{A},{B}"], env={"ALEMBIC_CONFIG": str(ini)}
    )
    assert out.exit_code == 0, out.output
    assert registered(settings)[A] == "active" and registered(settings)[B] == "active"


def test_the_plan_puts_the_veneers_own_revisions_before_tenants(tmp_path: Path) -> None:
    """Against Alembic's own plan: the same revisions, parents first, structural first."""
    versions = tmp_path / "scripts" / "versions"
    versions.mkdir(parents=True)
    (tmp_path / "scripts" / "env.py").write_text("")

    def write(rev: str, down: str | None, tenant: str | None = None) -> None:
        body = f"revision = {rev!r}\ndown_revision = {down!r}\n"
        body += "branch_labels = None\ndepends_on = None\n"
        if tenant:
            body += f"TENANT = {tenant!r}\n"
        body += "def upgrade(): pass\ndef downgrade(): pass\n"
        name = f"{rev}_{tenant}.py" if tenant else f"{rev}_structural.py"
        (versions / name).write_text(body)

    write("aaaaaaaaaaaa", None)
    write("t00000000001", "aaaaaaaaaaaa", "one")
    write("t00000000002", "aaaaaaaaaaaa", "two")
    write("bbbbbbbbbbbb", "aaaaaaaaaaaa")
    write("t00000000003", "bbbbbbbbbbbb", "three")
    write("cccccccccccc", "bbbbbbbbbbbb")
    script = ScriptDirectory(str(tmp_path / "scripts"))
    for current in [(), ("t00000000001",), ("t00000000002", "bbbbbbbbbbbb")]:
        ours = [s.revision.revision for s in plan_upgrade_to_heads(script, current)]
        theirs = [s.revision.revision for s in script._upgrade_revs("heads", current)]
        assert sorted(ours) == sorted(theirs)
        for i, rev in enumerate(ours):
            down = script.get_revision(rev).down_revision
            assert down not in ours[i:]
        own = [r for r in ours if not r.startswith("t")]
        assert ours[: len(own)] == own
    assert structural_head(script) == "cccccccccccc"
    write("dddddddddddd", "bbbbbbbbbbbb")
    with pytest.raises(Exception, match="the veneer's own revisions have 2 heads"):
        structural_head(ScriptDirectory(str(tmp_path / "scripts")))
