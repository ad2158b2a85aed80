"""A library leaves logging to its application: alembic.ini's ``[loggers]`` apply to the
``alembic`` command line (and to ``ppp`` when it asks with ``use_ini_logging``), never inside
an application that calls PPP."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from ppp_env.lifecycle import create_tenant, remove_tenant
from ppp_env.operations import MigrateOptions, migrate
from ppp_env.veneer import env as veneer_env
from tests.conftest import ROOT

PROBE_ENV = """
import logging

from ppp_env.alembic_env import PPPEnvironment


class Probe(PPPEnvironment):
    def current(self) -> None:
        logging.getLogger("ppp.probe").info("the probe ran")


Probe.main()
"""

INI = """
[alembic]
script_location = {scripts}
prepend_sys_path = {root}
path_separator = os

[loggers]
keys = root,ppp

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console

[logger_ppp]
level = INFO
handlers =
qualname = ppp

[handler_console]
class = StreamHandler
args = (sys.stderr,)
formatter = generic

[formatter_generic]
format = FROM-INI %(levelname)s [%(name)s] %(message)s
"""

NAMES = ["", "alembic", "ppp", "ppp.veneer", "sqlalchemy.engine"]


@pytest.fixture
def ini(tmp_path: Path) -> Path:
    scripts = tmp_path / "scripts"
    (scripts / "versions").mkdir(parents=True)
    (scripts / "env.py").write_text(PROBE_ENV)
    path = tmp_path / "alembic.ini"
    path.write_text(INI.format(scripts=scripts, root=ROOT))
    return path


@pytest.fixture
def application() -> Iterator[io.StringIO]:
    """The application's own logging: a root handler with its format, its levels."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("APP %(name)s %(message)s"))
    root = logging.getLogger()
    saved = {name: logging.getLogger(name).level for name in NAMES}
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("ppp").setLevel(logging.NOTSET)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def snapshot() -> tuple[object, ...]:
    root = logging.getLogger()
    return (
        list(root.handlers),
        [h.formatter for h in root.handlers],
        {name: logging.getLogger(name).level for name in NAMES},
        {name: logging.getLogger(name).handlers[:] for name in NAMES[1:]},
        logging.getLogger("ppp.veneer").getEffectiveLevel(),
    )


def test_the_alembic_command_line_logs_as_alembic_ini_says(ini: Path) -> None:
    alembic = str(Path(sys.executable).parent / "alembic")
    proc = subprocess.run(
        [alembic, "-c", str(ini), "current"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FROM-INI INFO [ppp.probe] the probe ran" in proc.stderr


def test_a_command_line_that_asks_logs_as_alembic_ini_says(ini: Path) -> None:
    script = (
        "import sys; from alembic import command; from alembic.config import Config; "
        "from ppp_env.alembic_env import use_ini_logging; use_ini_logging(); "
        "command.current(Config(sys.argv[1]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(ini)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "FROM-INI INFO [ppp.probe] the probe ran" in proc.stderr


def test_an_application_keeps_its_logging(
    ini: Path, application: io.StringIO, capfd: pytest.CaptureFixture[str]
) -> None:
    before = snapshot()
    command.current(Config(str(ini)))
    assert snapshot() == before
    assert "the probe ran" not in application.getvalue()
    assert "FROM-INI" not in capfd.readouterr().err


def test_create_migrate_and_veneer_calls_leave_the_applications_logging_alone(
    veneer_head, application: io.StringIO, capfd: pytest.CaptureFixture[str]
) -> None:
    settings = veneer_head.settings
    project_ini = ROOT / "alembic.ini"
    names = [f"lg_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    before = snapshot()
    try:
        for name in names:
            create_tenant(settings, name, None, project_ini)
        result = migrate(settings, project_ini, MigrateOptions(tenants=names, output="quiet"))
        assert result.ok, result.failure_message()
        veneer_env.upgrade(settings, "head")
    finally:
        for name in names:
            remove_tenant(settings, name, drop_data=True)
    assert snapshot() == before
    err = capfd.readouterr().err
    assert "ppp.veneer" not in err and "INFO" not in err
    assert "INFO" not in application.getvalue()
