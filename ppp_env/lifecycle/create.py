"""Create a tenant at runtime: ``ppp tenant create`` and the application's sign-up call.

Steps, each safe to run again (a failed call is completed by the same call):

1. checks that change nothing: a valid name, no onboarding revision of that name, not in the
   catalog (or in it as ``provisioning``: then resume), the shard known and reachable, its
   shared chain at the shared head, no stray schema of that name on it;
2. the catalog row: state ``provisioning``, origin ``runtime``;
3. the tenant's schema and its migrations to the tenant head, through the fleet runner for
   this one tenant, in this process (no ``alembic`` process, no revision file);
4. the veneer's foreign tables (``ppp_env.veneer.refresh(settings, [schema])``);
5. state ``active``.

Alembic's ``context`` is process-wide, so step 3 is serialised between threads of one process;
processes run it in parallel.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import text

from ppp_env import db
from ppp_env.errors import PPPError
from ppp_env.fleet.options import RunOptions
from ppp_env.fleet.results import FleetResult
from ppp_env.identifiers import validate_tenant
from ppp_env.lifecycle.placement import choose_shard
from ppp_env.settings import Settings
from ppp_env.shared import env as shared_env
from ppp_env.veneer import catalog
from ppp_env.veneer.env import find_alembic_ini, veneer_config
from ppp_env.veneer.onboarding import find_tenant_revisions

_ALEMBIC = threading.Lock()
_SHARED_HEADS: dict[tuple[str, int], tuple[str, ...] | None] = {}


@dataclass
class CreateResult:
    """What :func:`create_tenant` did."""

    schema: str
    shard: str
    revision: str | None
    #: The call finished a tenant that an earlier call left ``provisioning``.
    resumed: bool = False
    seconds: float = 0.0
    #: Seconds per step: check, register, migrate, wire, activate.
    steps: dict[str, float] = field(default_factory=dict)


def _ini(config: str | Path | None) -> Path:
    path = Path(config) if config is not None else find_alembic_ini()
    if not path.is_file():
        raise PPPError(f"no Alembic configuration at {path}: run ppp from the project folder")
    return path


def shared_heads(ini: Path) -> tuple[str, ...] | None:
    """The shared chain's heads (None: the ini has no [shared] section), cached per file."""
    key = (str(ini.resolve()), ini.stat().st_mtime_ns)
    if key not in _SHARED_HEADS:
        if not shared_env.has_shared_section(ini):
            _SHARED_HEADS[key] = None
        else:
            try:
                script = ScriptDirectory.from_config(shared_env.shared_config(ini))
                _SHARED_HEADS[key] = tuple(sorted(script.get_heads()))
            except CommandError as exc:
                raise PPPError(f"cannot read the shared chain: {exc}") from None
    return _SHARED_HEADS[key]


def _check_shard(settings: Settings, shard: str, schema: str, ini: Path, resumed: bool) -> None:
    """Reachable, shared chain at head, and no stray schema named ``schema`` (unless an
    earlier call of ours created it)."""
    inst = settings.shard(shard)
    heads = shared_heads(ini)
    with db.connection(
        inst, "admin", autocommit=True, connect_timeout=settings.connect_timeout
    ) as conn:
        cur = conn.cursor()
        if heads:
            at = shared_env.read_revision(cur)
            have = tuple(sorted(at.split())) if at else ()
            if have != heads:
                raise PPPError(
                    f"shard {shard!r}: its shared chain is at {at or 'base'}, not at the shared "
                    f"head {' '.join(heads)}: run `ppp migrate --shard {shard}` (or `alembic -n "
                    "shared upgrade head`) first"
                )
        if not resumed:
            cur.execute("SELECT to_regnamespace(%s) IS NOT NULL", (schema,))
            if cur.fetchone()[0]:
                raise PPPError(
                    f"a schema {schema!r} already exists on shard {shard!r} and no catalog entry "
                    "claims it: pick another name, or drop or rename that schema (`ppp doctor`)"
                )


