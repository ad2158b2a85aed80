"""``ppp new DIR``: a new PPP project, written from the templates shipped in the package.

The templates (``ppp_env/templates/project``) are copies of this repository's own project
files: alembic.ini with its three environments, ``migrations/`` (env.py, script.py.mako,
models.py, one example revision), ``veneer_migrations/`` (env.py, script.py.mako and only
the catalog revision: no tenant), ``shared_migrations/`` (env.py, script.py.mako, README,
an empty ``versions/``), ``.env.example``, ``docker-compose.yml`` and a ``.gitignore`` that
keeps ``.env`` files out of git. Every env.py delegates to ``ppp_env``, so the new project
needs nothing of this repository but the installed package.

Alembic 1.x lists templates only from its own folder (``alembic init -t NAME``), so a
package cannot add one there: ``ppp new`` is the way.

Everything is checked before the first byte is written: a refused target is left as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath

from ppp_env.errors import PPPError

TEMPLATE = "project"
SKIPPED = ("__pycache__",)
NEXT_STEPS = (
    "ppp local up",
    "ppp init",
    "ppp tenant add acme --shard bluth_co",
    "ppp migrate",
    "ppp status",
)


@dataclass(frozen=True)
class Scaffold:
    """What :func:`new_project` did: the folder and the files, relative to it."""

    target: Path
    written: list[PurePosixPath] = field(default_factory=list)
    overwritten: list[PurePosixPath] = field(default_factory=list)


def template_root() -> Traversable:
    """The project template inside the installed package (works from a wheel or a zip)."""
    return resources.files("ppp_env").joinpath("templates", TEMPLATE)


def template_files() -> dict[PurePosixPath, Traversable]:
    """Every file of the template by its path in the new project, sorted."""
    found: dict[PurePosixPath, Traversable] = {}

    def walk(node: Traversable, rel: PurePosixPath) -> None:
        for child in node.iterdir():
            if child.name in SKIPPED or child.name.endswith(".pyc"):
                continue
            if child.is_dir():
                walk(child, rel / child.name)
            else:
                found[rel / child.name] = child

    root = template_root()
    if not root.is_dir():
        raise PPPError(f"the project template is missing from the installed package ({root})")
    walk(root, PurePosixPath())
    return dict(sorted(found.items()))


def new_project(target: Path, *, force: bool = False) -> Scaffold:
    """Write a new PPP project into ``target`` (created if missing, parents too).

    A target that exists must be an empty folder, unless ``force``: then the template's
    files are written over the ones of the same name and every other file stays.
    """
    target = Path(target)
    files = template_files()
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise PPPError(f"{target} exists and is not a folder")
        if any(target.iterdir()) and not force:
            raise PPPError(
                f"{target} is not empty: choose a new folder, or pass --force to write the "
                "project's files over the ones of the same name there"
            )
    # Whatever is in the way of a file or folder the template needs stops everything,
    # before anything is written.
    for rel in files:
        dest = target.joinpath(*rel.parts)
        for parent in list(reversed(dest.relative_to(target).parents))[1:]:
            folder = target / parent
            if folder.exists() and not folder.is_dir():
                raise PPPError(f"{folder} is in the way: the project needs a folder there")
        if dest.is_dir():
            raise PPPError(f"{dest} is a folder: the project needs a file there")

    result = Scaffold(target)
    for rel, source in files.items():
        dest = target.joinpath(*rel.parts)
        dest.parent.mkdir(parents=True, exist_ok=True)
        (result.overwritten if dest.exists() else result.written).append(rel)
        dest.write_bytes(source.read_bytes())
    return result
