"""Tenant onboarding revisions: ``veneer_migrations/versions/<rev>_<schema>.py``.

``ppp tenant add <schema> --shard <name>`` writes one with :func:`add_tenant_revision`, from
``veneer_migrations/script.py.mako`` (its tenant branch). The file names the tenant and its
shard and nothing else (no host, no password), so the same revision serves every
environment.

Every onboarding revision is its own branch: its ``down_revision`` is the head of the
veneer's own (structural) revisions when it was written, never another tenant. Two
branches of a team that each ran ``ppp tenant add`` therefore merge without an Alembic
merge revision: the veneer simply has one head per tenant, and ``upgrade head`` in the
veneer's environment applies all of them (see :mod:`ppp_env.veneer.env`). One tenant is
taken back with ``alembic -n veneer downgrade <rev>@-1`` (or ``ppp veneer downgrade
--tenant NAME``), leaving every other tenant in place.

Onboarding revision ids are ``t`` + 11 hex digits (Alembic's own ids are 12 hex digits), so
their files are told apart by name alone: ``ppp tenant add`` never loads the thousands of
tenant revision files, only the few structural ones.

The upgrade calls :func:`onboard`, which only registers the tenant in the catalog (in bulk,
see :class:`Onboarding`); the veneer's environment wires the newly registered tenants once,
after its transaction committed. The downgrade calls :func:`offboard` (drop the tenant's
foreign tables and its catalog row, never its data).
"""

from __future__ import annotations

import datetime
import functools
import importlib.util
import logging
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import context, op
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from mako.template import Template  # type: ignore[import-untyped]

from ppp_env import veneer
from ppp_env.alembic_adapter import as_tuple, template_dir, version_dirs, versions_dir
from ppp_env.errors import PPPError
from ppp_env.identifiers import validate_identifier, validate_tenant
from ppp_env.settings import Settings
from ppp_env.veneer import catalog
from ppp_env.veneer.env import (
    ONBOARDING_KEY,
    TENANT_REVISION,
    Onboarding,
    UpgradeResult,
    current_versions,
    downgrade,
    veneer_config,
)
from ppp_env.veneer.env import is_tenant_revision as is_tenant_revision
from ppp_env.veneer.env import register_tenants as register_tenants

log = logging.getLogger("ppp.veneer")

#: An onboarding revision's file: ``t`` + 11 hex digits, ``_``, the tenant schema.
TENANT_FILE = re.compile(rf"({TENANT_REVISION.pattern})_([a-z_][a-z0-9_]*)\.py")


def new_revision_id() -> str:
    """A fresh onboarding revision id (never produced by ``alembic revision``: hex only)."""
    return "t" + uuid.uuid4().hex[-11:]


@dataclass(frozen=True)
class TenantRevision:
    schema: str
    revision: str
    path: Path


def _scan(script: ScriptDirectory) -> tuple[list[TenantRevision], list[Path]]:
    """One listing of the version folders: the onboarding revisions (by file name, no
    module loaded) and the other revision files (the veneer's own)."""
    tenants: list[TenantRevision] = []
    others: list[Path] = []
    match = TENANT_FILE.fullmatch
    for folder in version_dirs(script):
        if not folder.is_dir():
            continue
        for name in os.listdir(folder):
            if not name.endswith(".py") or name.startswith((".#", "__init__")):
                continue
            m = match(name)
            if m:
                tenants.append(TenantRevision(m.group(2), m.group(1), folder / name))
            else:
                others.append(folder / name)
    return tenants, others