def _register(settings: Settings, schema: str, shard: str | None) -> tuple[str, bool]:
    """The catalog row (``provisioning``, ``runtime``); (shard, resumed)."""
    with catalog.admin_connection(settings) as conn:
        catalog.require_lifecycle(conn)
        found = catalog.lookup_tenant(conn, schema)
        if found is not None:
            origin = catalog.origins(conn, [schema]).get(schema)
            if origin != "runtime":
                raise PPPError(
                    f"tenant {schema!r} already exists: an onboarding revision registered it "
                    f"(shard {found.shard!r}, state {found.state})"
                )
            if found.state != "provisioning":
                raise PPPError(
                    f"tenant {schema!r} already exists on shard {found.shard!r} "
                    f"(state {found.state})"
                )
            if shard is not None and shard != found.shard:
                raise PPPError(
                    f"tenant {schema!r} is being created on shard {found.shard!r}, not "
                    f"{shard!r}: run the same create again without --shard to finish it"
                )
            return found.shard, True
        if shard is None:
            shard = choose_shard(conn, settings)
        elif not conn.execute(
            text("SELECT EXISTS (SELECT 1 FROM ppp.shards WHERE name = :s)"), {"s": shard}
        ).scalar():
            raise PPPError(
                f"unknown shard {shard!r}: not in the catalog; add it to PPP_SHARDS and run "
                "`alembic -n veneer upgrade head`"
            )
        return shard, False


def _insert(settings: Settings, schema: str, shard: str) -> None:
    with catalog.admin_connection(settings) as conn:
        row = conn.execute(
            text(
                "INSERT INTO ppp.tenants (schema, shard, state, origin) "
                "VALUES (:schema, :shard, 'provisioning', 'runtime') "
                "ON CONFLICT (schema) DO NOTHING RETURNING schema"
            ),
            {"schema": schema, "shard": shard},
        ).first()
        if row is None:
            raise PPPError(f"tenant {schema!r} already exists (created concurrently)")


def _migrate(settings: Settings, schema: str, ini: Path) -> str | None:
    """The tenant's schema at the tenant head, through the fleet runner for this tenant."""
    cfg = Config(str(ini), ini_section="alembic")
    cfg.attributes["ppp.settings"] = settings
    cfg.attributes["ppp.options"] = RunOptions(tenants=[schema], output="quiet", refresh=False)
    failure = None
    with _ALEMBIC:
        try:
            command.upgrade(cfg, "head")
        except CommandError as exc:
            failure = str(exc)
    result = cfg.attributes.get("ppp.result")
    mine = (
        [t for t in result.tenants if t.tenant == schema] if isinstance(result, FleetResult) else []
    )
    if not mine or mine[0].status not in ("migrated", "current"):
        why = (mine[0].error if mine else None) or failure or "the tenant upgrade did not run"
        if isinstance(result, FleetResult) and result.shard_errors:
            why = "; ".join(result.shard_errors.values())
        raise PPPError(
            f"tenant {schema!r}: its migrations failed: {why}; it stays 'provisioning': run "
            "the same create again to finish it"
        )
    return mine[0].after


def create_tenant(
    settings: Settings,
    schema: str,
    shard: str | None = None,
    config: str | Path | None = None,
) -> CreateResult:
    """Create tenant ``schema`` now (on ``shard``, or where ``PPP_PLACEMENT`` says), usable
    through the veneer when this returns; PPPError with nothing changed for bad input.

    ``config``: the project's alembic.ini (default: found as ``ppp`` finds it). A call that
    failed half-way leaves the tenant ``provisioning``; the same call completes it.
    """
    started = time.perf_counter()
    steps: dict[str, float] = {}
    validate_tenant(schema)
    if shard is not None:
        settings.shard(shard)
    ini = _ini(config)
    try:
        script = ScriptDirectory.from_config(veneer_config(settings, ini))
    except CommandError as exc:
        raise PPPError(str(exc)) from None
    if find_tenant_revisions(script, schema):
        raise PPPError(
            f"tenant {schema!r} has an onboarding revision: it is created by `ppp veneer "
            "upgrade` / `ppp migrate`, not at runtime"
        )
    chosen, resumed = _register(settings, schema, shard)
    _check_shard(settings, chosen, schema, ini, resumed)
    t = time.perf_counter()
    steps["check"] = t - started
    if not resumed:
        _insert(settings, schema, chosen)
    steps["register"] = time.perf_counter() - t
    t = time.perf_counter()
    revision = _migrate(settings, schema, ini)
    steps["migrate"] = time.perf_counter() - t
    t = time.perf_counter()
    from ppp_env.veneer import refresh

    report = refresh(settings, [schema])
    if schema in report.errors or schema not in report.refreshed:
        why = report.errors.get(schema, "its schema was not found on its shard")
        raise PPPError(
            f"tenant {schema!r}: wiring it into the veneer failed: {why}; it stays "
            "'provisioning': run the same create again to finish it"
        )
    steps["wire"] = time.perf_counter() - t
    t = time.perf_counter()
    with catalog.admin_connection(settings) as conn:
        catalog.set_state(conn, schema, "active", expect=["provisioning"])
    steps["activate"] = time.perf_counter() - t
    return CreateResult(schema, chosen, revision, resumed, time.perf_counter() - started, steps)
