"""Progress of a fleet run: a bar per shard on a terminal, plain lines in pipelines, or nothing.

The runner calls ``shard_started``, ``tenant_done`` and ``shard_failed`` from the parent
process as workers report; ``summary`` prints the closing table.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ppp_env.fleet.results import FleetResult, Pause, TenantResult


def _tenants(n: int) -> str:
    return f"{n} tenant" if n == 1 else f"{n} tenants"


_SHOWN = {"current": "already current", "not_run": "not run"}


def shard_line(counts: Counter[str]) -> str:
    """``done (3 tenants: 2 migrated, 1 already current)``, or ``stopped (...)`` when some
    tenants failed or were not run."""
    total = sum(counts.values())
    parts = [
        f"{counts[s]} {_SHOWN.get(s, s)}"
        for s in ("migrated", "current", "failed", "locked", "not_run")
        if counts[s]
    ]
    clean = not (counts["failed"] or counts["locked"] or counts["not_run"])
    return f"{'done' if clean else 'stopped'} ({_tenants(total)}: {', '.join(parts)})"


class QuietDisplay:
    def __enter__(self) -> QuietDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def shard_started(self, shard: str, total: int, todo: int) -> None:
        return None

    def tenant_done(self, result: TenantResult) -> None:
        return None

    def shard_failed(self, shard: str, error: str) -> None:
        return None

    def tenant_retry(self, shard: str, tenant: str, attempt: int, error: str) -> None:
        return None

    def shard_pausing(self, pause: Pause) -> None:
        return None

    def shard_paused(self, pause: Pause) -> None:
        return None

    def warning(self, line: str) -> None:
        return None

    def summary(self, result: FleetResult) -> None:
        return None


class PlainDisplay(QuietDisplay):
    """One line per shard start and end, one per problem (and per tenant with verbose)."""

    def __init__(self, stream: TextIO | None = None, verbose: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.verbose = verbose
        self.totals: dict[str, int] = {}
        self.seen: dict[str, Counter[str]] = {}

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def shard_started(self, shard: str, total: int, todo: int) -> None:
        self.totals[shard] = total
        self._print(f"shard {shard}: {_tenants(total)}, {todo} to do")

    def _count(self, result: TenantResult) -> bool:
        """Count a result; True when it was its shard's last."""
        seen = self.seen.setdefault(result.shard, Counter())
        seen[result.status] += 1
        return sum(seen.values()) == self.totals.get(result.shard, -1)

    def tenant_done(self, result: TenantResult) -> None:
        last = self._count(result)
        if result.status in ("failed", "locked"):
            self._print(f"{result.status.upper()} {result.shard}/{result.tenant}: {result.error}")
        elif self.verbose and result.status == "migrated":
            self._print(
                f"migrated {result.shard}/{result.tenant}: {result.before or 'base'} -> "
                f"{result.after or 'base'} ({result.seconds * 1000:.0f} ms)"
            )
        if last:
            self._print(f"shard {result.shard}: {shard_line(self.seen[result.shard])}")

    def shard_failed(self, shard: str, error: str) -> None:
        self._print(f"FAILED shard {shard}: {error}")

    def tenant_retry(self, shard: str, tenant: str, attempt: int, error: str) -> None:
        if self.verbose:
            self._print(f"retry {shard}/{tenant}: attempt {attempt} hit the lock timeout ({error})")

    def shard_pausing(self, pause: Pause) -> None:
        self._print(f"shard {pause.shard}: waiting for {pause.why()}")

    def shard_paused(self, pause: Pause) -> None:
        self._print(pause.line())

    def warning(self, line: str) -> None:
        self._print(f"WARNING {line}")

    def summary(self, result: FleetResult) -> None:
        for online in result.online_lines():
            self._print(online)
        self._print(f"{result.command}: {result.summary()}")
        if line := result.veneer_summary():
            self._print(line)
        if result.refresh_error:
            self._print(f"FAILED veneer refresh: {result.refresh_error}")


class RichDisplay(PlainDisplay):
    """A live progress bar per shard, then a summary table."""

    def __init__(self, console: Console | None = None, verbose: bool = False) -> None:
        super().__init__(verbose=verbose)
        self.console = console or Console(stderr=False, highlight=False)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"),
            console=self.console,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> RichDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _print(self, line: str) -> None:
        self.progress.console.print(line, markup=False)

    def shard_started(self, shard: str, total: int, todo: int) -> None:
        self.tasks[shard] = self.progress.add_task(shard, total=total, note="")

    def tenant_done(self, result: TenantResult) -> None:
        self._count(result)
        task = self.tasks.get(result.shard)
        if task is not None:
            self.progress.advance(task)
        if result.status in ("failed", "locked"):
            self._print(f"{result.status.upper()} {result.shard}/{result.tenant}: {result.error}")
            if task is not None:
                self.progress.update(task, note="[red]failures")

    def shard_failed(self, shard: str, error: str) -> None:
        self._print(f"FAILED shard {shard}: {error}")

    def shard_pausing(self, pause: Pause) -> None:
        if (task := self.tasks.get(pause.shard)) is not None:
            self.progress.update(task, note="[yellow]waiting for replicas")

    def shard_paused(self, pause: Pause) -> None:
        if (task := self.tasks.get(pause.shard)) is not None:
            self.progress.update(task, note="")
        self._print(pause.line())

    def summary(self, result: FleetResult) -> None:
        table = Table(title=f"{result.command}: {result.seconds:.2f} s")
        for col in ("shard", "migrated", "already current", "failed", "other", "time (s)"):
            table.add_column(col, justify="right" if col != "shard" else "left")
        shards = sorted({t.shard for t in result.tenants} | set(result.shard_errors))
        for shard in shards:
            rows = [t for t in result.tenants if t.shard == shard]
            other = sum(1 for t in rows if t.status in ("locked", "not_run"))
            table.add_row(
                shard,
                str(sum(1 for t in rows if t.status == "migrated")),
                str(sum(1 for t in rows if t.status == "current")),
                str(sum(1 for t in rows if t.status == "failed"))
                + (" (shard failed)" if shard in result.shard_errors else ""),
                str(other),
                f"{sum(t.seconds for t in rows):.2f}",
            )
        self.console.print(table)
        for online in result.online_lines():
            self.console.print(online, markup=False)
        if line := result.veneer_summary():
            self.console.print(line, markup=False)
        if result.refresh_error:
            self.console.print(f"[red]FAILED veneer refresh:[/] {result.refresh_error}")


def make_display(output: str, verbose: bool = False) -> QuietDisplay:
    """``auto``: bars on a terminal, plain lines otherwise; ``json``/``quiet``: nothing."""
    if output in ("json", "quiet"):
        return QuietDisplay()
    if output == "rich" or (output == "auto" and sys.stdout.isatty()):
        return RichDisplay(verbose=verbose)
    return PlainDisplay(verbose=verbose)
