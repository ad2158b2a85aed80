"""Create a tenant at runtime: ``ppp tenant create`` and the application's sign-up call.

Steps, each safe to run again (a failed call is completed by the same call):

1. checks that change nothing: a valid name, no onboarding revision of that name, not in the
   catalog (or in it as ``provisioning``: then resume), the shard known and reachable, its
   shared chain at the shared head, no stray schema of that name on it;
2. the catalog row: state ``provisioning``, origin ``runtime``;
3. the tenant's schema and its migrations to the tenant head in one transaction on the
   shard connection of step 1: the tenant chain rendered from base to head ONCE per process
   (the fleet's renderer, revision by revision: :func:`ppp_env.fleet.commands.render_path`),
   replayed for every later create. A chain that cannot be rendered (a revision reads data
   or needs the tenant's name) and a schema left half-way go through the fleet runner for
   this one tenant, in-process. No ``alembic`` process, no revision file;
4. the veneer's foreign tables (``ppp_env.veneer.refresh_in``) and state ``active``, in one
   transaction on the veneer connection of step 1.

Alembic's ``context`` is process-wide, so rendering and the fleet fallback are serialised
between threads of one process; the replay and everything else run in parallel.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError, ProgrammingError

from ppp_env import db
from ppp_env.alembic_adapter import version_dirs
from ppp_env.alembic_env import find_alembic_ini
from ppp_env.errors import PPPError
from ppp_env.fleet.commands import render_path, tenant_config, upgrade_tenants
from ppp_env.fleet.hooks import Rendered
from ppp_env.fleet.options import RunOptions
from ppp_env.fleet.tenant_sql import LOCK_NAMESPACE
from ppp_env.identifiers import quote_ident, quote_literal, validate_tenant
from ppp_env.lifecycle.placement import choose_shard
from ppp_env.settings import Settings
from ppp_env.shared import env as shared_env
from ppp_env.tenant_state import ensure_index, read_states, track_sql
from ppp_env.veneer import catalog, refresh_in
from ppp_env.veneer.env import veneer_config
from ppp_env.veneer.onboarding import find_tenant_revisions

_ALEMBIC = threading.Lock()
_SHARED_HEADS: dict[tuple[str, int], tuple[str, ...] | None] = {}
#: The tenant chain rendered from base to head, per ini and version files (None: it
#: cannot be rendered once for every tenant).
_RENDERED: dict[tuple[object, ...], str | None] = {}
_ENGINES: dict[tuple[int, str], Engine] = {}
_POOL_LOCK = threading.Lock()


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
    #: Migrated by replaying the chain rendered once per process (False: the fleet runner
    #: migrated it, for a schema left half-way or a chain with a revision that cannot be
    #: replayed in one transaction).
    replayed: bool = False


def _ini(config: str | Path | None) -> Path:
    path = find_alembic_ini(config)
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


def _migrate(settings: Settings, schema: str, ini: Path) -> str | None:
    """The tenant's schema at the tenant head, through the fleet runner for this tenant."""
    options = RunOptions(tenants=[schema], output="quiet", refresh=False)
    with _ALEMBIC:
        outcome = upgrade_tenants(tenant_config(ini, settings), "head", options)
    result = outcome.result
    mine = [t for t in result.tenants if t.tenant == schema] if result is not None else []
    if not mine or mine[0].status not in ("migrated", "current"):
        why = (mine[0].error if mine else None) or outcome.failure
        why = why or "the tenant upgrade did not run"
        if result is not None and result.shard_errors:
            why = "; ".join(result.shard_errors.values())
        raise PPPError(
            f"tenant {schema!r}: its migrations failed: {why}; it stays 'provisioning': run "
            "the same create again to finish it"
        )
    return mine[0].after


def _chain_key(ini: Path) -> tuple[object, ...]:
    """What the rendered chain depends on: the ini and the tenant version files."""
    try:
        script = ScriptDirectory.from_config(tenant_config(ini))  # loads no revision
    except CommandError as exc:
        raise PPPError(f"cannot read the tenant chain: {exc}") from None
    files: list[tuple[str, int]] = []
    for folder in version_dirs(script):
        if os.path.isdir(folder):
            for entry in os.scandir(folder):
                if entry.name.endswith(".py"):
                    files.append((entry.path, entry.stat().st_mtime_ns))
    return (str(ini.resolve()), ini.stat().st_mtime_ns, tuple(sorted(files)))


def replayable_sql(rendered: Rendered) -> str | None:
    """The SQL of the whole path when every revision of it can be replayed, as it is, inside
    one tenant's transaction; None when one cannot (it reads data, needs the tenant, runs
    outside a transaction...): such a chain goes through the fleet runner."""
    ready = rendered.replayable()
    if len(ready) != len(rendered.revisions):
        return None
    return "".join(revision.sql for revision in ready)


