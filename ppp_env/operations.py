"""``ppp migrate`` as a library call: veneer -> shared -> tenants -> veneer refresh.

The command line only parses options and prints; :func:`migrate` runs the steps in order
and returns what each did:

1. the veneer (catalog, foreign servers, tenant onboarding): a failure stops everything;
2. the shared migrations (``[shared]`` in alembic.ini), once per shard database, on the
   shards of the tenants being migrated (or the selected / all shards). A shard whose
   shared step failed does not get its tenant step: its tenants would reference objects
   that are not there. They are reported ``not_run``. An ini without ``[shared]`` (a
   project from before shared migrations) skips the step with a note;
3. the tenants (``alembic upgrade <revision>`` through the fleet runner), refresh off;
4. a veneer refresh of every tenant whose revision changed or whose veneer is stale.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic.config import Config

from ppp_env.alembic_env import find_alembic_ini, section_config
from ppp_env.errors import PPPError
from ppp_env.fleet.commands import tenant_config, upgrade_tenants
from ppp_env.fleet.options import RunOptions
from ppp_env.fleet.results import FleetResult, TenantResult, refresh_veneer
from ppp_env.settings import Settings
from ppp_env.shared import env as shared_env
from ppp_env.shared.env import SharedResult
from ppp_env.veneer import env as veneer_env
from ppp_env.veneer.catalog import WIRED_STATES, Tenant, in_service, list_tenants


@dataclass
class MigrateOptions(RunOptions):
    """``ppp migrate``'s options: the fleet's (:class:`RunOptions`: shards, tenants,
    fail_fast, jobs, lock, timeouts, retries, output, verbose...) and the target revision."""

    revision: str = "head"


@dataclass
class MigrateResult:
    """What ``ppp migrate`` did: the shared step (None when skipped) and the tenants'."""

    tenants: FleetResult
    shared: SharedResult | None = None
    shared_note: str | None = None
    #: Shards whose tenants were not migrated because their shared step failed.
    blocked: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.tenants.ok and (self.shared is None or self.shared.ok)

    def failure_message(self) -> str:
        lines: list[str] = []
        if self.shared is not None and not self.shared.ok:
            lines.append(self.shared.failure_message())
            for shard in self.blocked:
                n = sum(1 for t in self.tenants.tenants if t.shard == shard)
                lines.append(
                    f"shard {shard}: its {n} tenant(s) were not migrated (they would reference "
                    "shared objects that are missing); fix the shared step and rerun"
                )
        if not self.tenants.ok:
            lines.append(self.tenants.failure_message())
        return "\n".join(lines)

    def summary(self) -> str:
        return self.tenants.summary()

    def to_json(self) -> dict[str, Any]:
        report = self.tenants.to_json()
        report["ok"] = self.ok
        report["seconds"] = round(self.seconds, 3)
        report["shared"] = {
            "skipped": self.shared_note,
            "ok": self.shared.ok if self.shared else True,
            "shards": (
                [
                    {"shard": s.shard, "before": s.before, "after": s.after, "error": s.error}
                    for s in self.shared.shards
                ]
                if self.shared
                else []
            ),
            "blocked": sorted(self.blocked),
        }
        return report


def alembic_config(
    path: str | Path | None, section: str = "alembic", settings: Any = None
) -> Config:
    """A Config for one section of an alembic.ini (``-c``, else the one lookup every command
    shares: :func:`ppp_env.alembic_env.find_alembic_ini`), carrying ``settings`` to its env.py."""
    return section_config(path, section, settings)


def upgrade_veneer(settings: Settings, config_path: str | Path | None) -> None:
    """Step 1 as a library call: ``alembic -n veneer upgrade heads`` (every onboarding
    revision is a head); the tenants it registers are wired by the refresh step, once the
    tenant step created their schemas. ``ppp migrate`` passes its own ``veneer_step``
    (the same call, with its message)."""
    try:
        veneer_env.upgrade(settings, "heads", alembic_config(config_path, "veneer"), wire=False)
    except PPPError as exc:
        raise PPPError(f"veneer upgrade failed: {exc}") from None


def _say(step: str, detail: str) -> None:
    return None


Say = Callable[[str, str], None]