def find_tenant_revisions(
    script: ScriptDirectory, schema: str | None = None
) -> list[TenantRevision]:
    """The onboarding revisions in the script directory (of ``schema`` only, if given), found
    by file name without loading any module."""
    if schema is not None:  # the common case: only this tenant's candidates get a Path
        out = []
        suffix = f"_{schema}.py"
        for folder in version_dirs(script):
            if folder.is_dir():
                for name in os.listdir(folder):
                    m = TENANT_FILE.fullmatch(name) if name.endswith(suffix) else None
                    if m and m.group(2) == schema:
                        out.append(TenantRevision(schema, m.group(1), folder / name))
        return sorted(out, key=lambda t: t.path.name)
    return sorted(_scan(script)[0], key=lambda t: (t.schema, t.path.name))


def tenant_revisions(script: ScriptDirectory) -> dict[str, Path]:
    """Every onboarding revision: tenant schema -> revision file."""
    return {t.schema: t.path for t in find_tenant_revisions(script)}


def structural_head(script: ScriptDirectory) -> str:
    """The head of the veneer's own revisions (the catalog and what follows it), loading
    only their few files. PPPError unless there is exactly one."""
    revisions: dict[str, tuple[str, ...]] = {}
    for path in _scan(script)[1]:
        module = _load(path)
        rev = getattr(module, "revision", None)
        if isinstance(rev, str):
            revisions[rev] = as_tuple(getattr(module, "down_revision", None))
    parents = {p for downs in revisions.values() for p in downs}
    heads = sorted(r for r in revisions if r not in parents)
    if not heads:
        where = ", ".join(str(d) for d in version_dirs(script))
        raise PPPError(
            f"no veneer revision to build the tenant's on in {where}: the catalog revision "
            "is missing"
        )
    if len(heads) > 1:
        raise PPPError(
            f"the veneer's own revisions have {len(heads)} heads ({', '.join(heads)}): merge "
            f"them first (`alembic -n veneer merge -m merge {' '.join(heads)}`)"
        )
    return heads[0]


