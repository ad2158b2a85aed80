"""The docs stay true: `make help` lists every target, .env.example every setting, and the
Makefile and .ci/run do what they claim (checked by running `make -n` and .ci/run itself)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ppp_env.servers.local import EXAMPLE_SHARDS
from ppp_env.settings import env_prefix, load_settings

ROOT = Path(__file__).resolve().parent.parent
MAKEFILE = (ROOT / "Makefile").read_text()

EXAMPLE_TARGETS = [
    "start-containers",
    "stop-containers",
    "initialize-databases",
    "teardown-databases",
    "migrations",
    *(f"psql-{n.replace('_', '-')}" for n in ("veneer", *EXAMPLE_SHARDS)),
    *(f"show-logs-{n.replace('_', '-')}" for n in ("veneer", *EXAMPLE_SHARDS)),
    "lint",
    "test",
    "demo",
    "help",
]


def targets() -> list[str]:
    """Every explicit target (not the stamp file, not variables)."""
    found = re.findall(r"^([a-zA-Z0-9][a-zA-Z0-9_.-]*):(?!=)", MAKEFILE, re.M)
    return [t for t in found if not t.startswith(".")]


def make_help() -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    res = subprocess.run(
        ["make", "--no-print-directory", "-s", "help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return res.stdout


def test_make_help_lists_every_target_once() -> None:
    out = make_help()
    listed = re.findall(r"^\s+make (\S+)\s+\S", out, re.M)
    assert sorted(listed) == sorted(targets())
    assert len(listed) == len(set(listed))
    for name in EXAMPLE_TARGETS:
        assert name in listed, name
    # `make` alone is `make help`.
    res = subprocess.run(["make", "-s", "-n"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "awk" in res.stdout


def make_n(*args: str) -> list[str]:
    """The commands `make -n` would run (nothing is run), one per line."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    res = subprocess.run(
        ["make", "--no-print-directory", "-n", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()


def venv_dir() -> Path:
    """The virtual environment running the tests (its tools sit next to sys.executable)."""
    return Path(sys.executable).parent.parent


@pytest.mark.parametrize(
    ("target", "commands"),
    [
        ("start-containers", ["{ppp} local up"]),
        ("stop-containers", ["{ppp} local down"]),
        ("initialize-databases", ["{ppp} init"]),
        ("teardown-databases", ["{ppp} teardown --yes"]),
        ("migrations", ["{ppp} migrate"]),
        *(
            (f"psql-{n.replace('_', '-')}", [f"{{ppp}} psql {n}"])
            for n in ("veneer", *EXAMPLE_SHARDS)
        ),
        *(
            (f"show-logs-{n.replace('_', '-')}", [f"{{ppp}} logs {n}"])
            for n in ("veneer", *EXAMPLE_SHARDS)
        ),
        ("lint", ["{bin}/ruff check .", "{bin}/ruff format --check .", "{bin}/mypy"]),
        (
            "test",
            [
                "{bin}/ruff check .",
                "{bin}/ruff format --check .",
                "{bin}/mypy",
                "{bin}/python -m pytest -q",
            ],
        ),
        ("demo", ["{ppp} local up", "{ppp} init", "{ppp} migrate", "{ppp} demo"]),
    ],
)
def test_target_runs_its_command(target: str, commands: list[str]) -> None:
    """What make would run for the target, with this venv installed (its stamp not remade)."""
    venv = venv_dir()
    stamp = venv / ".ppp-installed"
    ran = make_n(f"VENV={venv}", "PYTEST_ARGS=-q", "-o", str(stamp), target)
    expected = [c.format(ppp=venv / "bin" / "ppp", bin=venv / "bin") for c in commands]
    assert [line.strip() for line in ran] == expected


def test_python_targets_depend_on_the_installed_venv(tmp_path: Path) -> None:
    """On a fresh clone (no venv) every target that runs Python installs it first."""
    fresh = tmp_path / "venv"
    for target in targets():
        if target in ("help", "clean"):
            continue
        ran = make_n(f"VENV={fresh}", target)
        install = f"{fresh}/bin/python -m pip install --quiet -e '.[test]'"
        assert install in ran, (target, ran)
        assert ran[0].startswith(f"test -x {fresh}/bin/python || python3 -m venv {fresh}"), ran
    assert "rm -rf" not in " ".join(make_n(f"VENV={fresh}", "help"))
    # make's defaults: the venv is .venv, made by python3.
    assert make_n("-o", ".venv/.ppp-installed", "migrations") == [".venv/bin/ppp migrate"]


def settings_in_code() -> set[str]:
    """Every PPP_* variable the library reads, with instance variables spelled out."""
    names: set[str] = set()
    suffixes: set[str] = set()
    for path in (ROOT / "ppp_env").glob("*.py"):
        text = path.read_text()
        names.update(re.findall(r"\b(PPP_[A-Z][A-Z0-9_]*[A-Z0-9])\b", text))
        suffixes.update(re.findall(r'f"\{p\}([A-Z_]+)"', text))
    names -= {"PPP_VENEER", "PPP_SHARD"}
    assert {"HOST", "PORT", "DB", "APP_PASSWORD", "FDW_HOST"} <= suffixes
    for suffix in suffixes:
        names.add(env_prefix("veneer", "veneer") + suffix)
        names.add(env_prefix("shard", EXAMPLE_SHARDS[0]) + suffix)
    return names


def test_env_example_documents_every_setting() -> None:
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#? ?(PPP_[A-Z0-9_]+)=", example, re.M))
    missing = settings_in_code() - documented
    # The veneer has no FDW address of its own: only shards are reached through postgres_fdw;
    # nor replicas that pace a fleet run: only shards run tenant migrations.
    missing -= {"PPP_VENEER_FDW_HOST", "PPP_VENEER_FDW_PORT", "PPP_VENEER_REPLICA_URLS"}
    assert not missing, f".env.example does not document: {sorted(missing)}"
    assert "PPP_TEST_BACKEND" in documented
    for line in example.splitlines():
        if "PASSWORD=" in line:
            assert "change-me" in line, line


def test_ci_script(tmp_path: Path) -> None:
    """.ci/run on this machine, with `make` and `apt-get` replaced by stand-ins that record
    their arguments: it finds what is installed, installs nothing, then makes the target."""
    script = ROOT / ".ci" / "run"
    assert script.stat().st_mode & 0o111
    assert shutil.which("bash"), "bash is needed to run .ci/run"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for tool in ("make", "apt-get"):
        fake = bin_dir / tool
        fake.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\n')
        fake.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "VENV": str(venv_dir()),
        "PYTHON": sys.executable,
        "CI_MAKE_TARGET": "help",
        # No kit and no engine: the container stage says it is skipped (and this run never
        # starts or stops the engine the suite itself may be using).
        "PPP_DOCKER_KIT": str(tmp_path / "no-kit"),
        "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock",
    }
    res = subprocess.run(
        [str(script)], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "==== make help ====" in res.stdout and "==== OK ====" in res.stdout
    assert "found initdb and pg_ctl in" in res.stdout
    assert "container stage skipped: no kit at" in res.stdout
    made = calls.read_text().splitlines()
    assert made == [
        f"make install VENV={venv_dir()} PYTHON={sys.executable}",
        f"make help VENV={venv_dir()} PYTHON={sys.executable}",
    ]
    assert not any(line.startswith("apt-get") for line in made)
    # Without CI_MAKE_TARGET it makes `test`, the README's test command.
    calls.unlink()
    del env["CI_MAKE_TARGET"]
    res = subprocess.run(
        [str(script)], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert calls.read_text().splitlines()[-1] == (
        f"make test VENV={venv_dir()} PYTHON={sys.executable}"
    )


def test_dotenv_example_is_a_valid_topology(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    s = load_settings(environ={"PPP_PROJECT_DIR": str(tmp_path)})
    assert [i.name for i in s.instances] == ["veneer", *EXAMPLE_SHARDS]
    assert s.veneer.port == 15432 and s.shard("initech").port == 15435


# -- the documentation: a short README, topic pages, a reference generated from the CLI -------
DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_command_reference_is_generated_from_the_cli() -> None:
    """docs/cli.md is what `make docs` writes today: every command, option and exit code.
    Generated in a fresh interpreter, as `make docs` does (click caches a command's help
    option once a test has invoked it)."""
    done = subprocess.run(
        [sys.executable, "-m", "ppp_env.cli.reference"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert (ROOT / "docs" / "cli.md").read_text() == done.stdout, (
        "docs/cli.md is out of date: run `make docs`"
    )


def test_reference_lists_every_command() -> None:
    reference = (ROOT / "docs" / "cli.md").read_text()
    for args in (["ppp", "local", "up"], ["ppp", "tenant", "move"], ["ppp", "veneer", "refresh"]):
        assert f"## {' '.join(args)}\n" in reference
        assert f"Usage: {' '.join(args)} [OPTIONS]" in reference
    assert "## Exit codes" in reference


def test_readme_is_short_and_every_page_is_linked() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    for page in (ROOT / "docs").glob("*.md"):
        assert f"(docs/{page.name})" in readme, f"README does not link docs/{page.name}"


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    text = page.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
    for anchor in re.findall(r"\]\(([^)#\s]*)#([^)]+)\)", text):
        file, name = anchor
        doc = (page.parent / file) if file else page
        if doc.suffix != ".md":
            continue
        assert name in _anchors(doc.read_text()), f"{page.name}: no anchor #{name} in {doc.name}"


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors (lower case, punctuation dropped, spaces to '-') and ids."""
    found = set(re.findall(r'<a id="([^"]+)"', markdown))
    for heading in re.findall(r"^#+ (.+)$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found
