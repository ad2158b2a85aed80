"""The run's timeline: per shard, its tenants as bars on one time axis (inline SVG, drawn
here, so it needs no script), lock waits and retries marked, failures in their own colour.

A shard's worker (each of its workers, its lanes, with PPP_JOBS_PER_SHARD) takes its tenants
one after another on one connection, so the bars of one lane never overlap. Up to
:data:`ROWS` tried tenants a shard gets a row per tenant; beyond, a row per lane holds them
all and the tenants worth a look (failed, locked, retried) keep a row each. A rollout's
stages are marked where they started.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ppp_env.report.page import Raw, h, revision, seconds

#: Rows of one tenant each, at most, in a shard's timeline.
ROWS = 16
WIDTH, LABEL, ROW, AXIS = 1000, 170, 16, 20
PLOT = WIDTH - LABEL - 24
PROBLEM = ("failed", "locked")

Tenant = Mapping[str, Any]


class Axis:
    """Seconds since the run started, onto the plot's x coordinates."""

    def __init__(self, end: float) -> None:
        self.step = _nice_step((end if end > 0 else 1.0) / 8)
        self.end = math.ceil(round(end / self.step, 6)) * self.step or self.step

    def x(self, t: float) -> float:
        return LABEL + PLOT * min(max(t, 0.0), self.end) / self.end

    def width(self, t: float) -> float:
        return max(PLOT * t / self.end, 2.0)

    def ticks(self) -> list[float]:
        return [i * self.step for i in range(int(self.end / self.step) + 1)]


def _nice_step(raw: float) -> float:
    """1, 2 or 5 times a power of ten, at least ``raw``."""
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def run_end(data: Mapping[str, Any]) -> float:
    """The last moment anything in the run's data happened, in seconds since it started."""
    ends = [0.0]
    for t in data.get("tenants") or []:
        if t.get("start") is not None:
            ends.append(t["start"] + (t.get("seconds") or 0.0))
        ends.extend(w["at"] + w["waited"] for w in t.get("waits") or [])
    for span in (data.get("shard_spans") or {}).values():
        ends.extend(s[-1] for s in spans(span))
    return max(ends)


def spans(span: Sequence[Any]) -> list[Sequence[float]]:
    """A shard's worker spans: ``[start, end]`` (or ``[start]`` while running), or a list of
    them (a rollout: one per stage)."""
    if span and isinstance(span[0], (list, tuple)):
        return [s for s in span if s]
    return [span] if span else []


def _rows(tried: Sequence[Tenant]) -> list[tuple[str, list[Tenant]]]:
    if len(tried) <= ROWS:
        return [(t["tenant"], [t]) for t in tried]
    by_lane: dict[int, list[Tenant]] = {}
    for t in tried:
        by_lane.setdefault(int(t.get("lane") or 0), []).append(t)
    if len(by_lane) == 1:
        rows = [(f"all {len(tried)} tenants", list(tried))]
    else:
        rows = [(f"lane {n + 1}: {len(ts)} tenants", ts) for n, ts in sorted(by_lane.items())]
    notable = [t for t in tried if t["status"] in PROBLEM or t.get("waits")]
    return rows + [(t["tenant"], [t]) for t in notable]


def shard_timeline(
    shard: str,
    tenants: Sequence[Tenant],
    span: Sequence[Any],
    axis: Axis,
    marks: Sequence[Mapping[str, Any]] = (),
) -> Raw:
    """One shard's SVG: its workers' span, a row per tenant (or per lane), the axis, and
    where each stage of a rollout began (``marks``: ``{"name", "at"}``)."""
    tried = sorted((t for t in tenants if t.get("start") is not None), key=lambda t: t["start"])
    if not tried:
        return Raw('<p class="note">No tenant of this shard was tried.</p>')
    rows = _rows(tried)
    height = AXIS + ROW * len(rows) + 4
    parts = [_grid(axis, height)]
    for begun, *rest in spans(span):
        end = rest[0] if rest else axis.end
        parts.append(
            f'<rect class="span" x="{axis.x(begun):.1f}" y="{AXIS - 2}" '
            f'width="{axis.width(end - begun):.1f}" height="{height - AXIS}">'
            f"<title>{h(f'workers of shard {shard}: {begun:.2f} s to {end:.2f} s')}</title></rect>"
        )
    parts.extend(_mark(m, axis, height) for m in marks)
    for n, (label, members) in enumerate(rows):
        parts.append(_row(label, members, AXIS + n * ROW, axis))
    return Raw(
        f'<svg class="timeline" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="{h(f"timeline of shard {shard}")}">{"".join(parts)}</svg>'
    )


