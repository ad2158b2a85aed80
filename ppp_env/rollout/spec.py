"""A rollout file (TOML) and the stages it resolves to over the catalog's tenants.

```toml
[[stage]]
name = "canary"
tenants = ["acme", "initech"]      # or: tags = { tier = "internal" }, or: percent = 1
on_error = "halt"
check = "SELECT count(*) = 0 FROM authors WHERE last_name IS NULL"

[[stage]]
name = "rest"                      # no selector: every tenant no earlier stage took
parallel = 4
max_failures = 5
pause_after = "30s"
```

Resolution happens once, when the rollout starts: each tenant belongs to the first stage
that selects it, and the stages' tenant lists are kept with the rollout in the catalog (so
a resume runs exactly the same tenants).
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppp_env.errors import PPPError
from ppp_env.veneer.catalog import Tenant, plural, validate_tags

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ON_ERROR = ("halt", "continue")
STAGE_KEYS = (
    "name",
    "tenants",
    "tags",
    "percent",
    "on_error",
    "parallel",
    "max_failures",
    "pause_after",
    "check",
    "check_command",
    "check_timeout",
)
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?\Z")


def parse_duration(value: object, what: str) -> float:
    """Seconds from a number or a string like ``90``, ``30s``, ``5m``, ``1h30m``."""
    if isinstance(value, bool):
        raise PPPError(f"{what}: expected a duration like 30s, 5m or 1h30m, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            m = _DURATION.match(text)
            if not m or not any(m.groups()):
                raise PPPError(
                    f"{what}: expected a duration like 30s, 5m or 1h30m, got {value!r}"
                ) from None
            h, mi, s = (float(g) if g else 0.0 for g in m.groups())
            seconds = h * 3600 + mi * 60 + s
    else:
        raise PPPError(f"{what}: expected a duration like 30s, 5m or 1h30m, got {value!r}")
    if not 0 <= seconds <= 7 * 86_400:
        raise PPPError(f"{what}: {value!r} is out of range (0 to 7 days)")
    return seconds


@dataclass(frozen=True)
class StageSpec:
    """One ``[[stage]]`` of a rollout file, checked."""

    name: str
    tenants: tuple[str, ...] | None = None
    tags: Mapping[str, str] | None = None
    percent: float | None = None
    on_error: str = "halt"
    #: Tenants migrated at once per shard (None: the run's default).
    parallel: int | None = None
    #: Failed tenants that halt the rollout (with on_error "halt"; default 1).
    max_failures: int | None = None
    pause_after: float = 0.0
    check: str | None = None
    check_command: str | None = None
    check_timeout: float = 600.0

    @property
    def selects_rest(self) -> bool:
        return self.tenants is None and self.tags is None and self.percent is None

    @property
    def halt_after(self) -> int | None:
        """Failed tenants at which the stage halts the rollout (None: never)."""
        if self.on_error == "continue":
            return None
        return self.max_failures or 1

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tenants": list(self.tenants) if self.tenants is not None else None,
            "tags": dict(self.tags) if self.tags is not None else None,
            "percent": self.percent,
            "on_error": self.on_error,
            "parallel": self.parallel,
            "max_failures": self.max_failures,
            "pause_after": self.pause_after,
            "check": self.check,
            "check_command": self.check_command,
            "check_timeout": self.check_timeout,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StageSpec:
        values = dict(data)
        if values.get("tenants") is not None:
            values["tenants"] = tuple(values["tenants"])
        return cls(**{k: values[k] for k in STAGE_KEYS if k in values})


def load_rollout(path: Path) -> list[StageSpec]:
    """The stages of rollout file ``path``; PPPError naming the file, the stage and the key
    for anything it cannot use (nothing runs then)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PPPError(f"cannot read the rollout file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PPPError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"stage"})
    if unknown:
        raise PPPError(f"{path}: unknown key {unknown[0]!r}: a rollout file has [[stage]] tables")
    raw = data.get("stage")
    if not isinstance(raw, list) or not raw:
        raise PPPError(f"{path}: no stages: add at least one [[stage]] table")
    stages = [_stage(path, i, s) for i, s in enumerate(raw, 1)]
    names = [s.name for s in stages]
    for name in names:
        if names.count(name) > 1:
            raise PPPError(f"{path}: two stages are named {name!r}: names must differ")
    for s in stages[:-1]:
        if s.selects_rest:
            raise PPPError(
                f"{path}: stage {s.name!r} selects no tenants (tenants, tags or percent): "
                "only the last stage may take the rest"
            )
    return stages


def _stage(path: Path, number: int, raw: object) -> StageSpec:
    if not isinstance(raw, dict):
        raise PPPError(f"{path}: stage {number} is not a table")
    where = f"{path}: stage {raw.get('name', number)!r}"
    unknown = sorted(set(raw) - set(STAGE_KEYS))
    if unknown:
        raise PPPError(f"{where}: unknown key {unknown[0]!r}: expected {', '.join(STAGE_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,63}", name):
        raise PPPError(f"{where}: name must be 1-63 letters, digits, '_', '.' or '-'")
    selectors = [k for k in ("tenants", "tags", "percent") if k in raw]
    if len(selectors) > 1:
        raise PPPError(
            f"{where}: give one of tenants, tags or percent, not {' and '.join(selectors)}"
        )
    values: dict[str, Any] = {"name": name}
    values.update(_selector(where, raw))
    values.update(_policy(where, raw))
    return StageSpec(**values)


def _selector(where: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    if "tenants" in raw:
        tenants = raw["tenants"]
        if (
            not isinstance(tenants, list)
            or not tenants
            or not all(isinstance(t, str) for t in tenants)
        ):
            raise PPPError(f"{where}: tenants must be a non-empty list of tenant names")
        return {"tenants": tuple(dict.fromkeys(tenants))}
    if "tags" in raw:
        tags = raw["tags"]
        if not isinstance(tags, dict) or not tags:
            raise PPPError(f'{where}: tags must be a table like {{ tier = "internal" }}')
        try:
            return {"tags": validate_tags(tags)}
        except PPPError as exc:
            raise PPPError(f"{where}: {exc}") from None
    if "percent" in raw:
        percent = raw["percent"]
        if isinstance(percent, bool) or not isinstance(percent, (int, float)):
            raise PPPError(f"{where}: percent must be a number above 0, at most 100")
        if not 0 < percent <= 100:
            raise PPPError(f"{where}: percent must be above 0 and at most 100, got {percent}")
        return {"percent": float(percent)}
    return {}


def _integer(where: str, raw: Mapping[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise PPPError(f"{where}: {key} must be a whole number from {lo} to {hi}, got {value!r}")
    return value


def _text(where: str, raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise PPPError(f"{where}: {key} must be a non-empty string")
    return value


def _policy(where: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    on_error = raw.get("on_error", "halt")
    if on_error not in ON_ERROR:
        raise PPPError(f'{where}: on_error must be "halt" or "continue", got {on_error!r}')
    max_failures = _integer(where, raw, "max_failures", 1, 1_000_000)
    if max_failures is not None and on_error == "continue":
        raise PPPError(f'{where}: max_failures needs on_error = "halt" ("continue" never halts)')
    values: dict[str, Any] = {
        "on_error": on_error,
        "max_failures": max_failures,
        "parallel": _integer(where, raw, "parallel", 1, 64),
        "check": _text(where, raw, "check"),
        "check_command": _text(where, raw, "check_command"),
    }
    if "pause_after" in raw:
        values["pause_after"] = parse_duration(raw["pause_after"], f"{where}: pause_after")
    if "check_timeout" in raw:
        values["check_timeout"] = parse_duration(raw["check_timeout"], f"{where}: check_timeout")
        if values["check_timeout"] <= 0:
            raise PPPError(f"{where}: check_timeout must be above 0")
    return values


# -- resolution ----------------------------------------------------------------------------------
@dataclass
class Resolved:
    """Each stage's tenants (in stage order), and what resolving said once."""

    tenants: list[list[str]]
    notes: list[str] = field(default_factory=list)


def _sample_key(schema: str) -> str:
    """A stable order for ``percent``: the same tenants every time, spread over shards."""
    return hashlib.sha256(schema.encode()).hexdigest()


def resolve(stages: Sequence[StageSpec], tenants: Sequence[Tenant]) -> Resolved:
    """Each stage's tenants among ``tenants`` (the catalog's, in service): the first stage
    that selects a tenant has it. PPPError for an unknown tenant or tag, or a stage that
    selects nobody (the last stage taking the rest may find nobody left: a note)."""
    by_name = {t.schema: t for t in tenants}
    known_keys = sorted({k for t in tenants for k in t.tags})
    claimed: dict[str, str] = {}
    out = Resolved([])
    for stage in stages:
        if stage.tenants is not None:
            unknown = [t for t in stage.tenants if t not in by_name]
            if unknown:
                raise PPPError(
                    f"stage {stage.name!r}: unknown tenant{'s' if len(unknown) > 1 else ''} "
                    f"{plural(unknown)} (not in the catalog, or removed; see `ppp tenant list`)"
                )
            picked = list(stage.tenants)
        elif stage.tags is not None:
            missing = sorted(set(stage.tags) - set(known_keys))
            if missing:
                raise PPPError(
                    f"stage {stage.name!r}: unknown tag {missing[0]!r}: no tenant has it (the "
                    f"tenants' tags: {', '.join(known_keys) or 'none'}; see `ppp tenant tag`)"
                )
            want = stage.tags.items()
            picked = [t.schema for t in tenants if all(t.tags.get(k) == v for k, v in want)]
        elif stage.percent is not None:
            free = sorted((s for s in by_name if s not in claimed), key=_sample_key)
            count = min(len(free), max(1, math.ceil(len(by_name) * stage.percent / 100)))
            picked = sorted(free[:count]) if free else []
        else:
            picked = [s for s in by_name if s not in claimed]
        taken = [s for s in picked if s in claimed]
        if taken:
            firsts = ", ".join(sorted({repr(claimed[s]) for s in taken}))
            out.notes.append(
                f"stage {stage.name!r}: {len(taken)} of its tenant(s) ({plural(taken)}) belong "
                f"to an earlier stage ({firsts}) and run there"
            )
        mine = [s for s in picked if s not in claimed]
        if not mine:
            if stage.selects_rest:
                out.notes.append(f"stage {stage.name!r}: no tenant left for it")
            else:
                raise PPPError(
                    f"stage {stage.name!r} selects no tenant"
                    + (" that an earlier stage did not take" if picked else "")
                )
        for s in mine:
            claimed[s] = stage.name
        out.tenants.append(mine)
    left = [s for s in by_name if s not in claimed]
    if left:
        out.notes.append(
            f"{len(left)} tenant(s) are in no stage ({plural(left)}): this rollout leaves them "
            "as they are (a last stage without tenants, tags or percent takes the rest)"
        )
    return out
