"""Shared pieces of the ``ppp`` command line: state, console, error handling."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from ppp_env.errors import PPPError
from ppp_env.settings import Settings, load_settings


class State:
    def __init__(self, env_name: str | None, traceback: bool) -> None:
        self.env_name = env_name
        self.traceback = traceback
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.env_name)
        return self._settings


def console(stderr: bool = False) -> Console:
    """Rich console: colours and live bars on a terminal, plain wide lines in pipelines."""
    tty = (sys.stderr if stderr else sys.stdout).isatty()
    return Console(highlight=False, soft_wrap=True, stderr=stderr, width=None if tty else 200)


class PPPGroup(click.Group):
    """Turns PPPError into ``Error: ...`` and exit code 1 for every command."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PPPError as exc:
            state = ctx.find_object(State)
            show = (state.traceback if state else False) or os.environ.get("PPP_TRACEBACK")
            if show:
                raise
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(1)


pass_state = click.make_pass_decorator(State)

#: ``-c/--config``: which alembic.ini (the same lookup in every command).
CONFIG_OPTION = click.option(
    "-c",
    "--config",
    "config_path",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Alembic configuration file (default: ALEMBIC_CONFIG, ./alembic.ini, the project's).",
)
