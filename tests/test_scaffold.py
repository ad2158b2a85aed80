"""`ppp new`: the tree it writes, what it refuses, the templates kept identical to this
repository's files, and a scaffolded project's `ppp` and `alembic` against real servers."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ppp_env import scaffold
from ppp_env.cli.main import cli
from ppp_env.db import connection
from ppp_env.errors import PPPError
from ppp_env.servers.local import EXAMPLE_SHARDS
from ppp_env.servers.provision import teardown
from ppp_env.settings import env_prefix, load_settings
from ppp_env.veneer.onboarding import TENANT_FILE

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TEMPLATE = ROOT / "ppp_env" / "templates" / "project"

# Template files that differ from the repository's file of the same path on purpose.
OWN_FILES = {".gitignore"}
# Documentation-like files that may lag the repository's between two `make templates` (the
# repository's .env.example grows with every setting): checked for what a project needs.
MAY_LAG = {".env.example", "docker-compose.yml", "shared_migrations/README.md"}


def structural_veneer_revisions() -> list[str]:
    """The veneer's own revisions in this repository (the catalog line), no tenant's."""
    folder = ROOT / "veneer_migrations" / "versions"
    return sorted(
        f"veneer_migrations/versions/{p.name}"
        for p in folder.glob("*.py")
        if not TENANT_FILE.fullmatch(p.name)
    )


def expected_tree() -> list[str]:
    return sorted(
        [
            ".env.example",
            ".gitignore",
            "alembic.ini",
            "docker-compose.yml",
            "migrations/env.py",
            "migrations/models.py",
            "migrations/script.py.mako",
            "migrations/versions/0001_create_authors.py",
            "shared_migrations/README.md",
            "shared_migrations/env.py",
            "shared_migrations/script.py.mako",
            "shared_migrations/versions/.gitkeep",
            "veneer_migrations/env.py",
            "veneer_migrations/script.py.mako",
            *structural_veneer_revisions(),
        ]
    )


def tree(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )


def new(*args: str):
    return CliRunner().invoke(cli, ["new", *args])


def test_templates_are_the_repository_files() -> None:
    """Each template file is a byte-for-byte copy of the repository's (`make templates`)."""
    differ = []
    for rel in scaffold.template_files():
        if str(rel) in OWN_FILES | MAY_LAG:
            continue
        mine = ROOT / rel
        if not mine.is_file() or mine.read_bytes() != (TEMPLATE / rel).read_bytes():
            differ.append(str(rel))
    assert differ == [], f"templates out of date, run `make templates`: {differ}"
    assert [str(r) for r in scaffold.template_files()] == expected_tree()


def documented(text: str) -> set[str]:
    return set(re.findall(r"^#? ?(PPP_[A-Z0-9_]+)=", text, re.M))


def test_lagging_templates_still_fit(tmp_path: Path) -> None:
    """.env.example: a valid example topology documenting no setting the repository's does
    not; docker-compose.yml: the repository's services; the shared README is there."""
    example = (TEMPLATE / ".env.example").read_text()
    stale = documented(example) - documented((ROOT / ".env.example").read_text())
    assert not stale, f"the template documents settings PPP no longer has: {sorted(stale)}"
    (tmp_path / ".env").write_text(example)
    s = load_settings(environ={"PPP_PROJECT_DIR": str(tmp_path)})
    assert [i.name for i in s.instances] == ["veneer", *EXAMPLE_SHARDS]

    def services(path: Path) -> list[str]:
        return sorted(yaml.safe_load(path.read_text())["services"])

    assert services(TEMPLATE / "docker-compose.yml") == services(ROOT / "docker-compose.yml")
    assert "alembic -n shared" in (TEMPLATE / "shared_migrations" / "README.md").read_text()


def test_new_writes_exactly_the_tree(tmp_path: Path) -> None:
    target = tmp_path / "a" / "proj"
    result = new(str(target))
    assert result.exit_code == 0, result.output
    assert tree(target) == expected_tree()
    lines = result.stdout.splitlines()
    assert lines[: len(expected_tree())] == [f"wrote {target / f}" for f in expected_tree()]
    assert lines[-7:] == [
        "next:",
        f"  cd {target}",
        "  ppp local up",
        "  ppp init",
        "  ppp tenant add acme --shard bluth_co",
        "  ppp migrate",
        "  ppp status",
    ]
    # No example tenant comes along: the veneer's chain is the catalog line only.
    assert not any(TENANT_FILE.fullmatch(Path(f).name) for f in tree(target))
    assert (target / "shared_migrations" / "versions").is_dir()
    assert (target / "alembic.ini").read_bytes() == (ROOT / "alembic.ini").read_bytes()