def add_tenant_revision(
    settings: Settings,
    schema: str,
    shard: str,
    *,
    config: Config | None = None,
    check_catalog: bool = True,
    tags: Mapping[str, str] | None = None,
) -> Path:
    """Write the onboarding revision of tenant ``schema`` on ``shard`` (registering it with
    ``tags``, if given); return its path.

    PPPError, and no file written, for an invalid schema name, a shard not in the settings,
    or a tenant that already has a revision (or, with ``check_catalog``, is already in the
    catalog of the veneer these settings point at).
    """
    validate_tenant(schema)
    settings.shard(shard)
    tags = catalog.validate_tags(tags or {})
    cfg = config or veneer_config(settings)
    try:
        script = ScriptDirectory.from_config(cfg)  # loads no revision
    except CommandError as exc:
        raise PPPError(str(exc)) from exc
    existing = find_tenant_revisions(script, schema)
    if existing:
        raise PPPError(
            f"tenant {schema!r} already has an onboarding revision: {existing[0].path.name}"
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
    return write_tenant_revision(
        script, schema, shard, structural_head(script), config=cfg, tags=tags
    )


def _load(path: Path) -> Any:
    """A revision file as a module of its own (not registered in ``sys.modules``)."""
    try:
        spec = importlib.util.spec_from_file_location(f"_ppp_veneer_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ImportError("not a Python file")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as exc:
        raise PPPError(f"cannot load the veneer revision {path}: {exc}") from None
    return module


def _comma(value: str | Iterable[str] | None) -> str:
    """The template's ``comma`` filter: revisions as ``a, b``."""
    if value is None:
        return ""
    return value if isinstance(value, str) else ", ".join(value)


@functools.lru_cache(maxsize=4)
def _template(path: str, mtime_ns: int) -> Any:
    """The compiled template (compiling it costs more than rendering it)."""
    return Template(filename=path)


def write_tenant_revision(
    script: ScriptDirectory,
    schema: str,
    shard: str,
    down_revision: str,
    *,
    config: Config | None = None,
    tags: Mapping[str, str] | None = None,
) -> Path:
    """Render the tenant branch of ``script.py.mako`` into ``<rev>_<schema>.py`` (a new
    file: an existing one is never overwritten). No check beyond the names: see
    :func:`add_tenant_revision`."""
    validate_tenant(schema)
    validate_identifier(shard, "shard name")
    rev = new_revision_id()
    template = template_dir(script) / "script.py.mako"
    try:
        folder = versions_dir(script)
        body = _template(str(template), template.stat().st_mtime_ns).render_unicode(
            up_revision=rev,
            down_revision=down_revision,
            branch_labels=None,
            depends_on=None,
            create_date=datetime.datetime.now(),
            message=f"Tenant {schema} on shard {shard}.",
            tenant=schema,
            shard=shard,
            tags=dict(tags or {}),
            config=config,
            comma=_comma,
        )
    except Exception as exc:
        raise PPPError(f"cannot render {template} for tenant {schema!r}: {exc}") from None
    if f"TENANT = {schema!r}" not in body or f"revision = {rev!r}" not in body:
        raise PPPError(f"{template} has no tenant branch (TENANT, revision): cannot use it")
    if tags and "TAGS = " not in body:
        raise PPPError(
            f"{template} predates tenant tags (no TAGS in its tenant branch): take the tenant "
            "branch of the template `ppp new` writes, or add the tags with `ppp tenant tag`"
        )
    path = folder / f"{rev}_{schema}.py"
    try:
        with open(path, "x", encoding="utf-8") as f:
            f.write(body)
    except OSError as exc:
        raise PPPError(f"cannot write {path}: {exc}") from None
    return path


# -- what the revisions call ---------------------------------------------------------------------
def onboard(schema: str, shard: str, tags: Mapping[str, str] | None = None) -> None:
    """Upgrade of an onboarding revision: register the tenant in the catalog (with ``tags``
    added to its tags, if given).

    Under PPP's veneer environment the registration joins the run's bulk registration and
    the tenant is wired after the commit (pending until its schema exists on its shard).
    """
    wanted = catalog.validate_tags(tags or {})
    onboarding = context.config.attributes.get(ONBOARDING_KEY)
    if isinstance(onboarding, Onboarding):
        onboarding.pending.append((schema, shard))
        if wanted:
            onboarding.tags[schema] = wanted
        return
    register_tenants(op.get_bind(), [(schema, shard)])  # another environment: right away
    catalog.merge_tags(op.get_bind(), {schema: wanted})


def offboard(schema: str) -> None:
    """Downgrade of an onboarding revision: drop its foreign tables and its catalog row."""
    conn = op.get_bind()
    veneer.unwire(conn, schema)
    catalog.unregister_tenant(conn, schema)
    log.info("tenant %s: unwired and removed from the catalog (its shard data stays)", schema)


def downgrade_tenant(
    settings: Settings, schema: str, config: Config | None = None
) -> UpgradeResult:
    """Take one tenant's onboarding revision back (``<rev>@-1``), every other tenant stays.

    Its foreign tables and catalog row go, its data on the shard stays. The revision file
    stays too: delete it, or the next ``upgrade head`` onboards the tenant again.
    """
    validate_tenant(schema)
    cfg = config or veneer_config(settings)
    try:
        script = ScriptDirectory.from_config(cfg)
    except CommandError as exc:
        raise PPPError(str(exc)) from exc
    found = find_tenant_revisions(script, schema)
    if not found:
        where = ", ".join(str(d) for d in version_dirs(script))
        raise PPPError(f"tenant {schema!r} has no onboarding revision in {where}")
    if len(found) > 1:
        names = ", ".join(t.path.name for t in found)
        raise PPPError(f"tenant {schema!r} has {len(found)} onboarding revisions ({names})")
    rev = found[0].revision
    applied = rev in current_versions(settings)
    if not applied:
        raise PPPError(
            f"tenant {schema!r}: its onboarding revision {rev} is not applied to the veneer"
        )
    return downgrade(settings, f"{rev}@-1", cfg)
