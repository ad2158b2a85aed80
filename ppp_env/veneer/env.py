"""The veneer's Alembic environment (``alembic -n veneer ...``) and its programmatic entry points.

``veneer_migrations/env.py`` calls :func:`run_migrations`. A run that moves the veneer's
revision (upgrade, downgrade, stamp) does, in one transaction as ``veneer_admin``:

1. wait for other veneer runs and refreshes (advisory lock);
2. reconcile foreign servers and user mappings with the settings (when the catalog exists);
3. the pending revisions: the veneer's own (the catalog first), then the tenant onboarding
   revisions, each a head of its own; ``upgrade head`` and ``upgrade heads`` both apply
   every head, planned by :func:`plan_upgrade_to_heads` in linear time. The servers are
   reconciled as soon as the catalog appears. Onboarding revisions only queue their tenant
   (:class:`Onboarding`): the queue is registered in bulk before any non-tenant revision
   and at the end;
4. reconcile again, now dropping servers of shards gone from the settings (an error naming
   the tenants if some still live there), and keep ``veneer_app`` out of the catalog.

After the commit, the tenants the run registered are wired once, through
:func:`ppp_env.veneer.refresh` (unless ``config.attributes["ppp.wire_onboarded"]`` is False).

The version table is ``ppp.alembic_version``. Settings come from the environment (``-x
env=NAME`` or ``PPP_ENV`` selects ``.env.NAME``), or from ``config.attributes[SETTINGS_KEY]``
when PPP runs Alembic in-process. Tenant onboarding revision files are
:mod:`ppp_env.veneer.onboarding`'s business (it imports this module, never the reverse).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection

from ppp_env import veneer
from ppp_env.alembic_adapter import (
    StepFunction,
    as_tuple,
    describe,
    replace_heads,
    run_upgrades,
    step_function,
    targets_every_head,
    upgrade_step,
)
from ppp_env.alembic_env import (
    COMMAND_KEY,
    SETTINGS_KEY,
    PPPEnvironment,
    section_config,
    settings_of,
)
from ppp_env.alembic_env import find_alembic_ini as find_alembic_ini
from ppp_env.errors import PPPError
from ppp_env.identifiers import quote_ident, validate_identifier, validate_tenant
from ppp_env.settings import Settings
from ppp_env.veneer import catalog

INI_SECTION = "veneer"
CHANGES_KEY = "ppp_changes"
#: The run's :class:`Onboarding` (tenants registered by this run).
ONBOARDING_KEY = "ppp.onboarding"
#: False: do not wire the tenants this run registered (``ppp migrate`` refreshes them after
#: the tenant upgrade created their schemas).
WIRE_KEY = "ppp.wire_onboarded"
#: The :class:`ppp_env.veneer.RefreshReport` of the tenants this run registered and wired.
WIRED_KEY = "ppp.wired"
#: An onboarding revision's id: ``t`` + 11 hex digits (Alembic's own are 12 hex digits).
TENANT_REVISION = re.compile(r"t[0-9a-f]{11}")

log = logging.getLogger("ppp.veneer")


def is_tenant_revision(revision: str) -> bool:
    return TENANT_REVISION.fullmatch(revision) is not None


def veneer_config(settings: Settings | None = None, ini: Path | str | None = None) -> Config:
    """An Alembic Config for the ``[veneer]`` section, carrying ``settings`` to env.py."""
    return section_config(ini, INI_SECTION, settings)


def current_settings() -> Settings:
    """The settings of the run in progress (for env.py and the veneer's revisions)."""
    return settings_of(context.config, context.get_x_argument(as_dictionary=True).get("env"))


def ensure_catalog_schema(conn: Connection, settings: Settings) -> None:
    """Schema ``ppp`` (home of the version table and the catalog), closed to ``veneer_app``."""
    if conn.execute(text("SELECT to_regnamespace('ppp')")).scalar() is None:
        conn.exec_driver_sql("CREATE SCHEMA ppp", execution_options={"no_parameters": True})
        conn.exec_driver_sql(
            f"REVOKE ALL ON SCHEMA ppp FROM PUBLIC, {quote_ident(settings.veneer.app_role)}",
            execution_options={"no_parameters": True},
        )
    conn.commit()


# -- planning: every head, in linear time ------------------------------------------------------
def _is_tenant_step(step: Any) -> bool:
    script = describe(step).script
    return script is not None and is_tenant_revision(script.revision)


def plan_upgrade_to_heads(script: ScriptDirectory, current: Collection[str]) -> list[Any]:
    """The steps of ``upgrade heads`` from ``current``: every revision that is not an
    ancestor of a current one, parents first, the veneer's own revisions before tenants.

    Alembic computes the same set, but its check over thousands of heads is quadratic
    (measured: 2.6 s to plan one pending tenant among 10,000, 3.7 s from base); this walk is
    linear. Each onboarding revision is a head of its own, so ``head`` means every head here.
    """
    rmap = script.revision_map
    try:
        every = _ancestors(rmap, rmap.heads)
        applied = _ancestors(rmap, current)
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
    own = sorted(r for r, n in waiting.items() if n == 0 and not is_tenant_revision(r))
    tenants = sorted(r for r, n in waiting.items() if n == 0 and is_tenant_revision(r))
    order: list[str] = []
    while own or tenants:
        r = own.pop(0) if own else tenants.pop(0)
        order.append(r)
        for child in children.get(r, ()):
            waiting[child] -= 1
            if waiting[child] == 0:
                (tenants if is_tenant_revision(child) else own).append(child)
    return [upgrade_step(script, needed[r]) for r in order]


def _ancestors(rmap: Any, revisions: Collection[str]) -> dict[str, Any]:
    """These revisions and all their ancestors, by id."""
    found: dict[str, Any] = {}
    todo = [rmap.get_revision(r) for r in revisions]
    while todo:
        rev = todo.pop()
        if rev is None or rev.revision in found:
            continue
        found[rev.revision] = rev
        todo.extend(rmap.get_revision(r) for r in parents_of(rmap, rev))
    return found


def parents_of(rmap: Any, rev: Any) -> tuple[str, ...]:
    """A revision's parents: its down revisions and its dependencies (resolved to revision
    ids), from the Revision's public attributes."""
    ids = list(as_tuple(rev.down_revision))
    for dependency in as_tuple(rev.dependencies):
        found = rmap.get_revision(dependency)
        if found is not None:
            ids.append(found.revision)
    return tuple(dict.fromkeys(ids))


# -- the tenants a run onboards ------------------------------------------------------------------
@dataclass
class Onboarding:
    """Tenants onboarded by one veneer run: registered in bulk, wired after the commit.

    The veneer's environment puts one in ``config.attributes`` for each run, registers what
    is pending before any non-tenant revision and at the end (:meth:`flush`), and refreshes
    :attr:`registered` once its transaction committed.
    """

    pending: list[tuple[str, str]] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    #: Tags the pending tenants' revisions give them, by schema.
    tags: dict[str, dict[str, str]] = field(default_factory=dict)

    def flush(self, conn: Connection) -> None:
        if self.pending:
            register_tenants(conn, self.pending)
            catalog.merge_tags(conn, self.tags)
            self.registered += [schema for schema, _shard in self.pending]
            self.pending.clear()
            self.tags.clear()


def register_tenants(conn: Connection, tenants: Sequence[tuple[str, str]]) -> None:
    """Put tenants in the catalog (state ``pending``) in a few statements, whatever their
    number; a tenant already there on the same shard is left alone. PPPError, nothing
    registered, for a tenant on another shard or a shard the catalog does not know."""
    wanted: dict[str, str] = {}
    for schema, shard in tenants:
        validate_tenant(schema)
        validate_identifier(shard, "shard name")
        if wanted.setdefault(schema, shard) != shard:
            raise PPPError(
                f"tenant {schema!r} has onboarding revisions for two shards "
                f"({wanted[schema]!r} and {shard!r}): delete one of them"
            )
    catalog.require_catalog(conn)
    runtime = catalog.runtime_tenants(conn, list(wanted))
    if runtime:
        raise PPPError(
            f"tenant{'s' if len(runtime) > 1 else ''} {', '.join(map(repr, runtime[:5]))} "
            "created at runtime (`ppp tenant create`): an onboarding revision cannot claim "
            "it; delete the revision file, or remove the tenant first (`ppp tenant remove`)"
        )
    params = {"schemas": list(wanted), "shards": list(wanted.values())}
    _check_placement(conn, params)
    conn.execute(
        text(
            f"INSERT INTO ppp.tenants (schema, shard) SELECT n.schema, n.shard FROM {_NEW} "
            "ON CONFLICT (schema) DO NOTHING"
        ),
        params,
    )


_NEW = "unnest(CAST(:schemas AS text[]), CAST(:shards AS text[])) AS n(schema, shard)"


def _check_placement(conn: Connection, params: dict[str, list[str]]) -> None:
    """Every shard known to the catalog, no tenant already placed on another shard."""
    unknown = sorted(
        conn.execute(
            text(
                f"SELECT DISTINCT n.shard FROM {_NEW} "
                "WHERE n.shard NOT IN (SELECT name FROM ppp.shards)"
            ),
            params,
        ).scalars()
    )
    if unknown:
        known = [s.name for s in catalog.list_shards(conn)]
        raise PPPError(
            f"unknown shard{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
            f"the catalog has {', '.join(known) or '(none)'}; add it to PPP_SHARDS and run "
            "`alembic -n veneer upgrade head`"
        )
    moved = conn.execute(
        text(
            f"SELECT t.schema, t.shard, n.shard AS wanted FROM ppp.tenants t JOIN {_NEW} "
            "USING (schema) WHERE t.shard <> n.shard ORDER BY 1 LIMIT 5"
        ),
        params,
    ).all()
    if moved:
        raise PPPError(
            "; ".join(
                f"tenant {r.schema!r} is already in the catalog on shard {r.shard!r}, "
                f"not {r.wanted!r}"
                for r in moved
            )
        )


# -- the environment -------------------------------------------------------------------------------
class VeneerEnvironment(PPPEnvironment):
    """The veneer: one database, every command online in one transaction."""

    def offline(self) -> None:
        raise PPPError(
            "the veneer's migrations need a live connection (they read the shards to wire "
            "tenants): --sql is not supported for `alembic -n veneer`"
        )

    def current(self) -> None:
        self.online(moving=False)

    def other(self) -> None:
        self.online(moving=False)

    def move(self) -> None:
        self.online(moving=True)

    def record(self, changes: list[str]) -> None:
        self.config.attributes.setdefault(CHANGES_KEY, []).extend(changes)

    def online(self, *, moving: bool) -> None:
        onboarding = Onboarding()
        self.config.attributes[ONBOARDING_KEY] = onboarding
        self.config.attributes.pop(WIRED_KEY, None)
        with catalog.admin_connection(self.settings, begin=False) as conn:
            if moving:
                ensure_catalog_schema(conn, self.settings)
            conn.commit()
            self.migrate(conn, onboarding, moving=moving)
        if onboarding.registered:
            self.wire_onboarded(onboarding.registered)

    def migrate(self, conn: Connection, onboarding: Onboarding, *, moving: bool) -> None:
        """The command's steps in one transaction, the servers reconciled around them."""
        fn = step_function(self.env)  # before configure(fn=...) replaces it
        reconcile = _Reconciler(conn, self.settings, self.record)
        deferred: list[Any] = []
        options: dict[str, Any] = {}
        if moving and fn is not None:
            options["fn"] = self.steps(fn, onboarding, reconcile, deferred)
        self.env.configure(
            connection=conn,
            version_table_schema=catalog.CATALOG_SCHEMA,
            transaction_per_migration=False,
            **options,
        )
        with self.env.begin_transaction():
            if moving:
                veneer.lock(conn)
                reconcile()
            self.env.run_migrations()
            if deferred:
                apply_tenant_steps(self.env.get_context(), deferred)
            if moving:
                onboarding.flush(conn)
                if catalog.catalog_exists(conn):
                    self.record(veneer.reconcile(conn, self.settings))
                else:
                    self.record(veneer.lock_down_catalog(conn, self.settings))

    def steps(
        self,
        fn: StepFunction,
        onboarding: Onboarding,
        reconcile: Callable[[], None],
        deferred: list[Any],
    ) -> Callable[[tuple[str, ...], MigrationContext], Iterator[Any]]:
        """The run's step function: Alembic's, or for ``upgrade head(s)`` PPP's linear plan
        whose tenant revisions PPP applies itself after the veneer's own (``deferred``).
        Between steps: the servers reconciled once the catalog exists, and the tenants queued
        so far registered before any veneer revision."""
        every_head = self.command == "upgrade" and targets_every_head(self.env)
        script = self.env.script

        def steps(heads: tuple[str, ...], ctx: MigrationContext) -> Iterator[Any]:
            if every_head:
                planned = plan_upgrade_to_heads(script, heads)
                own = [s for s in planned if not _is_tenant_step(s)]
                if planned[: len(own)] == own:  # every tenant after the veneer's own revisions
                    deferred.extend(planned[len(own) :])
                    planned = own
            else:
                planned = list(fn(heads, ctx))
            for step in planned:
                reconcile()  # the previous step may have created the catalog
                if not _is_tenant_step(step) and ctx.connection is not None:
                    onboarding.flush(ctx.connection)
                yield step
            reconcile()

        return steps

    def wire_onboarded(self, tenants: list[str]) -> None:
        """Wire the tenants this run registered, once, after its transaction committed."""
        n = len(tenants)
        what = f"{n} tenant{'s' if n != 1 else ''}"
        if self.config.attributes.get(WIRE_KEY) is False:
            log.info("registered %s in the catalog: %s", what, _short(tenants))
            return
        report = veneer.refresh(self.settings, tenants)
        self.config.attributes[WIRED_KEY] = report
        if report.refreshed:
            log.info("registered and wired %s", _short(report.refreshed))
        if report.pending:
            log.info(
                "registered %s, wired once their schema exists on their shard "
                "(`alembic upgrade head`)",
                _short(report.pending),
            )
        if report.errors:
            detail = "; ".join(f"{k}: {v}" for k, v in list(report.errors.items())[:5])
            names = " ".join(list(report.errors)[:5])
            raise PPPError(
                f"registered {what} in the catalog, but {len(report.errors)} could not be wired "
                f"({detail}); fix that and run `ppp veneer refresh {names}`"
            )


class _Reconciler:
    """Reconcile servers and mappings (keeping gone shards) once, as soon as the catalog
    exists: the tenants registered next need their shards in it."""

    def __init__(
        self, conn: Connection, settings: Settings, record: Callable[[list[str]], None]
    ) -> None:
        self.conn, self.settings, self.record = conn, settings, record
        self.done = False

    def __call__(self) -> None:
        if not self.done and catalog.catalog_exists(self.conn):
            self.record(veneer.reconcile(self.conn, self.settings, remove=False))
            self.done = True


def apply_tenant_steps(ctx: MigrationContext, steps: list[Any]) -> None:
    """Run pending onboarding revisions and record them in ``ppp.alembic_version`` with two
    statements, in the run's transaction.

    Alembic writes the version table once per step (one round trip each: most of the time
    of 10,000 pending tenants). The result is the same as Alembic's: every tenant revision
    becomes a head and a parent that was a head stops being one.
    """
    migration_log = logging.getLogger("alembic.runtime.migration")
    if migration_log.isEnabledFor(logging.DEBUG):
        for step in steps:
            migration_log.debug("Running %s", step)
    run_upgrades(ctx, steps)
    rmap = ctx.script.revision_map if ctx.script is not None else None
    parents: set[str] = set()
    revisions: list[str] = []
    for step in steps:
        script = describe(step).script
        assert script is not None
        revisions.append(script.revision)
        parents.update(parents_of(rmap, script))
    replace_heads(ctx, sorted(parents), revisions)
    n = len(revisions)
    migration_log.info(
        "Running upgrade of %d tenant onboarding revision%s", n, "s" if n != 1 else ""
    )


def _short(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def run_migrations() -> None:
    """The body of ``veneer_migrations/env.py``; PPPError becomes Alembic's ``FAILED: ...``."""
    VeneerEnvironment.main()


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
        list(onboarding.registered) if isinstance(onboarding, Onboarding) else [],
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
                address = f"{s.host}:{s.port}/{s.dbname}"
                servers.append(ServerStatus(s.name, address, n, pending, s.name in settings.shards))
    return VeneerStatus(current, heads, servers)
