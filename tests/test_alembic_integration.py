"""PPP's environments talk to Alembic through its public API only: the running command comes
from ``config.attributes["ppp.command"]`` or ``config.cmd_opts``, the EnvironmentContext from
``context.get_context().environment_context``, the target from ``get_revision_argument``; one
alembic.ini lookup; ``-x env=NAME`` in every environment."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from ppp_env.errors import PPPError
from ppp_env.veneer import env as veneer_env
from tests.conftest import ROOT

ENV_PY = """
import json
from alembic import context
from ppp_env import alembic_adapter
from ppp_env.fleet.env import FleetEnvironment
from ppp_env.shared.env import SharedEnvironment
from ppp_env.veneer.env import VeneerEnvironment

env = alembic_adapter.running_environment()
seen = {
    "same_config": env.config is context.config,
    "fleet": FleetEnvironment(env, {}).command,
    "shared": SharedEnvironment(env, {}).command,
    "veneer": VeneerEnvironment(env, {}).command,
    "every_head": alembic_adapter.targets_every_head(env),
    "x": env.get_x_argument(as_dictionary=True),
}
context.config.attributes["seen"] = seen
print("SEEN " + json.dumps(seen, sort_keys=True))
"""

REVISION = """
revision = {rev!r}
down_revision = {down!r}
branch_labels = None
depends_on = {deps!r}


def upgrade():
    pass


def downgrade():
    pass
"""

#: a1 <- b1, a1 <- c1, a1 <- d1 (which depends on c1): three heads.
REVISIONS = {"a1": (None, None), "b1": ("a1", None), "c1": ("a1", None), "d1": ("a1", "c1")}


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    """A script folder whose env.py only records what PPP's helpers see (no database)."""
    location = tmp_path / "scripts"
    (location / "versions").mkdir(parents=True)
    (location / "env.py").write_text(ENV_PY)
    for rev, (down, deps) in REVISIONS.items():
        (location / "versions" / f"{rev}.py").write_text(
            REVISION.format(rev=rev, down=down, deps=deps)
        )
    ini = tmp_path / "alembic.ini"
    ini.write_text(
        f"[alembic]\nscript_location = {location}\nprepend_sys_path = {ROOT}\npath_separator = os\n"
    )
    return ini


def config(ini: Path, **attributes: object) -> Config:
    cfg = Config(str(ini), stdout=io.StringIO())
    cfg.attributes.update(attributes)
    return cfg


def seen(cfg: Config) -> dict[str, object]:
    found = cfg.attributes["seen"]
    assert isinstance(found, dict)
    return found


@pytest.mark.parametrize(
    ("call", "name", "every_head"),
    [
        (lambda cfg: command.upgrade(cfg, "head"), "upgrade", True),
        (lambda cfg: command.upgrade(cfg, "heads"), "upgrade", True),
        (lambda cfg: command.upgrade(cfg, "b1"), "upgrade", False),
        (lambda cfg: command.downgrade(cfg, "base"), "downgrade", False),
        (lambda cfg: command.stamp(cfg, "b1"), "stamp", False),
        (lambda cfg: command.current(cfg), "current", False),
    ],
)
def test_in_process_commands_are_named_without_private_names(
    scripts: Path, call, name: str, every_head: bool
) -> None:
    cfg = config(scripts)
    call(cfg)
    got = seen(cfg)
    assert got["same_config"] is True
    assert (got["fleet"], got["shared"], got["veneer"]) == (name, name, name)
    assert got["every_head"] is every_head


def test_ppp_attribute_then_cmd_opts_name_the_command(scripts: Path) -> None:
    # PPP's own in-process calls say what they run; that wins.
    cfg = config(scripts, **{"ppp.command": "upgrade"})
    command.stamp(cfg, "heads")
    assert seen(cfg)["veneer"] == "upgrade"
    # A caller that fills cmd_opts as Alembic's command line does.
    cfg = config(scripts)
    cfg.cmd_opts = argparse.Namespace(cmd=(command.history, [], []), x=None)
    command.current(cfg)
    assert (seen(cfg)["fleet"], seen(cfg)["shared"]) == ("history", "history")


