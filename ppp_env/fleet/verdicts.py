"""Which revisions cannot be rendered, remembered across runs in a file beside env.py.

A revision's verdict (the call that needs the database, where) is found the first time PPP
renders it and kept under a key of the revision file's bytes and the direction, in
``<script directory>/.ppp-render-cache.json``; the file as a whole belongs to one PPP,
Alembic and SQLAlchemy version and one env.py (another one: every verdict is found again).
Later runs, and every worker of a run, step over such a revision when rendering instead of
running its code: it runs online, per tenant, as it would have anyway.

Only verdicts that send a revision online are kept, never SQL: a renderable revision is
rendered (its code run) once per run, so a stale entry can only make a revision run online
that could have been rendered (slower, never different). A missing, corrupt or foreign file
is ignored; one that cannot be written is left alone with one warning; writes go to a
temporary file renamed over the old one, merged with what another run wrote meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import alembic
import sqlalchemy

from ppp_env import __version__
from ppp_env.fleet.hooks import Blocker, Where

CACHE_NAME = ".ppp-render-cache.json"
FORMAT = 1

_warned: set[Path] = set()


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def stamp(script_dir: Path) -> dict[str, Any]:
    """What every verdict of the file depends on besides the revision file itself."""
    return {
        "format": FORMAT,
        "ppp": __version__,
        "alembic": alembic.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "env": _digest(script_dir / "env.py"),
    }


@dataclass
class VerdictCache:
    """The verdicts of one script directory: read once, written when new ones were found."""

    path: Path
    stamp: dict[str, Any]
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    new: dict[str, dict[str, Any]] = field(default_factory=dict)
    _keys: dict[tuple[str, bool], str | None] = field(default_factory=dict)

    @classmethod
    def of(cls, script_dir: Path) -> VerdictCache:
        cache = cls(script_dir / CACHE_NAME, stamp(script_dir))
        cache.entries = cache.read()
        return cache

    def read(self) -> dict[str, dict[str, Any]]:
        """The file's entries; nothing when it is missing, unreadable, corrupt or foreign."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("stamp") != self.stamp:
            return {}
        entries = data.get("verdicts")
        if not isinstance(entries, dict):
            return {}
        return {k: v for k, v in entries.items() if isinstance(v, dict)}

    def key(self, path: str, upgrade: bool) -> str | None:
        """``up:<sha256 of the file>`` (or ``down:``); None when the file cannot be read."""
        if (path, upgrade) not in self._keys:
            digest = _digest(Path(path))
            self._keys[path, upgrade] = (
                f"{'up' if upgrade else 'down'}:{digest}" if digest else None
            )
        return self._keys[path, upgrade]

    def get(self, path: str, upgrade: bool) -> Blocker | None:
        key = self.key(path, upgrade)
        entry = self.new.get(key) or self.entries.get(key) if key else None
        if not entry or not isinstance(entry.get("kind"), str):
            return None
        line = entry.get("line")
        where = Where(path, line) if isinstance(line, int) else None
        call = entry.get("call")
        return Blocker(entry["kind"], call if isinstance(call, str) else None, where)

    def put(self, path: str, upgrade: bool, blocker: Blocker) -> None:
        key = self.key(path, upgrade)
        if key is None or blocker.kind == "flagged":  # a flag is read from the module anyway
            return
        entry: dict[str, Any] = {"kind": blocker.kind, "call": blocker.call}
        if blocker.where is not None:
            entry["line"] = blocker.where.line
        if self.entries.get(key) != entry:
            self.new[key] = entry

    def save(self) -> None:
        """Write the new verdicts, merged with the file as it is now, atomically."""
        if not self.new:
            return
        merged = {**self.read(), **self.new}
        text = json.dumps({"stamp": self.stamp, "verdicts": merged}, indent=1, sort_keys=True)
        try:
            fd, tmp = tempfile.mkstemp(prefix=CACHE_NAME, suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as out:
                    out.write(text + "\n")
                os.chmod(tmp, 0o644)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            if self.path not in _warned:
                _warned.add(self.path)
                sys.stderr.write(
                    f"WARNING: cannot write {self.path} ({exc.strerror or exc}): revisions that "
                    "cannot be rendered are found again next run (their code runs once more)\n"
                )
            return
        self.entries, self.new = merged, {}
