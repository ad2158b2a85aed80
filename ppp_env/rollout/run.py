"""``ppp migrate --rollout FILE`` and ``ppp rollout resume``: the tenant migration in stages.

Each stage is a ``ppp migrate`` of its tenants (shared step, tenants, veneer refresh; the
veneer step runs once, before the stages are resolved). After a stage: its error policy, its
check, its soak time, then the next stage. A halted rollout leaves every tenant it did not
reach as it was and stays in the catalog until it is resumed or aborted.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg2

from ppp_env import db, operations
from ppp_env.alembic_env import find_alembic_ini
from ppp_env.errors import PPPError
from ppp_env.identifiers import quote_ident
from ppp_env.lifecycle.doctor import tenant_heads
from ppp_env.operations import MigrateOptions, MigrateResult
from ppp_env.rollout import store
from ppp_env.rollout.spec import StageSpec, load_rollout, resolve
from ppp_env.rollout.store import Rollout, StageState
from ppp_env.settings import Settings
from ppp_env.veneer.catalog import find_tenants, in_service, plural

Say = Callable[[str, str], None]


def _quiet(step: str, detail: str) -> None:
    return None


@dataclass
class RolloutRun:
    """What one invocation did: the rollout as it stands, each stage's migrate result."""

    rollout: Rollout
    results: dict[str, MigrateResult] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.rollout.state == "done" and not any(s.failed for s in self.rollout.stages)

    def failure_message(self) -> str:
        r = self.rollout
        if r.state == "halted":
            st = r.current_stage
            lines = [f"rollout #{r.id} halted at stage {st.name!r}: {r.reason}"]
            lines += [f"  {t}: {why}" for t, why in list(st.failed.items())[:20]]
            if len(st.failed) > 20:
                lines.append(f"  ... and {len(st.failed) - 20} more (`ppp rollout status --json`)")
            lines.append(
                "every tenant of the later stages is as it was; fix the cause, then "
                "`ppp rollout resume` (or `ppp rollout abort`)"
            )
            return "\n".join(lines)
        failed = {t: why for s in r.stages for t, why in s.failed.items()}
        return f"rollout #{r.id} finished with {len(failed)} failed tenant(s): " + plural(
            sorted(failed)
        )

    def to_json(self) -> dict[str, Any]:
        data = self.rollout.to_json()
        for stage in data["stages"]:
            result = self.results.get(stage["name"])
            stage["result"] = result.to_json() if result else None
        return {
            "ok": self.ok,
            "rollout": data,
            "stages": data["stages"],
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def start_rollout(
    settings: Settings,
    config_path: str | Path | None,
    path: Path,
    options: MigrateOptions,
    *,
    veneer_step: Callable[[], None],
    say: Say = _quiet,
) -> RolloutRun:
    """Check the file and its stages against the catalog, run the veneer step, record the
    rollout and run its stages. PPPError before anything changed for bad input."""
    started = time.perf_counter()
    if options.tenants is not None or options.shards is not None:
        raise PPPError("--rollout selects tenants by its stages: drop --tenant and --shard")
    specs = load_rollout(path)
    ini = find_alembic_ini(config_path)
    heads = list(tenant_heads(ini))
    with store.rollout_connection(settings) as conn:
        with conn.begin():
            store.refuse_open(conn)
            resolve(specs, in_service(find_tenants(conn)))  # bad input fails before any change
        veneer_step()
        with conn.begin():
            resolved = resolve(specs, in_service(find_tenants(conn)))
        stages = [
            StageState(spec.name, spec.to_json(), tenants)
            for spec, tenants in zip(specs, resolved.tenants, strict=True)
        ]
        for note in resolved.notes:
            say("rollout", note)
        rollout = store.insert(conn, str(path), options.revision, heads, stages)
        run = RolloutRun(rollout, notes=resolved.notes)
        _run_stages(settings, config_path, conn, run, options, say)
    run.seconds = time.perf_counter() - started
    return run


def resume_rollout(
    settings: Settings,
    config_path: str | Path | None,
    options: MigrateOptions,
    *,
    veneer_step: Callable[[], None],
    say: Say = _quiet,
) -> RolloutRun:
    """Go on with the open rollout from the stage it stopped at (that stage runs again: its
    tenants already at the target are current). Refused when the tenant chain changed."""
    started = time.perf_counter()
    ini = find_alembic_ini(config_path)
    heads = list(tenant_heads(ini))
    with store.rollout_connection(settings) as conn:
        with conn.begin():
            rollout = store.open_rollout(conn)
        if rollout is None:
            raise PPPError("no rollout to resume: none is halted (see `ppp rollout status`)")
        if sorted(rollout.heads) != sorted(heads):
            raise PPPError(
                f"rollout #{rollout.id} started with the tenant chain at "
                f"{' '.join(rollout.heads) or 'base'}; it is now at {' '.join(heads) or 'base'}: "
                "resume refused (its earlier stages ran another chain). Abort it (`ppp rollout "
                "abort`) and start a new rollout"
            )
        veneer_step()
        rollout.state, rollout.reason = "running", None
        store.save(conn, rollout)
        say("rollout", f"#{rollout.id}: resuming at stage {rollout.current_stage.name!r}")
        run = RolloutRun(rollout)
        _run_stages(settings, config_path, conn, run, options, say)
    run.seconds = time.perf_counter() - started
    return run


def _run_stages(
    settings: Settings,
    config_path: str | Path | None,
    conn: Any,
    run: RolloutRun,
    options: MigrateOptions,
    say: Say,
) -> None:
    r = run.rollout
    try:
        while r.stage < len(r.stages):
            st = r.stages[r.stage]
            spec = StageSpec.from_json(st.spec)
            if not _run_stage(settings, config_path, conn, run, st, spec, options, say):
                return
            if spec.pause_after and r.stage < len(r.stages) - 1:
                store.save(conn, r)
                say(f"stage {st.name}", f"soaking {spec.pause_after:g} s before the next stage")
                time.sleep(spec.pause_after)
            r.stage += 1
        r.stage = len(r.stages) - 1
        r.state = "done"
        store.save(conn, r)
    except BaseException as exc:
        if r.state == "running":
            r.state = "halted"
            r.reason = f"interrupted: {type(exc).__name__}: {exc}".rstrip(": ")
            r.current_stage.status = "halted"
            store.save(conn, r)
        raise


def _run_stage(
    settings: Settings,
    config_path: str | Path | None,
    conn: Any,
    run: RolloutRun,
    st: StageState,
    spec: StageSpec,
    options: MigrateOptions,
    say: Say,
) -> bool:
    """One stage; False when it halted the rollout (recorded)."""
    r = run.rollout
    number = f"{r.stage + 1}/{len(r.stages)}"
    st.status, st.started, st.failed, st.check = "running", _now(), {}, None
    st.migrated = st.current = 0
    store.save(conn, r)
    if not st.tenants:
        say(f"stage {number} {st.name}", "no tenants: skipped")
        st.status = "skipped"
        return True
    say(f"stage {number} {st.name}", f"{len(st.tenants)} tenant(s)")
    t0 = time.perf_counter()
    stage_options = replace(
        options,
        tenants=st.tenants,
        max_failures=spec.halt_after,
        jobs_per_shard=spec.parallel or options.jobs_per_shard,
        revision=r.revision,
    )
    result = operations.migrate(
        settings, config_path, stage_options, veneer_step=lambda: None, say=say
    )
    run.results[st.name] = result
    _record(st, result)
    st.seconds = time.perf_counter() - t0
    failed = result.tenants.count("failed") + result.tenants.count("locked")
    other = _other_problem(result)
    if spec.halt_after is not None and (failed >= spec.halt_after or other):
        why = other or f"{failed} tenant(s) failed (the stage halts at {spec.halt_after})"
        return _halt(conn, r, st, why)
    if spec.check or spec.check_command:
        passed: dict[str, list[str]] = {}  # shard -> tenants at the target
        for t in result.tenants.tenants:
            if t.status in ("migrated", "current"):
                passed.setdefault(t.shard, []).append(t.tenant)
        problem = _check(settings, spec, st.name, passed, say)
        st.check = problem or "passed"
        if problem:
            return _halt(conn, r, st, f"check failed: {problem}")
    st.status = "failed" if st.failed else "passed"
    store.save(conn, r)
    return True


def _record(st: StageState, result: MigrateResult) -> None:
    for t in result.tenants.tenants:
        if t.status == "migrated":
            st.migrated += 1
        elif t.status == "current":
            st.current += 1
        elif t.status == "not_run":
            st.failed[t.tenant] = "not run" + (f": {t.error}" if t.error else "")
        else:
            st.failed[t.tenant] = f"{t.status}: {t.error or ''}".rstrip(": ")


def _other_problem(result: MigrateResult) -> str | None:
    """A problem that is not a tenant's: a shard, the shared step, the veneer refresh."""
    fleet = result.tenants
    if fleet.shard_errors:
        shard, why = next(iter(fleet.shard_errors.items()))
        return f"shard {shard}: {why}"
    if result.shared is not None and not result.shared.ok:
        return result.shared.failure_message().splitlines()[0]
    if fleet.refresh_error:
        return f"veneer refresh: {fleet.refresh_error}"
    return None


def _halt(conn: Any, r: Rollout, st: StageState, why: str) -> bool:
    r.state, r.reason, st.status = "halted", why, "halted"
    store.save(conn, r)
    return False


# -- checks ---------------------------------------------------------------------------------------
def _check(
    settings: Settings, spec: StageSpec, stage: str, placed: dict[str, list[str]], say: Say
) -> str | None:
    """The stage's check(s) on its tenants (shard -> tenants); why they failed, or None."""
    tenants = [t for names in placed.values() for t in names]
    if spec.check:
        say(f"stage {stage}", f"check on {len(tenants)} tenant(s): {spec.check}")
        failures = check_sql(settings, spec.check, placed, spec.check_timeout)
        if failures:
            shown = "; ".join(f"{t}: {why}" for t, why in list(failures.items())[:5])
            more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
            return f"{len(failures)} tenant(s) failed the check: {shown}{more}"
    if spec.check_command:
        say(f"stage {stage}", f"check_command: {spec.check_command}")
        return check_command(spec.check_command, stage, tenants, spec.check_timeout)
    return None


def check_sql(
    settings: Settings, sql: str, placed: dict[str, list[str]], timeout: float
) -> dict[str, str]:
    """Run ``sql`` on every tenant of ``placed`` (shard -> tenants; read-only, ``search_path``
    the tenant, one connection per shard); the tenants it failed for and why. It fails when
    it raises, or when its first row's first value is false or NULL, or it returns no row
    although it is a query."""
    failures: dict[str, str] = {}
    for shard, schemas in placed.items():
        inst = settings.shard(shard)
        with db.connection(inst, "admin", connect_timeout=settings.connect_timeout) as sc:
            cur = sc.cursor()
            for schema in schemas:
                why = _check_one(cur, schema, sql, timeout)
                sc.rollback()
                if why:
                    failures[schema] = why
    return failures


def _check_one(cur: Any, schema: str, sql: str, timeout: float) -> str | None:
    try:
        cur.execute(
            "SET TRANSACTION READ ONLY; "
            f"SET LOCAL search_path TO {quote_ident(schema)}; "
            f"SET LOCAL statement_timeout = {int(timeout * 1000)}"
        )
        cur.execute(sql)
        if cur.description is None:
            return None
        row = cur.fetchone()
    except psycopg2.Error as exc:
        return db.first_line(exc)
    if row is None:
        return "returned no row"
    if row[0] is None or row[0] is False:
        return f"returned {row[0]}"
    return None


def check_command(command: str, stage: str, tenants: list[str], timeout: float) -> str | None:
    """Run ``command`` (a shell command) with the stage in its environment: PPP_ROLLOUT_STAGE,
    PPP_ROLLOUT_TENANTS (comma-separated) and PPP_ROLLOUT_TENANTS_FILE (one per line).
    Why it failed, or None."""
    with tempfile.NamedTemporaryFile("w", prefix="ppp-rollout-", suffix=".txt") as f:
        f.write("".join(f"{t}\n" for t in tenants))
        f.flush()
        env = {
            **os.environ,
            "PPP_ROLLOUT_STAGE": stage,
            "PPP_ROLLOUT_TENANTS": ",".join(tenants),
            "PPP_ROLLOUT_TENANTS_FILE": f.name,
        }
        try:
            done = subprocess.run(command, shell=True, env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return f"check_command did not finish in {timeout:g} s: {command}"
        except OSError as exc:
            return f"check_command could not start: {exc}"
    if done.returncode != 0:
        return f"check_command exited with code {done.returncode}: {command}"
    return None
