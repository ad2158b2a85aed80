"""``ppp new DIR``: write a new PPP project (thin: ppp_env.scaffold does the work)."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from ppp_env import scaffold
from ppp_env.cli.common import console


@click.command("new")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--force",
    is_flag=True,
    help="Write into a folder that is not empty (files of the same name are overwritten).",
)
def new(directory: Path, force: bool) -> None:
    """Write a new PPP project into DIRECTORY: alembic.ini, migrations/, veneer_migrations/,
    shared_migrations/, .env.example, docker-compose.yml.

    Alembic's own `alembic init -t NAME` only knows Alembic's templates: this is the way to
    start a PPP project. DIRECTORY must be new or empty unless --force.
    """
    result = scaffold.new_project(directory, force=force)
    out = console()
    for rel in result.written:
        out.print(f"wrote {directory / rel}")
    for rel in result.overwritten:
        out.print(f"overwrote {directory / rel}")
    out.print("next:")
    out.print(f"  cd {shlex.quote(str(directory))}")
    for step in scaffold.NEXT_STEPS:
        out.print(f"  {step}")
