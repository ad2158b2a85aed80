"""A staged rollout (``ppp migrate --rollout FILE --report``) as one run for the report:
every stage's tenants on one time axis, each stage's start marked, the stages' table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from ppp_env.report.page import badge, section, table, took, when

Data = Mapping[str, Any]


def epoch(iso: object) -> float | None:
    """Seconds since the epoch of an ISO 8601 time (``...Z`` or with an offset), or None."""
    if not isinstance(iso, str) or not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def rollout_data(data: Data) -> dict[str, Any]:
    """The run data a report draws (as ``FleetResult.to_json()``), from a rollout's JSON
    (``RolloutRun.to_json()``: its stages, each with the ``result`` of its ``ppp migrate``)."""
    rollout = dict(data.get("rollout") or {})
    stages = list(data.get("stages") or [])
    ran = [(s, s["result"]) for s in stages if s.get("result")]
    starts = [epoch(r.get("started")) for _, r in ran]
    zero = min((t for t in starts if t is not None), default=None)
    merged: dict[str, Any] = {
        "command": f"rollout #{rollout.get('id', '?')}",
        "revision": rollout.get("revision"),
        "ok": bool(data.get("ok")),
        "started": next((r.get("started") for _, r in ran if r.get("started")), None),
        "seconds": data.get("seconds"),
        "tenants": [],
        "shard_spans": {},
        "stage_marks": [],
        "shard_errors": {},
        "online": [],
        "stages": stages,
        "rollout": rollout,
    }
    counts: Counter[str] = Counter()
    online: dict[str, str] = {}
    refreshed: list[str] = []
    for (stage, result), start in zip(ran, starts, strict=True):
        shift = start - zero if start is not None and zero is not None else 0.0
        _add_stage(merged, stage["name"], result, shift)
        counts.update(result.get("counts") or {})
        online.update({o["revision"]: o["reason"] for o in result.get("online") or []})
        refreshed += (result.get("veneer") or {}).get("refreshed") or []
    merged["counts"] = dict(counts)
    merged["retries"] = sum(r.get("retries") or 0 for _, r in ran)
    merged["online"] = [{"revision": k, "reason": v} for k, v in sorted(online.items())]
    merged["veneer"] = {"refreshed": refreshed, "pending": [], "error": None}
    return merged


def _add_stage(merged: dict[str, Any], name: str, result: Data, shift: float) -> None:
    """One stage's tenants, spans and errors, its times moved onto the rollout's axis."""
    merged["stage_marks"].append({"name": name, "at": round(shift, 4)})
    for t in result.get("tenants") or []:
        moved = {**t, "stage": name}
        if t.get("start") is not None:
            moved["start"] = round(t["start"] + shift, 4)
        moved["waits"] = [{**w, "at": round(w["at"] + shift, 4)} for w in t.get("waits") or []]
        merged["tenants"].append(moved)
    for shard, span in (result.get("shard_spans") or {}).items():
        merged["shard_spans"].setdefault(shard, []).append([round(x + shift, 4) for x in span])
    for shard, error in (result.get("shard_errors") or {}).items():
        merged["shard_errors"][f"{shard} (stage {name})"] = error
    for s in (result.get("shared") or {}).get("shards") or []:
        if s.get("error"):
            merged["shard_errors"][f"{s['shard']} (stage {name}, shared)"] = s["error"]
    if (result.get("veneer") or {}).get("error"):
        merged["shard_errors"][f"veneer refresh (stage {name})"] = result["veneer"]["error"]


def _count(value: object) -> object:
    """A stage's tenants or failures: a number, or how many in a list or mapping."""
    return len(value) if isinstance(value, (list, dict)) else value


def stages_section(stages: Sequence[Mapping[str, Any]] | None) -> str:
    """The stages of a rollout, when the run had stages (none: no section at all)."""
    if not stages:
        return ""
    rows = [
        [
            s.get("name"),
            badge(str(s.get("status") or "-")),
            _count(s.get("tenants", "-")),
            s.get("migrated", "-"),
            s.get("current", "-"),
            _count(s.get("failed", "-")),
            s.get("check") or "-",
            when(s.get("started")),
            took(s.get("seconds")),
        ]
        for s in stages
    ]
    headers = [
        "stage",
        "status",
        "tenants",
        "migrated",
        "current",
        "failed",
        "check",
        "started",
        "took",
    ]
    content = table(headers, rows, numeric=(2, 3, 4, 5, 8))
    return section("stages", "Rollout stages", content)