def test_alembic_command_line_names_the_command_through_cmd_opts(scripts: Path) -> None:
    alembic = str(Path(sys.executable).parent / "alembic")
    proc = subprocess.run(
        [alembic, "-c", str(scripts), "-x", "env=alt", "upgrade", "heads"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=scripts.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("SEEN ")]
    assert '"fleet": "upgrade"' in line and '"every_head": true' in line
    assert '"x": {"env": "alt"}' in line


def test_upgrade_to_heads_is_planned_parents_and_dependencies_first(scripts: Path) -> None:
    script = ScriptDirectory.from_config(config(scripts))
    order = [step.revision.revision for step in veneer_env.plan_upgrade_to_heads(script, ())]
    assert sorted(order) == sorted(REVISIONS)
    assert order.index("a1") == 0 and order.index("c1") < order.index("d1")
    assert veneer_env.parents_of(script.revision_map, script.get_revision("d1")) == ("a1", "c1")
    # From c1: neither a1 nor c1 again.
    rest = [s.revision.revision for s in veneer_env.plan_upgrade_to_heads(script, ("c1",))]
    assert sorted(rest) == ["b1", "d1"]


# -- one alembic.ini lookup ---------------------------------------------------------------------
def test_find_alembic_ini_honours_an_explicit_path_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "mine.ini"
    mine.write_text("[alembic]\n")
    other = tmp_path / "other.ini"
    other.write_text("[alembic]\n")
    monkeypatch.setenv("ALEMBIC_CONFIG", str(other))
    monkeypatch.chdir(tmp_path)
    assert veneer_env.find_alembic_ini(mine) == mine
    assert veneer_env.find_alembic_ini(str(mine)) == mine
    assert veneer_env.find_alembic_ini() == other  # ALEMBIC_CONFIG, as Alembic's CLI
    monkeypatch.delenv("ALEMBIC_CONFIG")
    (tmp_path / "alembic.ini").write_text("[alembic]\n")
    assert veneer_env.find_alembic_ini() == tmp_path / "alembic.ini"


def test_find_alembic_ini_bad_paths_are_clear_errors(tmp_path: Path) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(PPPError, match=r"no Alembic configuration at .*nope\.ini \(not found\)"):
        veneer_env.find_alembic_ini(tmp_path / "nope.ini")
    with pytest.raises(PPPError, match=r"\(a folder\): pass -c alembic\.ini"):
        veneer_env.find_alembic_ini(tmp_path)
    with pytest.raises(PPPError, match="no Alembic configuration at"):
        veneer_env.veneer_config(None, tmp_path / "nope.ini")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created


# -- -x env=NAME in the veneer's and the tenants' environments (shared: test_shared) ------------
@pytest.mark.parametrize("section", ["veneer", "alembic"])
def test_x_env_selects_the_settings_file(veneer_head, tmp_path: Path, section: str) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / ".env.alt").write_text(
        "".join(f"{k}={v}\n" for k, v in veneer_head.environ.items() if k.startswith("PPP_"))
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPP_")}
    env["PPP_PROJECT_DIR"] = str(project)
    alembic = str(Path(sys.executable).parent / "alembic")

    def run_alembic(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [alembic, "-c", str(ROOT / "alembic.ini"), "-n", section, *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )

    proc = run_alembic("-x", "env=alt", "current")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if section == "alembic":
        assert "bluth_co bluth_co " in proc.stdout  # one line per tenant: shard tenant rev
    else:
        assert "(head)" in proc.stdout
    proc = run_alembic("current")  # no .env in the project folder, nothing in the environment
    assert proc.returncode != 0
    assert "PPP_SHARDS is not set" in proc.stdout + proc.stderr