def rendered_chain(ini: Path) -> str | None:
    """The tenant chain from base to head as SQL without any schema name (search_path
    decides), rendered once per process by the fleet's renderer; None when it must run
    online, tenant by tenant."""
    key = _chain_key(ini)
    if key not in _RENDERED:
        with _ALEMBIC:
            try:
                rendered: Rendered | None = render_path(tenant_config(ini, stdout=io.StringIO()))
            except PPPError:
                rendered = None  # a chain Alembic cannot load: the fleet runner says why
        _RENDERED[key] = replayable_sql(rendered) if rendered is not None else None
    return _RENDERED[key]


@contextmanager
def _veneer(settings: Settings) -> Iterator[Connection]:
    """A veneer connection as ``veneer_admin`` from this process's small pool: an
    application calls create_tenant again and again, and a new connection (SCRAM, and
    SQLAlchemy's first-connect queries) costs more than the rest of the catalog work."""
    inst = settings.veneer
    key = (os.getpid(), inst.url("admin").render_as_string(hide_password=False))
    with _POOL_LOCK:
        eng = _ENGINES.get(key)
        if eng is None:
            eng = db.engine(
                inst,
                "admin",
                connect_timeout=settings.connect_timeout,
                pool_size=2,
                max_overflow=8,
                pool_pre_ping=True,
                pool_recycle=300,
            )
            _ENGINES[key] = eng
    try:
        conn = eng.connect()
    except OperationalError as exc:
        raise PPPError(
            f"cannot connect to the veneer at {inst.masked_url('admin')}: {db.first_line(exc)}"
        ) from None
    with conn:
        yield conn


def close_pools() -> None:
    """Close this process's pooled veneer connections (tests, shutdown)."""
    with _POOL_LOCK:
        for eng in _ENGINES.values():
            eng.dispose()
        _ENGINES.clear()


def _lookup(
    conn: Connection, settings: Settings, schema: str, shard: str | None
) -> tuple[str, bool]:
    """(shard, resumed): the tenant's shard, and whether an earlier create left it
    ``provisioning``; PPPError for a tenant that exists or a shard the catalog lacks."""
    try:
        with conn.begin():
            # One round trip in the common case; a catalog without the lifecycle revision
            # fails here and is explained below.
            row = conn.execute(
                text(
                    "SELECT t.shard, t.state, t.origin, "
                    "EXISTS (SELECT 1 FROM ppp.shards WHERE name = :shard) AS shard_known "
                    "FROM (SELECT 1) one LEFT JOIN ppp.tenants t ON t.schema = :schema"
                ),
                {"schema": schema, "shard": shard or ""},
            ).one()
    except ProgrammingError:
        with conn.begin():
            catalog.require_lifecycle(conn)
        raise
    if row.shard is not None:
        if row.origin != "runtime":
            raise PPPError(
                f"tenant {schema!r} already exists: an onboarding revision registered it "
                f"(shard {row.shard!r}, state {row.state})"
            )
        if row.state != "provisioning":
            raise PPPError(
                f"tenant {schema!r} already exists on shard {row.shard!r} (state {row.state})"
            )
        if shard is not None and shard != row.shard:
            raise PPPError(
                f"tenant {schema!r} is being created on shard {row.shard!r}, not "
                f"{shard!r}: run the same create again without --shard to finish it"
            )
        return str(row.shard), True
    if shard is None:
        with conn.begin():
            return choose_shard(conn, settings), False
    if not row.shard_known:
        raise PPPError(
            f"unknown shard {shard!r}: not in the catalog; add it to PPP_SHARDS and run "
            "`alembic -n veneer upgrade head`"
        )
    return shard, False


def _check_shard(cur: object, shard: str, schema: str, ini: Path) -> bool:
    """The shard's shared chain is at head; whether ``schema`` exists there."""
    heads = shared_heads(ini)
    if heads:
        at = shared_env.read_revision(cur)
        have = tuple(sorted(at.split())) if at else ()
        if have != heads:
            raise PPPError(
                f"shard {shard!r}: its shared chain is at {at or 'base'}, not at the shared "
                f"head {' '.join(heads)}: run `ppp migrate --shard {shard}` (or `alembic -n "
                "shared upgrade head`) first"
            )
    cur.execute("SELECT to_regnamespace(%s) IS NOT NULL", (schema,))  # type: ignore[attr-defined]
    return bool(cur.fetchone()[0])  # type: ignore[attr-defined]


def _insert(conn: Connection, schema: str, shard: str, tags: dict[str, str]) -> None:
    # The tags column only when there are tags: a catalog from before it still creates.
    column, value = (", tags", ", CAST(:tags AS jsonb)") if tags else ("", "")
    with conn.begin():
        row = conn.execute(
            text(
                f"INSERT INTO ppp.tenants (schema, shard, state, origin{column}) "
                f"VALUES (:schema, :shard, 'provisioning', 'runtime'{value}) "
                "ON CONFLICT (schema) DO NOTHING RETURNING schema"
            ),
            {"schema": schema, "shard": shard, "tags": json.dumps(tags)},
        ).first()
    if row is None:
        raise PPPError(f"tenant {schema!r} already exists (created concurrently)")


