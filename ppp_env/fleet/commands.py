"""The fleet as library calls: what ``ppp migrate`` and ``create_tenant`` ask of the tenant
environment in-process, passing data (options, results, rendered revisions) through the
Config's attributes rather than text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.util import CommandError

from ppp_env.alembic_env import COMMAND_KEY, section_config
from ppp_env.errors import PPPError
from ppp_env.fleet.hooks import Rendered
from ppp_env.fleet.options import CATALOG_KEY, OPTIONS_KEY, RESULT_KEY, RunOptions
from ppp_env.fleet.results import FleetResult
from ppp_env.settings import Settings
from ppp_env.veneer.catalog import Tenant

#: ``config.attributes[RENDER_KEY]``: a :class:`RenderRequest` for an ``upgrade --sql``.
RENDER_KEY = "ppp.render"
#: The tenant environment's section of alembic.ini.
SECTION = "alembic"


@dataclass
class RenderRequest:
    """Asks the tenant environment, run with ``--sql``, for the path rendered once without
    a tenant (schema-neutral), revision by revision, instead of SQL text per tenant."""

    rendered: Rendered | None = None


def tenant_config(
    ini: str | Path | None, settings: Settings | None = None, **config_kw: Any
) -> Config:
    """A Config for the tenant environment (alembic.ini's ``[alembic]``)."""
    return section_config(ini, SECTION, settings, **config_kw)


@dataclass
class UpgradeOutcome:
    """What an in-process tenant upgrade did: the fleet's result (None: the runner did not
    get to run) and Alembic's failure message (None: it succeeded)."""

    result: FleetResult | None
    failure: str | None


def upgrade_tenants(
    config: Config, revision: str, options: RunOptions, tenants: Sequence[Tenant] | None = None
) -> UpgradeOutcome:
    """``alembic upgrade <revision>`` in-process through the fleet runner, with ``options``;
    ``tenants``: the catalog's tenants the run covers, when the caller already read them."""
    config.attributes[OPTIONS_KEY] = options
    if tenants is not None:
        config.attributes[CATALOG_KEY] = list(tenants)
    config.attributes[COMMAND_KEY] = "upgrade"  # the env need not guess the command
    failure = None
    try:
        command.upgrade(config, revision)
    except CommandError as exc:
        failure = str(exc)
    result = config.attributes.get(RESULT_KEY)
    return UpgradeOutcome(result if isinstance(result, FleetResult) else None, failure)


def render_path(config: Config, revision: str = "head") -> Rendered:
    """The tenant chain from base to ``revision``, rendered once and schema-neutral (what
    ``alembic upgrade <revision> --sql`` sends every tenant), revision by revision, with
    where and why rendering stopped. No database is touched."""
    request = RenderRequest()
    config.attributes[RENDER_KEY] = request
    config.attributes[COMMAND_KEY] = "upgrade"
    try:
        command.upgrade(config, revision, sql=True)
    except CommandError as exc:
        raise PPPError(f"cannot render the tenant chain: {exc}") from None
    if request.rendered is None:
        raise PPPError(
            "the tenant environment did not render the chain: its env.py must call "
            "ppp_env.fleet.env.run_migrations"
        )
    return request.rendered
