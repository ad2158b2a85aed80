"""The docs stay true: `make help` lists every target, .env.example every setting, and the
Makefile and .ci/run call what they claim to call."""

from __future__ import annotations

import re
import shutil
import subprocess
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


@pytest.mark.parametrize(
    ("target", "command"),
    [
        ("start-containers", "$(PPP) local up"),
        ("stop-containers", "$(PPP) local down"),
        ("initialize-databases", "$(PPP) init"),
        ("teardown-databases", "$(PPP) teardown --yes"),
        ("migrations", "$(PPP) migrate"),
        *((f"psql-{n.replace('_', '-')}", f"$(PPP) psql {n}") for n in ("veneer", *EXAMPLE_SHARDS)),
        *(
            (f"show-logs-{n.replace('_', '-')}", f"$(PPP) logs {n}")
            for n in ("veneer", *EXAMPLE_SHARDS)
        ),
        ("lint", "$(BIN)/mypy"),
        ("test", "$(BIN)/python -m pytest $(PYTEST_ARGS)"),
        ("demo", "$(PPP) demo"),
    ],
)
def test_target_runs_its_command(target: str, command: str) -> None:
    m = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n)+)", MAKEFILE, re.M)
    assert m, target
    assert f"\t{command}\n" in m.group(1)


def test_python_targets_depend_on_the_installed_venv() -> None:
    for target in targets():
        if target in ("help", "clean", "test"):
            continue
        line = re.search(rf"^{re.escape(target)}:([^\n#]*)", MAKEFILE, re.M)
        assert line and "$(STAMP)" in line.group(1), target
    assert re.search(r"^test: lint\b", MAKEFILE, re.M)
    assert re.search(r"^VENV \?= \.venv$", MAKEFILE, re.M)
    assert re.search(r"^PYTHON \?= python3$", MAKEFILE, re.M)


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
    # The veneer has no FDW address of its own: only shards are reached through postgres_fdw.
    missing -= {"PPP_VENEER_FDW_HOST", "PPP_VENEER_FDW_PORT"}
    assert not missing, f".env.example does not document: {sorted(missing)}"
    assert "PPP_TEST_BACKEND" in documented
    for line in example.splitlines():
        if "PASSWORD=" in line:
            assert "change-me" in line, line


def test_ci_script() -> None:
    script = ROOT / ".ci" / "run"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert "export CI=true" in text
    assert "apt-get install" in text and "postgresql postgresql-contrib" in text
    assert "make install" in text and 'TARGET="${CI_MAKE_TARGET:-test}"' in text
    assert script.stat().st_mode & 0o111
    if shutil.which("bash"):
        subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)


def test_dotenv_example_is_a_valid_topology(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    s = load_settings(environ={"PPP_PROJECT_DIR": str(tmp_path)})
    assert [i.name for i in s.instances] == ["veneer", *EXAMPLE_SHARDS]
    assert s.veneer.port == 15432 and s.shard("initech").port == 15435
