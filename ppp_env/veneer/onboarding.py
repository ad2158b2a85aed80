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
import logging
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic import context, op
from alembic import util as alembic_util
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from mako.template import Template  # type: ignore[import-untyped]
from sqlalchemy import text
from sqlalchemy.engine import Connection

from ppp_env import veneer
from ppp_env.errors import PPPError
from ppp_env.identifiers import validate_identifier, validate_tenant
from ppp_env.settings import Settings
from ppp_env.veneer import catalog
from ppp_env.veneer import env as veneer_env
from ppp_env.veneer.env import ONBOARDING_KEY, veneer_config

log = logging.getLogger("ppp.veneer")

#: An onboarding revision's file: ``t`` + 11 hex digits, ``_``, the tenant schema.
TENANT_FILE = re.compile(r"(t[0-9a-f]{11})_([a-z_][a-z0-9_]*)\.py")


def new_revision_id() -> str:
    """A fresh onboarding revision id (never produced by ``alembic revision``: hex only)."""
    return "t" + uuid.uuid4().hex[-11:]


def is_tenant_revision(revision: str) -> bool:
    return re.fullmatch(r"t[0-9a-f]{11}", revision) is not None


@dataclass(frozen=True)
class TenantRevision:
    schema: str
    revision: str
    path: Path


def version_dirs(script: ScriptDirectory) -> list[Path]:
    """The folders a script directory keeps revisions in (``version_locations``, else its
    ``versions`` folder), from its public attributes."""
    return [Path(p) for p in (script.version_locations or [script.versions])]


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
        try:
            module = alembic_util.load_python_file(path.parent, path.name)
        except Exception as exc:
            raise PPPError(f"cannot load the veneer revision {path}: {exc}") from None
        rev = getattr(module, "revision", None)
        if isinstance(rev, str):
            revisions[rev] = alembic_util.to_tuple(getattr(module, "down_revision", None), ())
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
    return write_tenant_revision(script, schema, shard, structural_head(script), config=cfg)


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
) -> Path:
    """Render the tenant branch of ``script.py.mako`` into ``<rev>_<schema>.py`` (a new
    file: an existing one is never overwritten). No check beyond the names: see
    :func:`add_tenant_revision`."""
    validate_tenant(schema)
    validate_identifier(shard, "shard name")
    rev = new_revision_id()
    template = Path(script.dir) / "script.py.mako"
    try:
        folder = Path(script.versions)
        body = _template(str(template), template.stat().st_mtime_ns).render_unicode(
            up_revision=rev,
            down_revision=down_revision,
            branch_labels=None,
            depends_on=None,
            create_date=datetime.datetime.now(),
            message=f"Tenant {schema} on shard {shard}.",
            tenant=schema,
            shard=shard,
            config=config,
            comma=alembic_util.format_as_comma,
        )
    except Exception as exc:
        raise PPPError(f"cannot render {template} for tenant {schema!r}: {exc}") from None
    if f"TENANT = {schema!r}" not in body or f"revision = {rev!r}" not in body:
        raise PPPError(f"{template} has no tenant branch (TENANT, revision): cannot use it")
    path = folder / f"{rev}_{schema}.py"
    try:
        with open(path, "x", encoding="utf-8") as f:
            f.write(body)
    except OSError as exc:
        raise PPPError(f"cannot write {path}: {exc}") from None
    return path


# -- what the revisions call ---------------------------------------------------------------------
@dataclass
class Onboarding:
    """Tenants onboarded by one veneer run: registered in bulk, wired after the commit.

    The veneer's environment puts one in ``config.attributes`` for each run, registers what
    is pending before any non-tenant revision and at the end (:meth:`flush`), and refreshes
    :attr:`registered` once its transaction committed.
    """

    pending: list[tuple[str, str]] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)

    def flush(self, conn: Connection) -> None:
        if self.pending:
            register_tenants(conn, self.pending)
            self.registered += [schema for schema, _shard in self.pending]
            self.pending.clear()


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
    new = "unnest(CAST(:schemas AS text[]), CAST(:shards AS text[])) AS n(schema, shard)"
    unknown = sorted(
        conn.execute(
            text(
                f"SELECT DISTINCT n.shard FROM {new} "
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
            f"SELECT t.schema, t.shard, n.shard AS wanted FROM ppp.tenants t JOIN {new} "
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
    conn.execute(
        text(
            f"INSERT INTO ppp.tenants (schema, shard) SELECT n.schema, n.shard FROM {new} "
            "ON CONFLICT (schema) DO NOTHING"
        ),
        params,
    )


def onboard(schema: str, shard: str) -> None:
    """Upgrade of an onboarding revision: register the tenant in the catalog.

    Under PPP's veneer environment the registration joins the run's bulk registration and
    the tenant is wired after the commit (pending until its schema exists on its shard).
    """
    onboarding = context.config.attributes.get(ONBOARDING_KEY)
    if isinstance(onboarding, Onboarding):
        onboarding.pending.append((schema, shard))
        return
    register_tenants(op.get_bind(), [(schema, shard)])  # another environment: right away


def offboard(schema: str) -> None:
    """Downgrade of an onboarding revision: drop its foreign tables and its catalog row."""
    conn = op.get_bind()
    veneer.unwire(conn, schema)
    catalog.unregister_tenant(conn, schema)
    log.info("tenant %s: unwired and removed from the catalog (its shard data stays)", schema)


def downgrade_tenant(
    settings: Settings, schema: str, config: Config | None = None
) -> veneer_env.UpgradeResult:
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
        raise PPPError(f"tenant {schema!r} has no onboarding revision in {script.versions}")
    if len(found) > 1:
        names = ", ".join(t.path.name for t in found)
        raise PPPError(f"tenant {schema!r} has {len(found)} onboarding revisions ({names})")
    rev = found[0].revision
    applied = rev in veneer_env.current_versions(settings)
    if not applied:
        raise PPPError(
            f"tenant {schema!r}: its onboarding revision {rev} is not applied to the veneer"
        )
    return veneer_env.downgrade(settings, f"{rev}@-1", cfg)