def _replay(settings: Settings, cur: object, schema: str, shard: str, body: str) -> str | None:
    """The rendered chain for ``schema`` in one transaction, one round trip."""
    inst = settings.shard(shard)
    q = quote_ident(schema)
    sql = (
        "BEGIN;\n"
        f"SET LOCAL lock_timeout = '{int(settings.migration_lock_timeout * 1000)}ms';\n"
        f"SELECT pg_advisory_xact_lock({LOCK_NAMESPACE}, hashtext({quote_literal(schema)}));\n"
        f"CREATE SCHEMA {q};\n"
        f"SET LOCAL search_path TO {q};\n"
        f"{body}\n{track_sql(schema, inst.app_role)}COMMIT;"
    )
    try:
        ensure_index(cur, inst.app_role)
        cur.execute(sql)  # type: ignore[attr-defined]
    except Exception as exc:
        cur.execute("ROLLBACK")  # type: ignore[attr-defined]
        raise PPPError(
            f"tenant {schema!r}: its migrations failed on shard {shard!r}: "
            f"{db.first_line(exc)}; it stays 'provisioning': run the same create again to "
            "finish it"
        ) from None
    state = read_states(cur, [schema]).get(schema)
    return state.revision if state else None


def _no_onboarding_revision(settings: Settings, schema: str, ini: Path) -> None:
    try:
        script = ScriptDirectory.from_config(veneer_config(settings, ini))
    except CommandError as exc:
        raise PPPError(str(exc)) from None
    if find_tenant_revisions(script, schema):
        raise PPPError(
            f"tenant {schema!r} has an onboarding revision: it is created by `ppp veneer "
            "upgrade` / `ppp migrate`, not at runtime"
        )


def _migrate_on(
    settings: Settings, cur: object, schema: str, shard: str, ini: Path, exists: bool
) -> tuple[str | None, bool]:
    """The tenant's schema and migrations: (its revision, whether the rendered chain was
    replayed). A schema left half-way, or a chain with a revision that cannot be replayed,
    goes through the fleet runner."""
    body = None if exists else rendered_chain(ini)
    if body is not None:
        return _replay(settings, cur, schema, shard, body), True
    return _migrate(settings, schema, ini), False


def _wire(conn: Connection, settings: Settings, schema: str) -> None:
    """The tenant's foreign tables, and state ``active``, in one veneer transaction."""
    with conn.begin():
        report = refresh_in(conn, settings, [schema])
        if schema in report.errors or schema not in report.refreshed:
            why = report.errors.get(schema, "its schema was not found on its shard")
            raise PPPError(
                f"tenant {schema!r}: wiring it into the veneer failed: {why}; it stays "
                "'provisioning': run the same create again to finish it"
            )
        catalog.set_state(conn, schema, "active", expect=["provisioning"])


def create_tenant(
    settings: Settings,
    schema: str,
    shard: str | None = None,
    config: str | Path | None = None,
    *,
    tags: Mapping[str, str] | None = None,
) -> CreateResult:
    """Create tenant ``schema`` now (on ``shard``, or where ``PPP_PLACEMENT`` says), with
    ``tags``, usable through the veneer when this returns; PPPError with nothing changed for
    bad input.

    ``config``: the project's alembic.ini (default: found as ``ppp`` finds it). A call that
    failed half-way leaves the tenant ``provisioning``; the same call completes it.
    """
    started = time.perf_counter()
    validate_tenant(schema)
    wanted = catalog.validate_tags(tags or {})
    if shard is not None:
        settings.shard(shard)
    ini = _ini(config)
    _no_onboarding_revision(settings, schema, ini)
    result = CreateResult(schema, "", None)
    with _veneer(settings) as conn:
        if wanted:
            with conn.begin():
                catalog.require_release(conn)
        result.shard, result.resumed = _lookup(conn, settings, schema, shard)
        inst = settings.shard(result.shard)
        with db.connection(
            inst, "admin", autocommit=True, connect_timeout=settings.connect_timeout
        ) as shard_conn:
            cur = shard_conn.cursor()
            exists = _check_shard(cur, result.shard, schema, ini)
            if exists and not result.resumed:
                raise PPPError(
                    f"a schema {schema!r} already exists on shard {result.shard!r} and no "
                    "catalog entry claims it: pick another name, or drop or rename that "
                    "schema (`ppp doctor`)"
                )
            t = time.perf_counter()
            result.steps["check"] = t - started
            if not result.resumed:
                _insert(conn, schema, result.shard, wanted)
            elif wanted:
                with conn.begin():
                    catalog.merge_tags(conn, {schema: wanted})
            result.steps["register"] = time.perf_counter() - t
            t = time.perf_counter()
            result.revision, result.replayed = _migrate_on(
                settings, cur, schema, result.shard, ini, exists
            )
            result.steps["migrate"] = time.perf_counter() - t
        t = time.perf_counter()
        _wire(conn, settings, schema)
        result.steps["wire"] = time.perf_counter() - t
    result.seconds = time.perf_counter() - started
    return result
