"""The status report (``ppp status --html``): where every tenant stands, drawn from the
same data as ``ppp status --json`` (with the shards' errors), no timeline."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from ppp_env.report.page import Raw, badge, facts, h, page, revision, section, table, when
from ppp_env.report.run import by_revision

STATES = ("head", "behind", "no schema", "unreachable")

Data = Mapping[str, Any]


def status_html(data: Data) -> str:
    """The whole page of the status report; ``data["generated"]``: when (UTC, ISO 8601)."""
    rows = list(data.get("tenants") or [])
    body = [
        _header(data, rows),
        _errors(data.get("errors") or {}),
        _attention(rows),
        by_revision(rows, _revision),
        _states(rows),
        _shared(data.get("shared")),
        _every(rows),
    ]
    return page(_title(data, rows), "".join(body))


def _revision(r: Mapping[str, Any]) -> object:
    """The revision a status row stands at; for a tenant not read, why."""
    where = r.get("migrations")
    return where if where in ("unreachable", "no schema") else r.get("revision")


def _needs_attention(r: Mapping[str, Any]) -> bool:
    return r.get("migrations") != "head" or r.get("veneer") != "in step"


def _title(data: Data, rows: Sequence[Mapping[str, Any]]) -> str:
    heads = ", ".join(data.get("heads") or []) or "none"
    at_head = sum(1 for r in rows if r.get("migrations") == "head")
    return f"PPP status: {at_head} of {len(rows)} tenant(s) at head ({heads})"


def _header(data: Data, rows: Sequence[Mapping[str, Any]]) -> Raw:
    states = Counter(r.get("migrations") for r in rows)
    ok = not data.get("errors") and not any(_needs_attention(r) for r in rows)
    pairs: list[tuple[str, object]] = [
        ("command", "status"),
        ("head revision", ", ".join(data.get("heads") or []) or "none"),
        ("result", "in step" if ok else "needs attention"),
        ("generated (UTC)", when(data.get("generated"))),
        ("tenants", len(rows)),
        *((s, states.get(s, 0)) for s in STATES),
        ("veneer stale", sum(1 for r in rows if r.get("veneer") == "stale")),
        ("shard errors", len(data.get("errors") or {})),
    ]
    state = badge("ok" if ok else "behind")
    return Raw(f"<header><h1>{h(_title(data, rows))} {state}</h1>{facts(pairs)}</header>")


def _errors(errors: Mapping[str, str]) -> str:
    if not errors:
        return ""
    items = "".join(
        f'<div class="failure"><h3>{badge("unreachable")} shard {h(shard)}</h3>'
        f"<pre>{h(error)}</pre></div>"
        for shard, error in errors.items()
    )
    return section("failures", f"Shard errors ({len(errors)})", items)


def _attention(rows: Sequence[Mapping[str, Any]]) -> str:
    """Tenants behind, without a schema, unreachable, or whose veneer is stale."""
    todo = [r for r in rows if _needs_attention(r)]
    if not todo:
        return section(
            "attention",
            "Tenants needing attention",
            "<p>None: every tenant is at head and its veneer in step.</p>",
        )
    content = table(
        ["shard", "tenant", "revision", "migrations", "veneer"],
        [
            [
                r["shard"],
                r["tenant"],
                revision(_revision(r)),
                badge(r["migrations"]),
                badge(r["veneer"]),
            ]
            for r in todo
        ],
        cls="sortable filterable",
    )
    note = "ppp migrate brings tenants to head and refreshes stale veneer tables."
    return section("attention", f"Tenants needing attention ({len(todo)})", content, note)


def _states(rows: Sequence[Mapping[str, Any]]) -> str:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        counts[r["shard"]][r.get("migrations") or "?"] += 1
        counts[r["shard"]]["stale"] += r.get("veneer") == "stale"
    body = [
        [shard, *(c.get(s, 0) for s in (*STATES, "stale")), sum(c[s] for s in STATES)]
        for shard, c in sorted(counts.items())
    ]
    headers = ["shard", *STATES, "veneer stale", "total"]
    content = table(headers, body, numeric=tuple(range(1, 7))) if body else "<p>No tenants.</p>"
    return section("states", "Tenants by state per shard", content)


def _shared(shared: Mapping[str, Any] | None) -> str:
    if not shared:
        return ""
    rows = [
        [s["shard"], revision(s.get("revision")), badge(s.get("migrations") or "?")]
        for s in shared.get("shards") or []
    ]
    heads = ", ".join(shared.get("heads") or []) or "none"
    content = table(["shard", "revision", "migrations"], rows) if rows else ""
    return section("shared", f"Shared migrations (head: {heads})", content)


def _every(rows: Sequence[Mapping[str, Any]]) -> str:
    content = table(
        ["shard", "tenant", "revision", "migrations", "veneer"],
        [
            [
                r["shard"],
                r["tenant"],
                revision(_revision(r)),
                badge(r["migrations"]),
                badge(r["veneer"]),
            ]
            for r in rows
        ],
        cls="sortable filterable",
    )
    return section("tenants", f"Every tenant ({len(rows)})", content)
