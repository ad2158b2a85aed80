"""The report of a fleet run (``ppp migrate --report``, ``alembic -x report=``), drawn from
the run's JSON (``FleetResult.to_json()`` or ``ppp migrate --json``): whatever it shows,
``--json`` carries too."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from ppp_env.report import timeline
from ppp_env.report.page import (
    Raw,
    badge,
    facts,
    h,
    page,
    revision,
    seconds,
    section,
    table,
    took,
    when,
)
from ppp_env.report.rollout import stages_section

STATUSES = ("migrated", "current", "failed", "locked", "not_run")
#: How many of the slowest tenants the report lists.
SLOWEST = 10

Data = Mapping[str, Any]


def run_html(data: Data) -> str:
    """The whole page of a run's report."""
    tenants = list(data.get("tenants") or [])
    body = [
        _header(data, tenants),
        stages_section(data.get("stages")),
        _failures(data, tenants),
        _timeline(data, tenants),
        by_revision(tenants, lambda t: _now(t)),
        _slowest(tenants),
        _online(data.get("online") or []),
        _shared(data.get("shared")),
        _all_tenants(tenants),
    ]
    return page(_title(data), "".join(body))


def _title(data: Data) -> str:
    state = (data.get("rollout") or {}).get("state")
    outcome = state if state and state != "done" else "done" if data.get("ok") else "FAILED"
    return f"PPP {data.get('command') or 'run'} to {data.get('revision') or '?'}: {outcome}"


def _now(t: Mapping[str, Any]) -> object:
    """Where a tenant stands after the run."""
    return t.get("after") if t.get("status") in ("migrated", "current") else t.get("before")


def _header(data: Data, tenants: Sequence[Mapping[str, Any]]) -> Raw:
    counts = data.get("counts") or Counter(t.get("status") for t in tenants)
    veneer = data.get("veneer") or {}
    pairs: list[tuple[str, object]] = [
        ("command", data.get("command")),
        ("revision", data.get("revision") or "-"),
        ("result", "ok" if data.get("ok") else "failed"),
        ("started (UTC)", when(data.get("started"))),
        ("run time", seconds(data.get("seconds"))),
        ("tenants", len(tenants)),
        *((s.replace("_", " "), counts.get(s, 0)) for s in STATUSES),
        ("lock retries", data.get("retries", 0)),
        ("shard errors", len(data.get("shard_errors") or {})),
        ("veneer refreshed", len(veneer.get("refreshed") or [])),
    ]
    if rollout := data.get("rollout"):
        pairs[1:1] = [("rollout", rollout.get("state")), ("file", rollout.get("file"))]
    return Raw(
        f"<header><h1>{h(_title(data))} {badge('ok' if data.get('ok') else 'failed')}</h1>"
        f"{facts(pairs)}</header>"
    )


def _failures(data: Data, tenants: Sequence[Mapping[str, Any]]) -> str:
    items = []
    rollout = data.get("rollout") or {}
    if rollout.get("reason"):
        what = f"rollout {rollout.get('state')} at stage {rollout.get('stage')}"
        items.append(_failure(what, "failed", str(rollout["reason"])))
    for shard, error in (data.get("shard_errors") or {}).items():
        items.append(_failure(f"shard {shard}", "failed", str(error)))
    for s in (data.get("shared") or {}).get("shards") or []:
        if s.get("error"):
            items.append(_failure(f"shared migrations of shard {s['shard']}", "failed", s["error"]))
    for t in tenants:
        if t.get("status") in ("failed", "locked") or (
            t.get("status") == "not_run" and t.get("error")
        ):
            items.append(_failure(f"{t['shard']}/{t['tenant']}", t["status"], _failure_text(t)))
    if (data.get("veneer") or {}).get("error"):
        items.append(_failure("veneer refresh", "failed", data["veneer"]["error"]))
    untried = [t for t in tenants if t.get("status") == "not_run" and not t.get("error")]
    if untried:
        names = ", ".join(f"{t['shard']}/{t['tenant']}" for t in untried)
        items.append(
            _failure(f"{len(untried)} tenant(s) not run (a rerun does them)", "not_run", names)
        )
    if not items:
        return ""
    return section("failures", f"Failures ({len(items)})", "".join(items))


def _failure(what: str, status: str, text: str) -> str:
    return f'<div class="failure"><h3>{badge(status)} {h(what)}</h3><pre>{h(text)}</pre></div>'


def _failure_text(t: Mapping[str, Any]) -> str:
    lines = [str(t.get("error") or "")]
    for w in t.get("waits") or []:
        lines.append(
            f"attempt {w['attempt']} at {seconds(w['at'])}: waited {seconds(w['waited'])}, "
            f"{w['blocker']}"
        )
    return "\n".join(lines)


