"""What PPP's three Alembic environments (tenants, veneer, shared) share.

:class:`PPPEnvironment` is the base of each: it finds the running command (through
:mod:`ppp_env.alembic_adapter`), applies alembic.ini's logging only on a command line, reads
the settings from ``config.attributes[SETTINGS_KEY]`` or the environment, sends the command
to one of four methods (offline ``--sql``, ``current``, a command that moves revisions, any
other) and turns PPPError into Alembic's ``FAILED: ...``. Also here: the one alembic.ini
lookup (:func:`find_alembic_ini`) and a Config for one of its sections.
"""

from __future__ import annotations

import os
from functools import cached_property
from logging.config import fileConfig
from pathlib import Path
from typing import Any, ClassVar

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.util import CommandError

import ppp_env
from ppp_env.alembic_adapter import COMMAND_KEY, command_name, running_environment
from ppp_env.errors import PPPError
from ppp_env.gc_tuning import fewer_collections
from ppp_env.settings import Settings, load_settings, project_dir

__all__ = [
    "COMMAND_KEY",
    "LOGGING_KEY",
    "MOVING",
    "SETTINGS_KEY",
    "PPPEnvironment",
    "apply_ini_logging",
    "find_alembic_ini",
    "section_config",
    "settings_of",
    "use_ini_logging",
    "wants_ini_logging",
]

#: ``config.attributes[SETTINGS_KEY]``: the Settings an in-process caller runs a command with.
SETTINGS_KEY = "ppp.settings"
#: ``config.attributes[LOGGING_KEY]``: True/False overrides whether alembic.ini's logging
#: applies (Alembic's cookbook calls this attribute ``configure_logger``).
LOGGING_KEY = "configure_logger"
#: Commands that move revisions.
MOVING = frozenset({"upgrade", "downgrade", "stamp"})

_command_line_logging = False


def use_ini_logging(enabled: bool = True) -> None:
    """For a command-line program (``ppp``): let alembic.ini's ``[loggers]`` configure logging
    in this process. A library call never does, unless its Config asks (``LOGGING_KEY``)."""
    global _command_line_logging
    _command_line_logging = enabled


def wants_ini_logging(config: Config) -> bool:
    """Whether alembic.ini's logging applies: the Config says so (``LOGGING_KEY``), or this is
    a command line: Alembic's own (it sets ``cmd_opts``) or one that called
    :func:`use_ini_logging`. An application calling PPP keeps its logging as it is."""
    asked = config.attributes.get(LOGGING_KEY)
    if asked is not None:
        return bool(asked)
    return config.cmd_opts is not None or _command_line_logging


def apply_ini_logging(config: Config) -> None:
    if (
        wants_ini_logging(config)
        and config.config_file_name
        and config.file_config.has_section("loggers")
    ):
        fileConfig(config.config_file_name, disable_existing_loggers=False)


def find_alembic_ini(config: str | Path | None = None) -> Path:
    """The one alembic.ini lookup of every ``ppp`` command that needs it.

    ``config`` (``-c/--config``) when given: it must be a file. Otherwise ``ALEMBIC_CONFIG``
    (as Alembic's own command line), else ``alembic.ini`` in the current folder, the project
    folder (``PPP_PROJECT_DIR``) or the folder PPP is installed from.
    """
    if config is not None:
        path = Path(config)
        if not path.is_file():
            what = "a folder" if path.is_dir() else "not found"
            raise PPPError(f"no Alembic configuration at {path} ({what}): pass -c alembic.ini")
        return path
    candidates: list[Path] = []
    if os.environ.get("ALEMBIC_CONFIG"):
        candidates.append(Path(os.environ["ALEMBIC_CONFIG"]))
    candidates += [
        Path.cwd() / "alembic.ini",
        project_dir() / "alembic.ini",
        Path(ppp_env.__file__).resolve().parent.parent / "alembic.ini",
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise PPPError(
        "cannot find alembic.ini; looked at "
        + ", ".join(dict.fromkeys(str(p) for p in candidates))
        + ": run PPP from the project folder, set ALEMBIC_CONFIG or pass -c"
    )


def section_config(
    ini: str | Path | None, section: str, settings: Settings | None = None, **config_kw: Any
) -> Config:
    """A Config for one section of an alembic.ini (found by :func:`find_alembic_ini`),
    carrying ``settings`` to its env.py."""
    cfg = Config(str(find_alembic_ini(ini)), ini_section=section, **config_kw)
    if settings is not None:
        cfg.attributes[SETTINGS_KEY] = settings
    return cfg


def settings_of(config: Config, env_name: str | None) -> Settings:
    """A run's settings: ``config.attributes[SETTINGS_KEY]``, else loaded for ``env_name``
    (None: PPP_ENV or .env) and kept there, for the revisions of the same run."""
    settings = config.attributes.get(SETTINGS_KEY)
    if settings is None:
        settings = load_settings(env_name)
        config.attributes[SETTINGS_KEY] = settings
    if not isinstance(settings, Settings):
        raise PPPError(f"config.attributes[{SETTINGS_KEY!r}] is not a ppp_env Settings object")
    return settings


class PPPEnvironment:
    """One run of a PPP env.py: ``run_migrations = TheEnvironment.main`` in its module.

    Subclasses say what each kind of command does: :meth:`offline` (``--sql``),
    :meth:`current`, :meth:`move` (upgrade, downgrade, stamp) and :meth:`other` (history -i,
    check, revision --autogenerate...).
    """

    #: The settings' environment name comes from ``-x env=NAME`` (else PPP_ENV).
    X_ENV: ClassVar[str] = "env"

    def __init__(self, env: EnvironmentContext, configure_kw: dict[str, Any]) -> None:
        self.env = env
        self.config = env.config
        self.configure_kw = configure_kw
        self.command = command_name(env)
        self.x: dict[str, str] = dict(env.get_x_argument(as_dictionary=True))

    @classmethod
    def main(cls, **configure_kw: Any) -> None:
        """The body of env.py; ``configure_kw`` goes to every ``configure`` (e.g.
        ``target_metadata``). PPPError becomes Alembic's ``FAILED: ...``."""
        env = running_environment()
        apply_ini_logging(env.config)
        try:
            with fewer_collections():
                cls(env, configure_kw).dispatch()
        except PPPError as exc:
            raise CommandError(str(exc)) from None

    @property
    def env_name(self) -> str | None:
        return self.x.get(self.X_ENV)

    @cached_property
    def settings(self) -> Settings:
        return settings_of(self.config, self.env_name)

    def dispatch(self) -> None:
        if self.env.is_offline_mode():
            self.offline()
        elif self.command == "current":
            self.current()
        elif self.command in MOVING:
            self.move()
        else:
            self.other()

    def offline(self) -> None:
        raise NotImplementedError

    def current(self) -> None:
        raise NotImplementedError

    def move(self) -> None:
        raise NotImplementedError

    def other(self) -> None:
        raise NotImplementedError
