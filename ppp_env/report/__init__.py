"""Reports people look at: one self-contained HTML file (inline CSS, script and SVG; nothing
fetched, readable without script) of a fleet run or of the fleet's status.

The reports are drawn from the same data the commands print with ``--json``, so the JSON
carries every fact a report shows:

- :func:`write_run_report`: ``ppp migrate --report FILE``, ``alembic -x report=FILE``
  (``FleetResult.to_json()``, or ``MigrateResult.to_json()``; an optional ``stages`` list
  adds a rollout section); a rollout's JSON goes through :func:`rollout_data` first;
- :func:`write_status_report`: ``ppp status --html FILE``.

:func:`check_target` runs before the command does anything, so a path that cannot be
written fails first; a write that fails afterwards is a :class:`PPPError` naming the path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ppp_env.errors import PPPError
from ppp_env.report.rollout import rollout_data
from ppp_env.report.run import run_html
from ppp_env.report.status import status_html

__all__ = [
    "check_target",
    "rollout_data",
    "run_html",
    "status_html",
    "write_run_report",
    "write_status_report",
]


def check_target(path: str | Path) -> Path:
    """``path`` if a report can be written there; PPPError naming it and why otherwise."""
    target = Path(path)
    folder = target.parent
    why = None
    if not str(path).strip():
        why = "no file name given"
    elif target.is_dir():
        why = "it is a folder"
    elif not folder.is_dir():
        why = f"folder {folder} does not exist"
    elif not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        why = "permission denied"
    if why:
        raise PPPError(f"cannot write the report to {path}: {why}")
    return target


def _write(path: str | Path, text: str) -> Path:
    target = check_target(path)
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise PPPError(f"cannot write the report to {path}: {exc.strerror or exc}") from None
    return target


def write_run_report(path: str | Path, data: Mapping[str, Any]) -> Path:
    """The report of a fleet run, from its JSON, written to ``path``."""
    return _write(path, run_html(data))


def write_status_report(path: str | Path, data: Mapping[str, Any]) -> Path:
    """The status report, from ``ppp status --json``'s data (and ``errors``), written to
    ``path``; stamped with the time it was made unless ``data`` has ``generated``."""
    stamped = {"generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **data}
    return _write(path, status_html(stamped))
