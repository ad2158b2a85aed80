"""Tenant onboarding revisions: ``veneer_migrations/versions/<rev>_<schema>.py``.

``ppp tenant add <schema> --shard <name>`` writes one with :func:`add_tenant_revision`, from
``veneer_migrations/script.py.mako`` (its tenant branch). The file names the tenant and its
shard and nothing else (no host, no password), so the same revision serves every
environment. Its upgrade calls :func:`onboard` (register in the catalog, then wire; wiring
is pending until the tenant's schema exists on its shard); its downgrade calls
:func:`offboard` (drop the tenant's foreign tables and its catalog row, never its data).
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import op
from alembic import util as alembic_util
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from ppp_env import catalog, veneer
from ppp_env.errors import PPPError
from ppp_env.identifiers import validate_tenant
from ppp_env.settings import Settings
from ppp_env.veneer_env import current_settings, veneer_config

log = logging.getLogger("ppp.veneer")


def tenant_revisions(script: ScriptDirectory) -> dict[str, Path]:
    """Every onboarding revision in the script directory: tenant schema -> revision file."""
    found: dict[str, Path] = {}
    for sc in script.walk_revisions():
        tenant = getattr(sc.module, "TENANT", None)
        if isinstance(tenant, str):
            found[tenant] = Path(sc.path)
    return found


def add_tenant_revision(
    settings: Settings,
    schema: str,
    shard: str,
    *,
    config: Config | None = None,
    check_catalog: bool = True,
) -> Path:
    """Write the onboarding revision of tenant ``schema`` on ``shard``; return its path.

    PPPError, and no file written, for an invalid schema name, a shard not in the settings,
    or a tenant that already has a revision (or, with ``check_catalog``, is already in the
    catalog of the veneer these settings point at).
    """
    validate_tenant(schema)
    settings.shard(shard)
    cfg = config or veneer_config(settings)
    try:
        script = ScriptDirectory.from_config(cfg)
        existing = tenant_revisions(script)
    except CommandError as exc:
        raise PPPError(str(exc)) from exc
    if schema in existing:
        raise PPPError(
            f"tenant {schema!r} already has an onboarding revision: {existing[schema].name}"
        )
    if check_catalog:
        try:
            with catalog.admin_connection(settings) as conn:
                placed = (
                    catalog.lookup_tenant(conn, schema) if catalog.catalog_exists(conn) else None
                )
        except PPPError as exc:
            raise PPPError(f"{exc} (pass --no-catalog-check to skip the catalog check)") from None
        if placed is not None:
            raise PPPError(
                f"tenant {schema!r} is already in the catalog (on shard {placed.shard!r}) "
                "without an onboarding revision"
            )
    # The file is named after the tenant, whatever the ini's file_template and slug length.
    script.file_template = "%(rev)s_" + schema
    try:
        sc = script.generate_revision(
            alembic_util.rev_id(),
            f"Tenant {schema} on shard {shard}.",
            head="head",
            tenant=schema,
            shard=shard,
        )
    except CommandError as exc:
        raise PPPError(f"cannot write the revision of tenant {schema!r}: {exc}") from exc
    assert sc is not None
    return Path(sc.path)


def onboard(schema: str, shard: str) -> None:
    """Upgrade of an onboarding revision: register the tenant, then wire it (or leave it
    pending until its schema exists on its shard)."""
    conn = op.get_bind()
    settings = current_settings()
    catalog.register_tenant(conn, schema, shard)
    report = veneer.refresh_in(conn, settings, [schema])
    if report.errors:
        raise PPPError(f"cannot wire tenant {schema!r}: {report.errors[schema]}")
    if report.pending:
        log.info(
            "tenant %s: registered on shard %s; wired once its schema exists there "
            "(`alembic upgrade head`)",
            schema,
            shard,
        )
    else:
        log.info("tenant %s: registered on shard %s and wired", schema, shard)


def offboard(schema: str) -> None:
    """Downgrade of an onboarding revision: drop its foreign tables and its catalog row."""
    conn = op.get_bind()
    veneer.unwire(conn, schema)
    catalog.unregister_tenant(conn, schema)
    log.info("tenant %s: unwired and removed from the catalog (its shard data stays)", schema)