def migrate(
    settings: Settings,
    config_path: str | Path | None,
    options: MigrateOptions,
    *,
    veneer_step: Callable[[], None] | None = None,
    say: Say = _say,
) -> MigrateResult:
    """Veneer, shared, tenants, refresh; ``say(step, detail)`` hears each step as it starts
    and each shard's shared outcome (step ``shared <shard>``).

    PPPError when a step could not run at all (bad input, the veneer failed); otherwise the
    result says what happened, failures included (``result.ok``).
    """
    started = time.perf_counter()
    for shard in options.shards or []:
        settings.shard(shard)  # unknown shards fail before anything runs
    ini = find_alembic_ini(config_path)  # a missing ini fails before anything runs too
    if veneer_step is None:
        say("1/4 veneer", "alembic -n veneer upgrade heads")
        upgrade_veneer(settings, ini)
    else:
        veneer_step()
    # After the veneer step: onboarding revisions may just have registered tenants.
    catalog = in_service(
        list_tenants(settings, shards=options.shards, tenants=options.tenants, timestamps=False)
    )
    if options.tenants is not None:
        shard_names = list(dict.fromkeys(t.shard for t in catalog))
    else:
        shard_names = list(options.shards or settings.shards)
    shared, note = _shared_step(settings, ini, shard_names, say)
    blocked = dict(shared.failed) if shared else {}
    say("3/4 tenants", f"alembic upgrade {options.revision}")
    result = _tenant_step(settings, ini, options, catalog, shard_names, blocked)
    say("4/4 veneer refresh", "tenants whose revision changed or whose veneer is stale")
    _refresh_step(settings, catalog, result, blocked)
    result.seconds = time.perf_counter() - started
    return MigrateResult(result, shared, note, blocked, result.seconds)


def _shared_step(
    settings: Settings, ini: Path, shard_names: list[str], say: Say
) -> tuple[SharedResult | None, str | None]:
    """Step 2: the shared migrations of these shards (skipped without ``[shared]``)."""
    if not shared_env.has_shared_section(ini):
        note = f"no [shared] section in {ini}: shared migrations skipped"
        say("2/4 shared", note)
        return None, note
    say("2/4 shared", f"alembic -n shared upgrade head ({len(shard_names)} shard(s))")
    shared = shared_env.upgrade(settings, ini, "head", shard_names)
    for outcome in shared.shards:
        say(f"shared {outcome.shard}", outcome.describe())
    return shared, None


def _tenant_step(
    settings: Settings,
    ini: Path,
    options: MigrateOptions,
    catalog: Sequence[Tenant],
    shard_names: list[str],
    blocked: dict[str, str],
) -> FleetResult:
    """Step 3: the tenants, except those of a shard whose shared step failed (``not_run``)."""
    runnable = [t for t in catalog if t.shard not in blocked]
    if blocked and not runnable:
        result = FleetResult("upgrade")
    else:
        narrowed: dict[str, Any] = {}
        if blocked:  # leave the blocked shards out
            narrowed["shards"] = [s for s in shard_names if s not in blocked]
            if options.tenants is not None:
                narrowed["tenants"] = [t.schema for t in runnable]
        # The report, if any, is of the whole `ppp migrate`: its caller writes it.
        run_options = options.run_options(refresh=False, report=None, **narrowed)
        outcome = upgrade_tenants(
            tenant_config(ini, settings), options.revision, run_options, runnable
        )
        if outcome.result is None:
            raise PPPError(outcome.failure or "the tenant upgrade did not run")
        result = outcome.result
    for t in catalog:
        if t.shard in blocked:
            result.tenants.append(
                TenantResult(t.shard, t.schema, "not_run", error="shared migrations failed")
            )
    return result


def _refresh_step(
    settings: Settings, catalog: Sequence[Tenant], result: FleetResult, blocked: dict[str, str]
) -> None:
    """Step 4: refresh every tenant whose veneer was wired at another revision than the one
    the run saw (changed now, or stale from before)."""
    now = {
        t.tenant: t.after if t.status in ("migrated", "current") else t.before
        for t in result.tenants
        if t.shard not in blocked
    }
    wanted = sorted(
        t.schema
        for t in catalog
        if t.schema in now
        and t.wired_revision != now[t.schema]
        and (t.state in WIRED_STATES or not settings.wires_on_demand)
    )
    if not wanted:
        return
    refresh_veneer(settings, result, wanted)