def test_new_into_an_empty_existing_folder(tmp_path: Path) -> None:
    result = new(str(tmp_path))
    assert result.exit_code == 0, result.output
    assert tree(tmp_path) == expected_tree()


def test_new_refuses_a_non_empty_folder_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    result = new(str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {tmp_path} is not empty: choose a new folder, or pass --force to write "
        "the project's files over the ones of the same name there\n"
    )
    assert result.stdout == ""
    assert tree(tmp_path) == ["notes.txt"]


def test_new_refuses_a_file_and_what_is_in_the_way(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    result = new(str(a_file))
    assert result.exit_code == 1
    assert result.stderr == f"Error: {a_file} exists and is not a folder\n"
    assert a_file.read_text() == "x"

    # With --force, a file where the project needs a folder stops it before any write.
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "migrations").write_text("not a folder")
    result = new(str(tmp_path / "p"), "--force")
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {tmp_path / 'p' / 'migrations'} is in the way: the project needs a folder there\n"
    )
    assert tree(tmp_path / "p") == ["migrations"]

    (tmp_path / "q" / "alembic.ini").mkdir(parents=True)
    with pytest.raises(PPPError, match=r"alembic\.ini is a folder"):
        scaffold.new_project(tmp_path / "q", force=True)
    assert [p.name for p in (tmp_path / "q").iterdir()] == ["alembic.ini"]


def test_new_force_overwrites_the_projects_files_only(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "alembic.ini").write_text("old\n")
    result = new(str(tmp_path), "--force")
    assert result.exit_code == 0, result.output
    assert f"overwrote {tmp_path / 'alembic.ini'}" in result.stdout.splitlines()
    assert f"wrote {tmp_path / 'alembic.ini'}" not in result.stdout.splitlines()
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
    assert (tmp_path / "alembic.ini").read_bytes() == (ROOT / "alembic.ini").read_bytes()
    assert tree(tmp_path) == sorted([*expected_tree(), "notes.txt"])


# -- a scaffolded project against the session's servers ------------------------------------------
def run(project: Path, env: dict[str, str], *cmd: str) -> subprocess.CompletedProcess[str]:
    """A console script of this environment, in the project folder."""
    done = subprocess.run(
        [str(BIN / cmd[0]), *cmd[1:]],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout}\n{done.stderr}"
    return done


def test_scaffolded_project_migrates_a_tenant(topology, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    scaffold.new_project(project)
    tag = f"sc{secrets.token_hex(3)}"
    tenant = f"{tag}_acme"
    env = {k: v for k, v in os.environ.items() if k not in ("PPP_ENV", "ALEMBIC_CONFIG")}
    env.update(topology.environ)
    # Databases and roles of its own on the session's servers, so the project's chains
    # (without this repository's example tenants) start from nothing.
    for name in ("veneer", *topology.settings.shards):
        p = env_prefix("veneer" if name == "veneer" else "shard", name)
        env[f"{p}DB"] = f"{tag}_{name}"
        env[f"{p}ADMIN_PASSWORD"] = f"adm-{secrets.token_urlsafe(12)}"
        env[f"{p}APP_PASSWORD"] = f"app-{secrets.token_urlsafe(12)}"
    env["PPP_PROJECT_DIR"] = str(project)
    settings = load_settings(environ=env)
    try:
        run(project, env, "ppp", "init")
        added = run(project, env, "ppp", "tenant", "add", tenant, "--shard", "bluth_co")
        onboarding = list((project / "veneer_migrations" / "versions").glob(f"t*_{tenant}.py"))
        assert len(onboarding) == 1 and f"wrote {onboarding[0]}" in added.stdout
        migrated = run(project, env, "ppp", "migrate")
        assert "1 migrated" in migrated.stdout + migrated.stderr
        run(project, env, "alembic", "upgrade", "head")
        current = run(project, env, "alembic", "-n", "veneer", "current")
        assert onboarding[0].name.split("_")[0] in current.stdout
        status = run(project, env, "ppp", "status", "--json")
        assert tenant in status.stdout and '"0001"' in status.stdout

        with connection(settings.shard("bluth_co"), "admin") as conn, conn.cursor() as cur:
            cur.execute(f'SELECT version_num FROM "{tenant}".alembic_version')
            assert cur.fetchall() == [("0001",)]
        # The application's path: the tenant's table through the veneer.
        with connection(settings.veneer, "app") as conn, conn.cursor() as cur:
            cur.execute(f'SELECT count(*) FROM "{tenant}".authors')
            assert cur.fetchall() == [(0,)]
    finally:
        with contextlib.suppress(PPPError):
            teardown(settings)
