"""The veneer's Alembic environment (``alembic -n veneer ...``) and its programmatic entry points.

``veneer_migrations/env.py`` calls :func:`run_migrations`. A run that moves the veneer's
revision (upgrade, downgrade, stamp) does, in one transaction as ``veneer_admin``:

1. wait for other veneer runs and refreshes (advisory lock);
2. reconcile foreign servers and user mappings with the settings (when the catalog exists);
3. the pending revisions: the veneer's own (the catalog first), then the tenant onboarding
   revisions, each a head of its own; ``upgrade head`` and ``upgrade heads`` both apply
   every head, planned by :func:`plan_upgrade_to_heads` in linear time. The servers are
   reconciled as soon as the catalog appears. Onboarding revisions only queue their tenant
   (:class:`ppp_env.veneer.onboarding.Onboarding`): the queue is registered in bulk before
   any non-tenant revision and at the end;
4. reconcile again, now dropping servers of shards gone from the settings (an error naming
   the tenants if some still live there), and keep ``veneer_app`` out of the catalog.

After the commit, the tenants the run registered are wired once, through
:func:`ppp_env.veneer.refresh` (unless ``config.attributes["ppp.wire_onboarded"]`` is False).

The version table is ``ppp.alembic_version``. Settings come from the environment (``-x
env=NAME`` or ``PPP_ENV`` selects ``.env.NAME``), or from ``config.attributes["ppp.settings"]``
when PPP runs Alembic in-process.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from logging.config import fileConfig
from pathlib import Path
from typing import Any

from alembic import command, context, util
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import ScriptDirectory
from alembic.script.revision import MultipleHeads
from alembic.util import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection

import ppp_env
from ppp_env import veneer
from ppp_env.alembic_env import COMMAND_KEY, command_name
from ppp_env.alembic_env import environment as _environment
from ppp_env.errors import PPPError
from ppp_env.identifiers import quote_ident
from ppp_env.settings import Settings, load_settings, project_dir
from ppp_env.veneer import catalog

INI_SECTION = "veneer"
SETTINGS_KEY = "ppp.settings"  # the same key the tenant environment reads
CHANGES_KEY = "ppp_changes"
#: The run's :class:`ppp_env.veneer.onboarding.Onboarding` (tenants registered by this run).
ONBOARDING_KEY = "ppp.onboarding"
#: False: do not wire the tenants this run registered (``ppp migrate`` refreshes them after
#: the tenant upgrade created their schemas).
WIRE_KEY = "ppp.wire_onboarded"
#: The :class:`ppp_env.veneer.RefreshReport` of the tenants this run registered and wired.
WIRED_KEY = "ppp.wired"


def find_alembic_ini(config: str | Path | None = None) -> Path:
    """The one alembic.ini lookup of every ``ppp`` command that needs it.

    ``config`` (``-c/--config``) when given: it must be a file. Otherwise ``ALEMBIC_CONFIG``
    (as Alembic's own command line), else ``alembic.ini`` in the current folder, the project
    folder (``PPP_PROJECT_DIR``) or the folder PPP is installed from.
    """
    if config is not None:
        path = Path(config)
        if not path.is_file():
            what = "a folder" if path.is_dir() else "not found"
            raise PPPError(f"no Alembic configuration at {path} ({what}): pass -c alembic.ini")
        return path
    tried: list[str] = []
    candidates: list[Path] = []
    if os.environ.get("ALEMBIC_CONFIG"):
        candidates.append(Path(os.environ["ALEMBIC_CONFIG"]))
    candidates += [
        Path.cwd() / "alembic.ini",
        project_dir() / "alembic.ini",
        Path(ppp_env.__file__).resolve().parent.parent / "alembic.ini",
    ]
    for path in candidates:
        if path.is_file():
            return path
        tried.append(str(path))
    raise PPPError(
        "cannot find alembic.ini; looked at " + ", ".join(dict.fromkeys(tried)) + ": run PPP "
        "from the project folder, set ALEMBIC_CONFIG or pass -c"
    )


def veneer_config(settings: Settings | None = None, ini: Path | str | None = None) -> Config:
    """An Alembic Config for the ``[veneer]`` section, carrying ``settings`` to env.py."""
    cfg = Config(str(find_alembic_ini(ini)), ini_section=INI_SECTION)
    if settings is not None:
        cfg.attributes[SETTINGS_KEY] = settings
    return cfg


def current_settings() -> Settings:
    """The settings of the run in progress (for env.py and the veneer's revisions)."""
    settings = context.config.attributes.get(SETTINGS_KEY)
    if settings is None:
        env_name = context.get_x_argument(as_dictionary=True).get("env")
        settings = load_settings(env_name)
        context.config.attributes[SETTINGS_KEY] = settings
    if not isinstance(settings, Settings):
        raise PPPError(f"config.attributes[{SETTINGS_KEY!r}] is not a ppp_env Settings object")
    return settings


#: Commands that move the veneer's revision.
MOVING = frozenset({"upgrade", "downgrade", "stamp"})


def _targets_every_head(env: EnvironmentContext) -> bool:
    """Whether the destination is every head: ``heads``, ``head`` (which Alembic refuses to
    resolve when there are several, as the veneer has) or the only head by name."""
    try:
        destination = env.get_revision_argument()
    except CommandError as exc:  # Alembic's message, caused by the revision map's error
        cause = exc.__cause__
        return isinstance(cause, MultipleHeads) and cause.argument == "head"
    except KeyError:  # no destination: not an upgrade
        return False
    # What `heads` resolves to: heads that are only another head's dependency are left out.
    heads = set(util.to_tuple(env.script.as_revision_number("heads"), default=()))
    return bool(heads) and set(util.to_tuple(destination, default=())) == heads


def ensure_catalog_schema(conn: Connection, settings: Settings) -> None:
    """Schema ``ppp`` (home of the version table and the catalog), closed to ``veneer_app``."""
    if conn.execute(text("SELECT to_regnamespace('ppp')")).scalar() is None:
        conn.exec_driver_sql("CREATE SCHEMA ppp", execution_options={"no_parameters": True})
        conn.exec_driver_sql(
            f"REVOKE ALL ON SCHEMA ppp FROM PUBLIC, {quote_ident(settings.veneer.app_role)}",
            execution_options={"no_parameters": True},
        )
    conn.commit()


def _record(changes: list[str]) -> None:
    context.config.attributes.setdefault(CHANGES_KEY, []).extend(changes)


def run_migrations() -> None:
    """The body of ``veneer_migrations/env.py``."""
    config = context.config
    # Alembic's command line (cmd_opts set) logs as alembic.ini says; in-process callers
    # keep their own logging unless they ask for it with attributes["configure_logger"].
    wanted = config.attributes.get("configure_logger", config.cmd_opts is not None)
    if wanted and config.config_file_name:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    try:
        if context.is_offline_mode():
            raise PPPError(
                "the veneer's migrations need a live connection (they read the shards to wire "
                "tenants): --sql is not supported for `alembic -n veneer`"
            )
        _run_online()
    except PPPError as exc:
        # Alembic's command line prints CommandError as `FAILED: ...` without a traceback.
        raise CommandError(str(exc)) from exc


# -- planning: every head, in linear time ------------------------------------------------------
def _is_tenant_step(step: Any) -> bool:
    from ppp_env.veneer.onboarding import is_tenant_revision

    revision = getattr(step, "revision", None)
    return is_tenant_revision(getattr(revision, "revision", "") or "")


def plan_upgrade_to_heads(script: ScriptDirectory, current: Collection[str]) -> list[Any]:
    """The steps of ``upgrade heads`` from ``current``: every revision that is not an
    ancestor of a current one, parents first, the veneer's own revisions before tenants.

    Alembic computes the same set, but its check over thousands of heads is quadratic
    (measured: 2.6 s to plan one pending tenant among 10,000, 3.7 s from base); this walk is
    linear. Each onboarding revision is a head of its own, so ``head`` means every head here.
    """
    from alembic.runtime.migration import MigrationStep
    from alembic.script.revision import RevisionError

    rmap = script.revision_map
    try:
        every: dict[str, Any] = {}
        todo = [rmap.get_revision(h) for h in rmap.heads]
        while todo:
            rev = todo.pop()
            if rev is None or rev.revision in every:
                continue
            every[rev.revision] = rev
            todo.extend(rmap.get_revision(r) for r in parents_of(rmap, rev))
        applied: set[str] = set()
        todo = [rmap.get_revision(c) for c in current]
        while todo:
            rev = todo.pop()
            if rev is None or rev.revision in applied:
                continue
            applied.add(rev.revision)
            todo.extend(rmap.get_revision(r) for r in parents_of(rmap, rev))
    except RevisionError as exc:
        raise CommandError(str(exc)) from exc
    needed = {r: rev for r, rev in every.items() if r not in applied}
    parents = {r: parents_of(rmap, rev) for r, rev in needed.items()}
    waiting = {r: sum(p in needed for p in parents[r]) for r in needed}
    children: dict[str, list[str]] = {}
    for r in needed:
        for p in parents[r]:
            if p in needed:
                children.setdefault(p, []).append(r)
    own = sorted(r for r, n in waiting.items() if n == 0 and not _is_tenant_id(r))
    tenants = sorted(r for r, n in waiting.items() if n == 0 and _is_tenant_id(r))
    order: list[str] = []
    while own or tenants:
        r = own.pop(0) if own else tenants.pop(0)
        order.append(r)
        for child in children.get(r, ()):
            waiting[child] -= 1
            if waiting[child] == 0:
                (tenants if _is_tenant_id(child) else own).append(child)
    return [MigrationStep.upgrade_from_script(rmap, needed[r]) for r in order]


def parents_of(rmap: Any, rev: Any) -> tuple[str, ...]:
    """A revision's parents: its down revisions and its dependencies (resolved to revision
    ids), from the Revision's public attributes."""
    ids = list(util.to_tuple(rev.down_revision, default=()))
    for dependency in util.to_tuple(rev.dependencies, default=()):
        found = rmap.get_revision(dependency)
        if found is not None:
            ids.append(found.revision)
    return tuple(dict.fromkeys(ids))


def _is_tenant_id(revision: str) -> bool:
    from ppp_env.veneer.onboarding import is_tenant_revision

    return is_tenant_revision(revision)


def _is_upgrade_to_heads(env: EnvironmentContext) -> bool:
    """Whether this run is ``upgrade head`` / ``upgrade heads`` (not a stamp, a downgrade, a
    relative or another target)."""
    return command_name(env) == "upgrade" and _targets_every_head(env)


def _run_online() -> None:
    from ppp_env.veneer.onboarding import Onboarding

    settings = current_settings()
    config = context.config
    env_ctx = _environment()
    moving = command_name(env_ctx) in MOVING
    onboarding = Onboarding()
    config.attributes[ONBOARDING_KEY] = onboarding
    config.attributes.pop(WIRED_KEY, None)
    reconciled = False

    def after_step(
        ctx: MigrationContext,
        step: MigrationInfo,
        heads: Collection[Any],
        run_args: Mapping[str, Any],
    ) -> None:
        nonlocal reconciled
        conn = ctx.connection
        if conn is not None and not reconciled and catalog.catalog_exists(conn):
            _record(veneer.reconcile(conn, settings, remove=False))
            reconciled = True
            # Done: Alembic copies every head for each callback of each step.
            ctx.on_version_apply_callbacks = ()

    # The command's step function (no getter exists; context_opts is a public attribute).
    alembic_fn: Any = env_ctx.context_opts.get("fn")
    to_every_head = _is_upgrade_to_heads(env_ctx)
    script: ScriptDirectory = env_ctx.script

    deferred: list[Any] = []

    def steps(heads: tuple[str, ...], ctx: MigrationContext) -> Any:
        """The run's steps; tenants registered before any veneer revision that follows."""
        if to_every_head:
            planned = plan_upgrade_to_heads(script, heads)
            own = [s for s in planned if not _is_tenant_step(s)]
            if planned[: len(own)] == own:
                # Every tenant after the veneer's own revisions: PPP applies them itself,
                # in bulk, once Alembic is done with those (see apply_tenant_steps).
                deferred.extend(planned[len(own) :])
                planned = own
        else:
            planned = alembic_fn(heads, ctx)
        for step in planned:
            if not _is_tenant_step(step) and ctx.connection is not None:
                onboarding.flush(ctx.connection)
            yield step

    with catalog.admin_connection(settings, begin=False) as conn:
        if moving:
            ensure_catalog_schema(conn, settings)
        has_catalog = catalog.catalog_exists(conn)
        conn.commit()
        context.configure(
            connection=conn,
            version_table_schema=catalog.CATALOG_SCHEMA,
            transaction_per_migration=False,
            # Only until the catalog exists (see after_step).
            on_version_apply=after_step if moving and not has_catalog else None,
            fn=steps if moving and alembic_fn is not None else alembic_fn,
        )
        with context.begin_transaction():
            if moving:
                veneer.lock(conn)
                if catalog.catalog_exists(conn):
                    _record(veneer.reconcile(conn, settings, remove=False))
                    reconciled = True
            context.run_migrations()
            if deferred:
                apply_tenant_steps(conn, deferred)
            if moving:
                onboarding.flush(conn)
                if catalog.catalog_exists(conn):
                    _record(veneer.reconcile(conn, settings))
                else:
                    _record(veneer.lock_down_catalog(conn, settings))
    if onboarding.registered:
        _wire_onboarded(settings, onboarding.registered)


def apply_tenant_steps(conn: Connection, steps: list[Any]) -> None:
    """Run pending onboarding revisions and record them in ``ppp.alembic_version`` with two
    statements, in the run's transaction.

    Alembic writes the version table once per step (one round trip each: most of the time
    of 10,000 pending tenants). The result is the same as Alembic's: every tenant revision
    becomes a head and a parent that was a head stops being one.
    """
    import logging

    from alembic.operations import Operations

    log = logging.getLogger("alembic.runtime.migration")
    parents: set[str] = set()
    rmap = context.script.revision_map
    with Operations.context(context.get_context()):
        for step in steps:
            log.debug("Running %s", step)
            step.migration_fn()
            parents.update(parents_of(rmap, step.revision))
    revisions = [step.revision.revision for step in steps]
    conn.execute(
        text("DELETE FROM ppp.alembic_version WHERE version_num = ANY(CAST(:p AS text[]))"),
        {"p": sorted(parents)},
    )
    conn.execute(
        text("INSERT INTO ppp.alembic_version (version_num) SELECT unnest(CAST(:r AS text[]))"),
        {"r": revisions},
    )
    n = len(revisions)
    log.info("Running upgrade of %d tenant onboarding revision%s", n, "s" if n != 1 else "")


def _wire_onboarded(settings: Settings, tenants: list[str]) -> None:
    """Wire the tenants this run registered, once, after its transaction committed."""
    import logging

    log = logging.getLogger("ppp.veneer")
    n = len(tenants)
    what = f"{n} tenant{'s' if n != 1 else ''}"
    if context.config.attributes.get(WIRE_KEY) is False:
        log.info("registered %s in the catalog: %s", what, _short(tenants))
        return
    report = veneer.refresh(settings, tenants)
    context.config.attributes[WIRED_KEY] = report
    if report.refreshed:
        log.info("registered and wired %s", _short(report.refreshed))
    if report.pending:
        log.info(
            "registered %s, wired once their schema exists on their shard (`alembic upgrade head`)",
            _short(report.pending),
        )
    if report.errors:
        detail = "; ".join(f"{k}: {v}" for k, v in list(report.errors.items())[:5])
        raise PPPError(
            f"registered {what} in the catalog, but {len(report.errors)} could not be wired "
            f"({detail}); fix that and run `ppp veneer refresh {' '.join(list(report.errors)[:5])}`"
        )


def _short(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# -- programmatic entry points (the `ppp veneer ...` commands) ----------------------------------
@dataclass
class UpgradeResult:
    before: tuple[str, ...]
    after: tuple[str, ...]
    changes: list[str] = field(default_factory=list)
    #: Tenants this run registered in the catalog (their onboarding revisions ran).
    registered: list[str] = field(default_factory=list)
    #: How wiring them went (None: nothing registered, or ``wire=False``).
    wired: veneer.RefreshReport | None = None


def current_versions(settings: Settings) -> tuple[str, ...]:
    """The veneer's applied heads (rows of ``ppp.alembic_version``), sorted."""
    with catalog.admin_connection(settings) as conn:
        if conn.execute(text("SELECT to_regclass('ppp.alembic_version')")).scalar() is None:
            return ()
        rows = conn.execute(text("SELECT version_num FROM ppp.alembic_version ORDER BY 1"))
        return tuple(rows.scalars())


def _run(
    settings: Settings, verb: str, revision: str, config: Config | None, *, wire: bool = True
) -> UpgradeResult:
    cfg = config or veneer_config(settings)
    cfg.attributes.setdefault(SETTINGS_KEY, settings)
    cfg.attributes[CHANGES_KEY] = []
    cfg.attributes[COMMAND_KEY] = verb
    cfg.attributes[WIRE_KEY] = wire
    before = current_versions(settings)
    try:
        if verb == "upgrade":
            command.upgrade(cfg, revision)
        else:
            command.downgrade(cfg, revision)
    except CommandError as exc:
        raise PPPError(str(exc)) from exc
    onboarding = cfg.attributes.get(ONBOARDING_KEY)
    return UpgradeResult(
        before,
        current_versions(settings),
        list(cfg.attributes[CHANGES_KEY]),
        list(getattr(onboarding, "registered", [])),
        cfg.attributes.get(WIRED_KEY),
    )


def upgrade(
    settings: Settings, revision: str = "head", config: Config | None = None, *, wire: bool = True
) -> UpgradeResult:
    """``alembic -n veneer upgrade <revision>`` in-process, with these settings.

    ``head`` and ``heads`` are the same here: every tenant's onboarding revision is a head.
    With ``wire=False`` the tenants it registers are not wired (``ppp migrate`` refreshes
    them once the tenant upgrade created their schemas).
    """
    return _run(settings, "upgrade", revision, config, wire=wire)


def downgrade(settings: Settings, revision: str, config: Config | None = None) -> UpgradeResult:
    """``alembic -n veneer downgrade <revision>`` in-process, with these settings."""
    return _run(settings, "downgrade", revision, config)


@dataclass
class ServerStatus:
    shard: str
    address: str
    tenants: int
    pending: int
    in_settings: bool


@dataclass
class VeneerStatus:
    current: tuple[str, ...]
    heads: tuple[str, ...]
    servers: list[ServerStatus]

    @property
    def at_head(self) -> bool:
        return set(self.current) == set(self.heads)


def status(settings: Settings, config: Config | None = None) -> VeneerStatus:
    """The veneer's revision against the script directory's heads, and its shards."""
    cfg = config or veneer_config(settings)
    heads = tuple(sorted(ScriptDirectory.from_config(cfg).get_heads()))
    current = current_versions(settings)
    servers: list[ServerStatus] = []
    with catalog.admin_connection(settings) as conn:
        if catalog.catalog_exists(conn):
            counts = {
                r.shard: (r.n, r.pending)
                for r in conn.execute(
                    text(
                        "SELECT shard, count(*) AS n, count(*) FILTER (WHERE state = 'pending') "
                        "AS pending FROM ppp.tenants GROUP BY shard"
                    )
                )
            }
            for s in catalog.list_shards(conn):
                n, pending = counts.get(s.name, (0, 0))
                servers.append(
                    ServerStatus(
                        s.name,
                        f"{s.host}:{s.port}/{s.dbname}",
                        n,
                        pending,
                        s.name in settings.shards,
                    )
                )
    return VeneerStatus(current, heads, servers)