def _timeline(data: Data, tenants: Sequence[Mapping[str, Any]]) -> str:
    by_shard: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for t in tenants:
        by_shard[t["shard"]].append(t)
    spans = data.get("shard_spans") or {}
    if not spans and not any(t.get("start") is not None for t in tenants):
        return section("timeline", "Timeline", '<p class="note">Nothing was tried.</p>')
    axis = timeline.Axis(timeline.run_end(data))
    first = {
        s: min((sp[0] for sp in timeline.spans(spans.get(s) or [])), default=1e12) for s in by_shard
    }
    order = sorted(by_shard, key=lambda s: (first[s], s))
    marks = data.get("stage_marks") or ()
    parts = [_legend()]
    for shard in order:
        counts = Counter(t["status"] for t in by_shard[shard])
        line = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.most_common())
        parts.append(f"<h3>shard {h(shard)} <small>{h(line)}</small></h3>")
        span = spans.get(shard) or []
        parts.append(timeline.shard_timeline(shard, by_shard[shard], span, axis, marks))
    note = (
        "Seconds since the tenant run started; hover a bar for the tenant, its revisions, times "
        "and error. Tenants already current took no time and have no bar."
        + (" Dashed lines: where each stage of the rollout began." if marks else "")
    )
    return section("timeline", "Timeline per shard", "".join(parts), note)


def _legend() -> str:
    keys = [
        ("bar migrated", "migrated"),
        ("bar failed", "failed"),
        ("bar locked", "locked (gave up)"),
        ("wait", "lock wait (rolled back, retried)"),
        ("retry", "retried tenant"),
        ("span", "shard worker running"),
    ]
    items = "".join(
        f'<span><svg viewBox="0 0 14 10" width="14" height="10"><rect class="{c}" x="0" y="0" '
        f'width="14" height="10"/></svg>{h(label)}</span>'
        for c, label in keys
    )
    return f'<p class="legend">{items}</p>'


def by_revision(rows: Sequence[Mapping[str, Any]], where: Any) -> str:
    """Tenants by revision per shard: a count per (shard, revision), ``where(row)`` the
    revision a row stands at."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        counts[r["shard"]][revision(where(r))] += 1
    revisions = sorted({rev for c in counts.values() for rev in c})
    body = [
        [shard, *(c.get(rev, 0) or "" for rev in revisions), sum(c.values())]
        for shard, c in sorted(counts.items())
    ]
    numeric = tuple(range(1, len(revisions) + 2))
    content = table(["shard", *revisions, "total"], body, numeric=numeric) if body else ""
    return section("revisions", "Tenants by revision per shard", content or "<p>No tenants.</p>")


def _slowest(tenants: Sequence[Mapping[str, Any]]) -> str:
    tried = [t for t in tenants if t.get("start") is not None]
    slow = sorted(tried, key=lambda t: -(t.get("seconds") or 0.0))[:SLOWEST]
    rows = [
        [
            t["shard"],
            t["tenant"],
            badge(t["status"]),
            _revisions(t),
            took(t.get("start")),
            took(t.get("seconds")),
            t.get("attempts", 1),
        ]
        for t in slow
    ]
    headers = ["shard", "tenant", "status", "revisions", "started", "took", "attempts"]
    content = table(headers, rows, numeric=(4, 5, 6)) if rows else "<p>No tenant was tried.</p>"
    return section("slowest", f"Slowest tenants (top {SLOWEST})", content)


def _revisions(t: Mapping[str, Any]) -> str:
    """``before → after``; only where it stayed when it did not get through."""
    if t.get("status") in ("migrated", "current"):
        return f"{revision(t.get('before'))} → {revision(t.get('after'))}"
    return f"{revision(t.get('before'))} (stayed)"


def _online(online: Sequence[Mapping[str, Any]]) -> str:
    if not online:
        note = "Every revision was rendered once and sent to each tenant in one round trip."
        return section("online", "Revisions that ran online", f"<p>{h(note)}</p>")
    rows = [[o.get("revision"), o.get("reason")] for o in online]
    note = "These could not be rendered to SQL once: they ran through Alembic, tenant by tenant."
    return section("online", "Revisions that ran online", table(["revision", "why"], rows), note)


def _shared(shared: Mapping[str, Any] | None) -> str:
    if not shared:
        return ""
    if shared.get("skipped"):
        return section("shared", "Shared migrations", f"<p>{h(shared['skipped'])}</p>")
    rows = [
        [s["shard"], revision(s.get("before")), revision(s.get("after")), s.get("error") or ""]
        for s in shared.get("shards") or []
    ]
    headers = ["shard", "before", "after", "error"]
    return section("shared", "Shared migrations", table(headers, rows) if rows else "")


def _all_tenants(tenants: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        [
            t["shard"],
            t["tenant"],
            badge(t["status"]),
            revision(t.get("before")),
            revision(t.get("after")),
            took(t.get("start")),
            took(t.get("seconds") if t.get("start") is not None else None),
            t.get("attempts", 1),
            t.get("error") or "",
        ]
        for t in tenants
    ]
    staged = any("stage" in t for t in tenants)
    if staged:
        rows = [[t.get("stage") or "-", *row] for t, row in zip(tenants, rows, strict=True)]
    headers = [
        "shard",
        "tenant",
        "status",
        "before",
        "after",
        "started",
        "took",
        "attempts",
        "error",
    ]
    numeric: tuple[int, ...] = (5, 6, 7)
    if staged:
        headers, numeric = ["stage", *headers], (6, 7, 8)
    content = table(headers, rows, cls="sortable filterable", numeric=numeric)
    return section("tenants", f"Every tenant ({len(rows)})", content)
