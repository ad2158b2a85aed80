"""Rollouts in the veneer's catalog (``ppp.rollouts``): where a rollout stands, kept between
runs so ``ppp rollout status`` shows it and ``ppp rollout resume`` goes on after a fix.

While a rollout runs, its process holds an advisory lock on the veneer (on the connection
it saves through), so a second rollout, a resume or an abort can tell a rollout that is
running from one whose process is gone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ppp_env.errors import PPPError
from ppp_env.settings import Settings
from ppp_env.veneer import catalog

#: The advisory lock a running rollout holds on the veneer.
ROLLOUT_LOCK = (0x505050, 0x726F6C6C)
OPEN = ("running", "halted")


@dataclass
class StageState:
    """One stage of a rollout: its settings, its tenants, and how it went."""

    name: str
    spec: dict[str, Any]
    tenants: list[str]
    #: pending | running | passed | failed (failures tolerated) | halted | skipped
    status: str = "pending"
    migrated: int = 0
    current: int = 0
    #: Tenants that failed, were locked or not run, with why.
    failed: dict[str, str] = field(default_factory=dict)
    #: The check's outcome: None (no check or not run yet), "passed", or why it failed.
    check: str | None = None
    started: str | None = None
    seconds: float = 0.0


@dataclass
class Rollout:
    id: int
    file: str
    revision: str
    heads: list[str]
    state: str
    stage: int
    stages: list[StageState]
    reason: str | None = None
    started_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def current_stage(self) -> StageState:
        return self.stages[min(self.stage, len(self.stages) - 1)]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "file": self.file,
            "revision": self.revision,
            "heads": self.heads,
            "state": self.state,
            "stage": self.current_stage.name,
            "stage_index": self.stage,
            "reason": self.reason,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "stages": [asdict(s) for s in self.stages],
        }


_COLUMNS = "id, file, revision, heads, state, stage, stages, reason, started_at, updated_at"


def _rollout(row: Any) -> Rollout:
    stages = [StageState(**s) for s in row.stages]
    return Rollout(
        row.id,
        row.file,
        row.revision,
        list(row.heads),
        row.state,
        row.stage,
        stages,
        row.reason,
        row.started_at,
        row.updated_at,
    )


def open_rollout(conn: Connection) -> Rollout | None:
    """The rollout that is running or halted, if any."""
    row = conn.execute(
        text(f"SELECT {_COLUMNS} FROM ppp.rollouts WHERE state IN ('running', 'halted')")
    ).first()
    return None if row is None else _rollout(row)


def latest_rollout(conn: Connection) -> Rollout | None:
    row = conn.execute(
        text(f"SELECT {_COLUMNS} FROM ppp.rollouts ORDER BY id DESC LIMIT 1")
    ).first()
    return None if row is None else _rollout(row)


def describe_open(r: Rollout) -> str:
    where = f"at stage {r.current_stage.name!r}"
    return f"rollout #{r.id} ({r.file}) is {r.state} {where}" + (
        f": {r.reason}" if r.reason else ""
    )


def refuse_open(conn: Connection) -> None:
    """PPPError when a rollout is open (running or halted): one at a time."""
    existing = open_rollout(conn)
    if existing is not None:
        raise PPPError(
            f"{describe_open(existing)}: resume it (`ppp rollout resume`) or forget it "
            "(`ppp rollout abort`) before starting another"
        )


def insert(
    conn: Connection, file: str, revision: str, heads: list[str], stages: list[StageState]
) -> Rollout:
    """Record a new rollout (state running); PPPError when one is open already."""
    try:
        with conn.begin():
            refuse_open(conn)
            row = conn.execute(
                text(
                    "INSERT INTO ppp.rollouts (file, revision, heads, state, stages) "
                    "VALUES (:file, :revision, :heads, 'running', CAST(:stages AS jsonb)) "
                    f"RETURNING {_COLUMNS}"
                ),
                {
                    "file": file,
                    "revision": revision,
                    "heads": heads,
                    "stages": json.dumps([asdict(s) for s in stages]),
                },
            ).one()
    except IntegrityError:
        raise PPPError("another rollout was started meanwhile: see `ppp rollout status`") from None
    return _rollout(row)


def save(conn: Connection, r: Rollout) -> None:
    """Write where ``r`` stands (its own transaction)."""
    with conn.begin():
        row = conn.execute(
            text(
                "UPDATE ppp.rollouts SET state = :state, stage = :stage, "
                "stages = CAST(:stages AS jsonb), reason = :reason, updated_at = now() "
                "WHERE id = :id RETURNING updated_at"
            ),
            {
                "id": r.id,
                "state": r.state,
                "stage": r.stage,
                "stages": json.dumps([asdict(s) for s in r.stages]),
                "reason": r.reason,
            },
        ).one()
    r.updated_at = row.updated_at


def is_running(conn: Connection) -> bool:
    """Whether a process holds the rollout lock (a rollout or resume is running now)."""
    with conn.begin():
        got = conn.execute(
            text("SELECT pg_try_advisory_xact_lock(:a, :b)"),
            {"a": ROLLOUT_LOCK[0], "b": ROLLOUT_LOCK[1]},
        ).scalar()
    return not got


@contextmanager
def rollout_connection(settings: Settings) -> Iterator[Connection]:
    """A veneer connection holding the rollout lock for as long as the block runs; PPPError
    when another process holds it, or the catalog lacks the release revision."""
    with catalog.admin_connection(settings, begin=False) as conn:
        with conn.begin():
            catalog.require_release(conn)
        got = conn.execute(
            text("SELECT pg_try_advisory_lock(:a, :b)"),
            {"a": ROLLOUT_LOCK[0], "b": ROLLOUT_LOCK[1]},
        ).scalar()
        conn.commit()
        if not got:
            raise PPPError(
                "another rollout process is running (`ppp migrate --rollout` or `ppp rollout "
                "resume`): see `ppp rollout status`"
            )
        yield conn


def abort(settings: Settings) -> Rollout:
    """Forget the open rollout (state aborted); its tenants stay as they are."""
    with rollout_connection(settings) as conn:
        with conn.begin():
            r = open_rollout(conn)
        if r is None:
            raise PPPError("no rollout to abort: none is running or halted")
        r.state = "aborted"
        r.reason = (r.reason + "; " if r.reason else "") + "aborted by `ppp rollout abort`"
        save(conn, r)
        return r


def status(settings: Settings) -> tuple[Rollout | None, bool]:
    """The open rollout (else the latest), and whether a process is running it now."""
    with catalog.admin_connection(settings, begin=False) as conn:
        with conn.begin():
            catalog.require_release(conn)
            r = open_rollout(conn) or latest_rollout(conn)
        return r, is_running(conn)
