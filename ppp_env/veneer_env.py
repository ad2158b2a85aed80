"""The veneer's Alembic environment (``alembic -n veneer ...``) and its programmatic entry points.

``veneer_migrations/env.py`` calls :func:`run_migrations`. A run that moves the veneer's
revision (upgrade, downgrade, stamp) does, in one transaction as ``veneer_admin``:

1. wait for other veneer runs and refreshes (advisory lock);
2. reconcile foreign servers and user mappings with the settings (when the catalog exists);
3. the pending revisions: the catalog's base revision, then the tenant onboarding
   revisions; the servers are reconciled as soon as the catalog appears, so a tenant
   revision of the same run finds its shard's server;
4. reconcile again, now dropping servers of shards gone from the settings (an error naming
   the tenants if some still live there), and keep ``veneer_app`` out of the catalog.

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

from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection

import ppp_env
from ppp_env import catalog, veneer
from ppp_env.errors import PPPError
from ppp_env.identifiers import quote_ident
from ppp_env.settings import Settings, load_settings, project_dir

INI_SECTION = "veneer"
SETTINGS_KEY = "ppp.settings"  # the same key the tenant environment reads
CHANGES_KEY = "ppp_changes"


def find_alembic_ini() -> Path:
    """``ALEMBIC_CONFIG``, else ``alembic.ini`` in the current folder, the project folder
    (``PPP_PROJECT_DIR``) or the folder PPP is installed from."""
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
        "from the project folder or set ALEMBIC_CONFIG"
    )


def veneer_config(settings: Settings | None = None, ini: Path | str | None = None) -> Config:
    """An Alembic Config for the ``[veneer]`` section, carrying ``settings`` to env.py."""
    cfg = Config(str(ini or find_alembic_ini()), ini_section=INI_SECTION)
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
    assert isinstance(settings, Settings)
    return settings


def _moves_revision() -> bool:
    """Whether this command has a destination (upgrade, downgrade, stamp), unlike `current`."""
    try:
        context.get_revision_argument()
    except KeyError:
        return False
    return True


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


def _run_online() -> None:
    settings = current_settings()
    moving = _moves_revision()
    reconciled = False

    def after_step(
        ctx: MigrationContext,
        step: MigrationInfo,
        heads: Collection[Any],
        run_args: Mapping[str, Any],
    ) -> None:
        nonlocal reconciled
        conn = ctx.connection
        assert conn is not None
        if not reconciled and catalog.catalog_exists(conn):
            _record(veneer.reconcile(conn, settings, remove=False))
            reconciled = True

    with catalog.admin_connection(settings, begin=False) as conn:
        if moving:
            ensure_catalog_schema(conn, settings)
        context.configure(
            connection=conn,
            version_table_schema=catalog.CATALOG_SCHEMA,
            transaction_per_migration=False,
            on_version_apply=after_step if moving else None,
        )
        with context.begin_transaction():
            if moving:
                veneer.lock(conn)
                if catalog.catalog_exists(conn):
                    _record(veneer.reconcile(conn, settings, remove=False))
                    reconciled = True
            context.run_migrations()
            if moving:
                if catalog.catalog_exists(conn):
                    _record(veneer.reconcile(conn, settings))
                else:
                    _record(veneer.lock_down_catalog(conn, settings))


# -- programmatic entry points (the `ppp veneer ...` commands) ----------------------------------
@dataclass
class UpgradeResult:
    before: tuple[str, ...]
    after: tuple[str, ...]
    changes: list[str] = field(default_factory=list)


def _versions(settings: Settings) -> tuple[str, ...]:
    with catalog.admin_connection(settings) as conn:
        if conn.execute(text("SELECT to_regclass('ppp.alembic_version')")).scalar() is None:
            return ()
        rows = conn.execute(text("SELECT version_num FROM ppp.alembic_version ORDER BY 1"))
        return tuple(rows.scalars())


def _run(settings: Settings, verb: str, revision: str, config: Config | None) -> UpgradeResult:
    cfg = config or veneer_config(settings)
    cfg.attributes.setdefault(SETTINGS_KEY, settings)
    cfg.attributes[CHANGES_KEY] = []
    before = _versions(settings)
    try:
        if verb == "upgrade":
            command.upgrade(cfg, revision)
        else:
            command.downgrade(cfg, revision)
    except CommandError as exc:
        raise PPPError(str(exc)) from exc
    return UpgradeResult(before, _versions(settings), list(cfg.attributes[CHANGES_KEY]))


def upgrade(
    settings: Settings, revision: str = "head", config: Config | None = None
) -> UpgradeResult:
    """``alembic -n veneer upgrade <revision>`` in-process, with these settings."""
    return _run(settings, "upgrade", revision, config)


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
    current = _versions(settings)
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
