"""What a fleet run did: one result per tenant, and the run's summary, messages and JSON."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ppp_env.errors import PPPError
from ppp_env.settings import Settings
from ppp_env.veneer import refresh


@dataclass
class LockWait:
    """An attempt of a tenant that hit the lock timeout and rolled back (for the timeline)."""

    attempt: int
    #: Seconds since the run started, when the attempt began.
    at: float
    #: Seconds the attempt lasted until it gave up (mostly its wait for the lock).
    waited: float
    #: Who held the lock it waited for.
    blocker: str


@dataclass
class TenantResult:
    shard: str
    tenant: str
    status: str  # migrated | current | failed | locked | not_run
    before: str | None = None
    after: str | None = None
    error: str | None = None
    seconds: float = 0.0
    #: How many times PPP tried it (more than 1: it hit the lock timeout and was retried).
    attempts: int = 1
    #: Seconds since the run started when its last attempt began (None: never tried).
    start: float | None = None
    #: Which of its shard's workers took it (PPP_JOBS_PER_SHARD; 0: the first).
    lane: int = 0
    #: Its attempts that hit the lock timeout, in order (the last one too when it ended locked).
    waits: list[LockWait] = field(default_factory=list)
    #: Found interrupted inside a revision that runs outside a transaction (a killed run):
    #: which, since when, what it left. PPP ran that revision again.
    interrupted: str | None = None


@dataclass(frozen=True)
class Pause:
    """A shard's wait for its replicas before its next tenant (``fleet.pacing``)."""

    shard: str
    seconds: float
    replica: str
    #: The largest replay lag seen (seconds); None: the replica could not be reached.
    lag: float | None
    #: PPP_MAX_REPLICA_LAG.
    limit: float
    #: Why the replica could not be reached.
    error: str = ""

    def ended(self, seconds: float) -> Pause:
        return replace(self, seconds=seconds)

    def why(self) -> str:
        if self.lag is None:
            return f"an unreachable replica ({self.replica}: {self.error})"
        return f"replica lag ({self.replica}: {self.lag:.1f} s > {self.limit:g} s)"

    def line(self) -> str:
        return f"shard {self.shard}: paused {self.seconds:.1f} s for {self.why()}"


@dataclass
class FleetResult:
    command: str
    tenants: list[TenantResult] = field(default_factory=list)
    shard_errors: dict[str, str] = field(default_factory=dict)
    refreshed: list[str] = field(default_factory=list)
    refresh_pending: list[str] = field(default_factory=list)
    refresh_error: str | None = None
    #: Revisions that ran online (through Alembic, tenant by tenant) and why.
    online: dict[str, str] = field(default_factory=dict)
    #: Waits for the shards' replicas (PPP_MAX_REPLICA_LAG), and warnings about them.
    pauses: list[Pause] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: Wall clock (epoch seconds) when the run started; the tenants' ``start`` counts from it.
    started_at: float = 0.0
    #: Per shard: seconds since the run started when its worker began and ended.
    shard_spans: dict[str, list[float]] = field(default_factory=dict)
    #: The revision the run went to (as given, and resolved when it could be).
    revision: str | None = None

    def count(self, status: str) -> int:
        return sum(1 for t in self.tenants if t.status == status)

    @property
    def problems(self) -> list[TenantResult]:
        return [t for t in self.tenants if t.status in ("failed", "locked", "not_run")]

    @property
    def ok(self) -> bool:
        return not self.problems and not self.shard_errors and not self.refresh_error

    @property
    def changed(self) -> list[str]:
        return [t.tenant for t in self.tenants if t.status == "migrated" and t.before != t.after]

    def summary(self) -> str:
        parts = [
            f"{self.count('migrated')} migrated",
            f"{self.count('current')} already current",
            f"{self.count('failed')} failed",
        ]
        if self.count("locked"):
            parts.append(f"{self.count('locked')} locked")
        if retried := sum(t.attempts - 1 for t in self.tenants):
            parts.append(f"{retried} lock retr{'y' if retried == 1 else 'ies'}")
        if self.count("not_run"):
            parts.append(f"{self.count('not_run')} not run")
        if self.shard_errors:
            parts.append(f"{len(self.shard_errors)} shard(s) failed")
        if self.pauses:
            waited = sum(p.seconds for p in self.pauses)
            parts.append(f"{len(self.pauses)} pause(s) for replicas ({waited:.1f} s)")
        return ", ".join(parts) + f" in {self.seconds:.2f} s"

    def veneer_summary(self) -> str | None:
        """One line on the veneer refresh that followed the run, if one did."""
        if not (self.refreshed or self.refresh_pending):
            return None
        pending = f", pending: {', '.join(self.refresh_pending)}" if self.refresh_pending else ""
        return f"veneer: {len(self.refreshed)} tenant(s) refreshed{pending}"

    def online_lines(self) -> list[str]:
        """One line per revision that could not be rendered and ran online, with why."""
        return [f"ran online: {label}: {why}" for label, why in sorted(self.online.items())]

    def failure_message(self) -> str:
        lines = [self.summary()]
        for name, error in self.shard_errors.items():
            lines.append(f"shard {name}: {error}")
        for t in self.problems:
            if t.status != "not_run":
                lines.append(f"{t.shard}/{t.tenant}: {t.error}")
        if self.refresh_error:
            lines.append(f"veneer refresh: {self.refresh_error}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "revision": self.revision,
            "ok": self.ok,
            "started": _iso(self.started_at),
            "seconds": round(self.seconds, 3),
            "counts": {
                s: self.count(s) for s in ("migrated", "current", "failed", "locked", "not_run")
            },
            "retries": sum(t.attempts - 1 for t in self.tenants),
            "shard_errors": self.shard_errors,
            "online": [{"revision": k, "reason": v} for k, v in sorted(self.online.items())],
            "pauses": [asdict(p) for p in self.pauses],
            "warnings": self.warnings,
            "tenants": [asdict(t) for t in self.tenants],
            "shard_spans": self.shard_spans,
            "veneer": {
                "refreshed": self.refreshed,
                "pending": self.refresh_pending,
                "error": self.refresh_error,
            },
        }


def _iso(epoch: float) -> str | None:
    """``2026-12-06T10:31:02.125Z`` (UTC, milliseconds), None before the run started."""
    if not epoch:
        return None
    millis = round(epoch * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(epoch))) + f".{millis:03d}Z"


def refresh_veneer(settings: Settings, result: FleetResult, tenants: Sequence[str]) -> None:
    """The veneer refresh after a run, of ``tenants``: what it did goes in ``result``
    (a failure too: the tenants' migration stands)."""
    try:
        # Only what the run's version changes changed is read again (see refresh).
        report = refresh(
            settings, tenants, follow_changes=True, wired_only=settings.wires_on_demand
        )
    except PPPError as exc:
        result.refresh_error = str(exc)
        return
    result.refreshed = list(report.refreshed)
    result.refresh_pending = list(report.pending)
    if report.errors:
        result.refresh_error = "; ".join(f"{k}: {v}" for k, v in report.errors.items())