def _grid(axis: Axis, height: int) -> str:
    out = []
    for tick in axis.ticks():
        x = axis.x(tick)
        out.append(
            f'<line class="tick" x1="{x:.1f}" y1="{AXIS - 6}" x2="{x:.1f}" y2="{height}"/>'
            f'<text class="tick" x="{x:.1f}" y="{AXIS - 9}">'
            f"{h(_tick_label(tick, axis.step))}</text>"
        )
    return "".join(out)


def _mark(mark: Mapping[str, Any], axis: Axis, height: int) -> str:
    at, label = mark["at"], f"stage {mark['name']}"
    x = axis.x(at)
    return (
        f'<line class="stage" x1="{x:.1f}" y1="{AXIS - 2}" x2="{x:.1f}" y2="{height}">'
        f"<title>{h(f'{label} began at {at:.2f} s')}</title></line>"
        f'<text class="stage" x="{x + 3:.1f}" y="{AXIS + 9}">{h(label)}</text>'
    )


def _tick_label(value: float, step: float) -> str:
    if 0 < value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{round(value, 6):g} s"


def _row(label: str, members: Sequence[Tenant], y: int, axis: Axis) -> str:
    short = label if len(label) <= 26 else label[:25] + "…"
    out = [
        f'<text class="label" x="{LABEL - 8}" y="{y + ROW - 4}">'
        f"<title>{h(label)}</title>{h(short)}</text>"
    ]
    for t in members:
        for w in t.get("waits") or []:
            out.append(
                f'<rect class="wait" x="{axis.x(w["at"]):.1f}" y="{y + 3}" '
                f'width="{axis.width(w["waited"]):.1f}" height="{ROW - 6}">'
                f"<title>{h(_wait_title(t, w))}</title></rect>"
            )
        x = axis.x(t["start"])
        out.append(
            f'<rect class="bar {h(t["status"])}" x="{x:.1f}" y="{y + 3}" '
            f'width="{axis.width(t.get("seconds") or 0.0):.1f}" height="{ROW - 6}">'
            f"<title>{h(tenant_title(t))}</title></rect>"
        )
        if (t.get("attempts") or 1) > 1:
            retried = f"{t['tenant']}: retried, attempt {t['attempts']}"
            out.append(
                f'<path class="retry" d="M{x:.1f} {y + 2} l-4 -5 h8 z">'
                f"<title>{h(retried)}</title></path>"
            )
    return "".join(out)


def tenant_title(t: Tenant) -> str:
    """The hover text of a tenant's bar: who, what, when, how long, why it failed."""
    lines = [
        f"{t['shard']}/{t['tenant']}: {t['status']}",
        f"{revision(t.get('before'))} -> {revision(t.get('after'))}",
        f"started {seconds(t.get('start'))} into the run, took {seconds(t.get('seconds'))}",
    ]
    if (t.get("attempts") or 1) > 1:
        lines.append(f"attempt {t['attempts']} ({t['attempts'] - 1} lock timeout(s) before)")
    if t.get("error"):
        lines.append(str(t["error"]))
    return "\n".join(lines)


def _wait_title(t: Tenant, w: Mapping[str, Any]) -> str:
    return (
        f"{t['shard']}/{t['tenant']}: attempt {w['attempt']} hit the lock timeout\n"
        f"at {seconds(w['at'])}, after {seconds(w['waited'])}; rolled back\n{w['blocker']}"
    )
