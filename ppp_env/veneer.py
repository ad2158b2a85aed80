"""The veneer's postgres_fdw wiring: foreign servers, user mappings, per-tenant foreign tables.

Everything here runs as ``veneer_admin`` (never a superuser) on a SQLAlchemy connection whose
transaction the caller owns: Alembic's in ``veneer_migrations/env.py``, or :func:`refresh`'s.

- :func:`reconcile` makes one foreign server per shard in the settings (named after the
  shard; host, port and database from the settings, never from a revision file) and user
  mappings from ``veneer_admin`` and ``veneer_app`` to the shard's app role.
- :func:`refresh_in` / :func:`refresh` (re-)import tenants' foreign tables atomically: each
  tenant is imported into a staging schema first (no lock on the live tables while the
  shards answer), then the staging schema is swapped in under the tenant's name, and the
  old foreign tables are dropped, all in one transaction. A reader in another session
  waits for that transaction at most and then sees the new tables (PostgreSQL looks a
  name up again after waiting for a lock that a DDL change released), never a missing one.

User mapping passwords never appear in SQL text (the veneer may log every statement): they
travel through ``COPY ... FROM STDIN`` into a temporary table, and a ``DO`` block, which
``log_statement`` does not expand, creates the mappings from it.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from ppp_env import catalog
from ppp_env.db import connection, first_line
from ppp_env.errors import PPPError
from ppp_env.fleet import group_by_shard, read_states
from ppp_env.identifiers import quote_ident, quote_literal
from ppp_env.settings import Instance, Settings

log = logging.getLogger("ppp.veneer")

#: Advisory lock (veneer database) serializing veneer migrations and refreshes.
VENEER_LOCK_KEY = 0x50505F76656E  # "PPP_ven"
#: Rows per remote fetch (postgres_fdw's default is 100: too many round trips for scans).
FETCH_SIZE = 1000
#: Remote tables never imported: the shard's per-tenant Alembic version table.
EXCLUDED_TABLES = ("alembic_version",)
#: How many tenants one query on a shard covers.
_CHUNK = 2000
#: SQLSTATE of postgres_fdw's "schema ... is not present on foreign server".
_SCHEMA_NOT_FOUND = "HV00B"


def _ddl(conn: Connection, sql: str) -> None:
    """Run a statement with no parameters (so ``%`` is never taken for a placeholder)."""
    conn.exec_driver_sql(sql, execution_options={"no_parameters": True})


def lock(conn: Connection) -> None:
    """Wait for other veneer migrations and refreshes; held until the transaction ends."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": VENEER_LOCK_KEY})


# -- foreign servers and user mappings ----------------------------------------------------------
def server_options(inst: Instance) -> dict[str, str]:
    """The postgres_fdw options PPP manages on a shard's foreign server."""
    return {
        "host": inst.fdw_host,
        "port": str(inst.fdw_port),
        "dbname": inst.dbname,
        "async_capable": "true",
        "fetch_size": str(FETCH_SIZE),
    }


def _options(raw: Sequence[str] | None) -> dict[str, str]:
    return dict(item.split("=", 1) for item in raw or ())


def _copy_text(value: str) -> str:
    """Escape a value for COPY's text format."""
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


_SET_MAPPINGS = """
DO $ppp$
DECLARE
    m record;
BEGIN
    FOR m IN SELECT * FROM pg_temp.ppp_user_mapping LOOP
        BEGIN
            EXECUTE format('DROP USER MAPPING IF EXISTS FOR %I SERVER %I', m.local_role, m.server);
            EXECUTE format('CREATE USER MAPPING FOR %I SERVER %I OPTIONS (user %L, password %L)',
                           m.local_role, m.server, m.remote_user, m.password);
        EXCEPTION WHEN others THEN
            -- SQLERRM only: the failed statement (with its password) must not reach a log.
            RAISE EXCEPTION 'cannot set the user mapping of role % on server %: %',
                m.local_role, m.server, SQLERRM;
        END;
    END LOOP;
END
$ppp$
"""


def _set_user_mappings(conn: Connection, rows: Sequence[tuple[str, str, str, str]]) -> None:
    """Create or replace user mappings (server, local role, remote user, password)."""
    raw: Any = conn.connection.driver_connection
    data = "".join("\t".join(_copy_text(v) for v in row) + "\n" for row in rows)
    with raw.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE ppp_user_mapping "
            "(server text, local_role text, remote_user text, password text) ON COMMIT DROP"
        )
        cur.copy_expert("COPY pg_temp.ppp_user_mapping FROM STDIN", io.StringIO(data))
        cur.execute(_SET_MAPPINGS)
        cur.execute("DROP TABLE pg_temp.ppp_user_mapping")


def _servers(conn: Connection) -> dict[str, Any]:
    rows = conn.execute(
        text(
            "SELECT s.srvname, w.fdwname, pg_get_userbyid(s.srvowner) AS owner, s.srvoptions "
            "FROM pg_foreign_server s JOIN pg_foreign_data_wrapper w ON w.oid = s.srvfdw"
        )
    ).all()
    return {r.srvname: r for r in rows}


def lock_down_catalog(conn: Connection, settings: Settings) -> list[str]:
    """Revoke every privilege ``veneer_app`` would have on schema ``ppp`` (default privileges
    grant DML on whatever ``veneer_admin`` creates)."""
    app = settings.veneer.app_role
    if conn.execute(text("SELECT to_regnamespace('ppp')")).scalar() is None:
        return []
    exposed = conn.execute(
        text(
            "SELECT has_schema_privilege(:app, 'ppp', 'USAGE') "
            "OR has_schema_privilege(:app, 'ppp', 'CREATE') "
            "OR EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = 'ppp'::regnamespace "
            "AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND has_table_privilege(:app, c.oid, "
            "'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER'))"
        ),
        {"app": app},
    ).scalar()
    if not exposed:
        return []
    qa = quote_ident(app)
    _ddl(conn, f"REVOKE ALL ON SCHEMA ppp FROM PUBLIC, {qa}")
    _ddl(conn, f"REVOKE ALL ON ALL TABLES IN SCHEMA ppp FROM PUBLIC, {qa}")
    _ddl(conn, f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA ppp FROM PUBLIC, {qa}")
    return [f"revoked every privilege of {app} on the catalog (schema ppp)"]


def reconcile(conn: Connection, settings: Settings, *, remove: bool = True) -> list[str]:
    """Make the foreign servers and user mappings match the settings; return what changed.

    One postgres_fdw server per shard, named after it, with host/port/dbname from the
    settings (``fdw_host``/``fdw_port``: how the veneer's server reaches the shard),
    ``async_capable`` and a larger ``fetch_size``; user mappings from ``veneer_admin`` and
    ``veneer_app`` to the shard's app role with its password. The shards are recorded in
    ``ppp.shards``. With ``remove``, a shard in the catalog but no longer in the settings
    loses its server, unless tenants still live on it: that is a PPPError naming them.
    """
    catalog.require_catalog(conn)
    admin, app = settings.veneer.admin_role, settings.veneer.app_role
    me = conn.execute(text("SELECT current_user")).scalar_one()
    changes: list[str] = []
    servers = _servers(conn)
    for name, inst in settings.shards.items():
        want = server_options(inst)
        where = f"{inst.fdw_host}:{inst.fdw_port}/{inst.dbname}"
        row = servers.get(name)
        if row is None:
            opts = ", ".join(f"{k} {quote_literal(v)}" for k, v in want.items())
            _ddl(
                conn,
                f"CREATE SERVER {quote_ident(name)} FOREIGN DATA WRAPPER postgres_fdw "
                f"OPTIONS ({opts})",
            )
            changes.append(f"created foreign server {name} for {where}")
        else:
            if row.fdwname != "postgres_fdw" or row.owner != me:
                raise PPPError(
                    f"a foreign server named {name!r} already exists in the veneer but is not "
                    f"PPP's (wrapper {row.fdwname}, owner {row.owner}; PPP's are postgres_fdw "
                    f"servers owned by {me}): drop or rename it, or rename the shard"
                )
            have = _options(row.srvoptions)
            diff = {k: v for k, v in want.items() if have.get(k) != v}
            if diff:
                opts = ", ".join(
                    f"{'SET' if k in have else 'ADD'} {k} {quote_literal(v)}"
                    for k, v in diff.items()
                )
                _ddl(conn, f"ALTER SERVER {quote_ident(name)} OPTIONS ({opts})")
                shown = ", ".join(f"{k}={v}" for k, v in diff.items())
                changes.append(f"updated foreign server {name}: {shown}")
        catalog.upsert_shard(conn, name, inst.fdw_host, inst.fdw_port, inst.dbname)

    mappings = conn.execute(
        text(
            "SELECT srvname, usename, umoptions FROM pg_user_mappings "
            "WHERE srvname = ANY(CAST(:s AS text[])) AND usename IN (:admin, :app)"
        ),
        {"s": list(settings.shards), "admin": admin, "app": app},
    ).all()
    found = {(m.srvname, m.usename): m.umoptions for m in mappings}
    stale: list[tuple[str, str, str, str]] = []
    for name, inst in settings.shards.items():
        # veneer_admin may read its own mapping's options (not veneer_app's): PPP always
        # writes both together, so the admin's tells whether both are current.
        mine = _options(found.get((name, admin)))
        current = (
            (name, admin) in found
            and (name, app) in found
            and mine.get("user") == inst.app_role
            and mine.get("password") == inst.app_password
        )
        if not current:
            for role in (admin, app):
                stale.append((name, role, inst.app_role, inst.app_password))
            changes.append(
                f"set the user mappings of {admin} and {app} on {name} to {inst.app_role}"
            )
    if stale:
        _set_user_mappings(conn, stale)

    if remove:
        gone = [s.name for s in catalog.list_shards(conn) if s.name not in settings.shards]
        living = catalog.tenants_on(conn, gone)
        if living:
            detail = "; ".join(
                f"shard {shard}: {catalog._plural(names)}" for shard, names in living.items()
            )
            raise PPPError(
                f"shard{'s' if len(living) > 1 else ''} {', '.join(living)} "
                f"{'are' if len(living) > 1 else 'is'} no longer in the settings (PPP_SHARDS) "
                f"but tenants still live there ({detail}): add the shard back, or move or "
                "remove those tenants first"
            )
        for shard in gone:
            if shard in servers:
                _ddl(conn, f"DROP SERVER IF EXISTS {quote_ident(shard)} CASCADE")
            catalog.delete_shard(conn, shard)
            changes.append(f"dropped foreign server {shard} (no longer in the settings)")
    changes.extend(lock_down_catalog(conn, settings))
    for change in changes:
        log.info("%s", change)
    return changes


def drop_all_wiring(conn: Connection) -> None:
    """Unwire every tenant and drop every shard's server (the base revision's downgrade)."""
    for tenant in catalog.find_tenants(conn):
        _ddl(conn, f"DROP SCHEMA IF EXISTS {quote_ident(tenant.schema)} CASCADE")
    for shard in catalog.list_shards(conn):
        _ddl(conn, f"DROP SERVER IF EXISTS {quote_ident(shard.name)} CASCADE")


# -- tenants' foreign tables --------------------------------------------------------------------
@dataclass
class RefreshReport:
    """What a refresh did: tenants wired, pending (no schema on the shard yet), failed."""

    refreshed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    #: The revision recorded for each refreshed tenant (None: no alembic_version yet).
    revisions: dict[str, str | None] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class RemoteTenant:
    """A tenant schema as its shard has it."""

    exists: bool
    revision: str | None
    #: Tables with a column default that uses an object the veneer does not have (a
    #: sequence's nextval, a function of the tenant or of an extension): imported without
    #: their defaults, so INSERTs through the veneer must give those columns.
    local_defaults: tuple[str, ...] = ()


def read_remote(
    inst: Instance, schemas: Sequence[str], connect_timeout: int = 5
) -> dict[str, RemoteTenant]:
    """Whether each tenant schema exists on its shard, its revision there, and which of its
    tables have defaults the veneer cannot have. One connection to the shard, a few queries.

    The revision is :attr:`ppp_env.fleet.TenantState.revision` (heads joined by a space), the
    form ``ppp status`` compares ``wired_revision`` with.
    """
    out: dict[str, RemoteTenant] = {}
    with connection(inst, "admin", connect_timeout=connect_timeout) as conn, conn.cursor() as cur:
        states = read_states(cur, schemas)
        for i in range(0, len(schemas), _CHUNK):
            cur.execute(
                "SELECT n.nspname, array_agg(DISTINCT c.relname ORDER BY c.relname) "
                "FROM pg_attrdef d JOIN pg_class c ON c.oid = d.adrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "JOIN pg_depend dep ON dep.classid = 'pg_attrdef'::regclass AND dep.objid = d.oid "
                "WHERE n.nspname = ANY(%s::text[]) AND dep.refobjid >= 16384 "
                "AND NOT (dep.refclassid = 'pg_class'::regclass AND dep.refobjid = d.adrelid) "
                "GROUP BY n.nspname",
                (list(schemas[i : i + _CHUNK]),),
            )
            local = {name: tuple(tables) for name, tables in cur.fetchall()}
            for name in schemas[i : i + _CHUNK]:
                st = states[name]
                out[name] = RemoteTenant(st.exists, st.revision, local.get(name, ()))
        conn.rollback()
    return out


def _pgcode(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "pgcode", None)


def _names(tables: Sequence[str]) -> str:
    return ", ".join(quote_ident(t) for t in tables)


def _import_statements(
    schema: str, shard: str, stage: str, remote: RemoteTenant, *, defaults: bool = True
) -> list[str]:
    """IMPORT FOREIGN SCHEMA into ``stage``, with the remote column defaults where possible.

    Defaults matter: postgres_fdw sends every column of an INSERT, so without the local
    default a remote ``DEFAULT gen_random_uuid()`` would receive NULL. A default that uses an
    object the veneer lacks (a sequence) would make the import fail: those tables come
    without their defaults (``defaults=False``: every table does).
    """
    source = f"IMPORT FOREIGN SCHEMA {quote_ident(schema)}"
    target = f"FROM SERVER {quote_ident(shard)} INTO {quote_ident(stage)}"
    if not defaults:
        return [
            f"{source} EXCEPT ({_names(EXCLUDED_TABLES)}) {target} OPTIONS (import_default 'false')"
        ]
    plain = [*EXCLUDED_TABLES, *remote.local_defaults]
    out = [f"{source} EXCEPT ({_names(plain)}) {target} OPTIONS (import_default 'true')"]
    if remote.local_defaults:
        out.append(
            f"{source} LIMIT TO ({_names(remote.local_defaults)}) {target} "
            "OPTIONS (import_default 'false')"
        )
    return out


_SAVEPOINT = "ppp_tenant"


def _in_savepoint(conn: Connection, statements: Sequence[str]) -> None:
    """Run one tenant's statements in one round trip, undone together if one fails."""
    try:
        _ddl(conn, ";\n".join([f"SAVEPOINT {_SAVEPOINT}", *statements, f"RELEASE {_SAVEPOINT}"]))
    except DBAPIError:
        _ddl(conn, f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}; RELEASE {_SAVEPOINT}")
        raise


def _stage(
    conn: Connection, tenant: catalog.Tenant, stage: str, remote: RemoteTenant, app: str
) -> None:
    """Import a tenant into a new schema ``stage``, with veneer_app's privileges."""
    qs = quote_ident(stage)
    grants = [
        f"GRANT USAGE ON SCHEMA {qs} TO {app}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {qs} TO {app}",
    ]
    create = f"CREATE SCHEMA {qs}"
    try:
        _in_savepoint(
            conn, [create, *_import_statements(tenant.schema, tenant.shard, stage, remote), *grants]
        )
    except DBAPIError as exc:
        if _pgcode(exc) == _SCHEMA_NOT_FOUND:
            raise
        # A default that still cannot exist here: import the tenant without defaults.
        try:
            statements = _import_statements(
                tenant.schema, tenant.shard, stage, remote, defaults=False
            )
            _in_savepoint(conn, [create, *statements, *grants])
        except DBAPIError:
            raise exc from None
        log.warning(
            "tenant %s: imported without column defaults (%s)", tenant.schema, first_line(exc)
        )


def _existing(conn: Connection, schemas: Sequence[str]) -> dict[str, list[str]]:
    """The veneer schemas among ``schemas`` that exist, with their foreign tables."""
    rows = conn.execute(
        text(
            "SELECT n.nspname, coalesce(array_agg(c.relname ORDER BY c.relname) "
            "FILTER (WHERE c.relkind = 'f'), '{}') FROM pg_namespace n "
            "LEFT JOIN pg_class c ON c.relnamespace = n.oid "
            "WHERE n.nspname = ANY(CAST(:s AS text[])) GROUP BY n.nspname"
        ),
        {"s": list(schemas)},
    ).all()
    return {name: list(tables) for name, tables in rows}


def _swap(conn: Connection, schema: str, stage: str, old: str, tables: list[str] | None) -> None:
    """Put ``stage`` in place of the tenant's schema; drop the old foreign tables (RESTRICT:
    anything else in the schema, or depending on its tables, makes this tenant fail)."""
    q, qs, qo = quote_ident(schema), quote_ident(stage), quote_ident(old)
    if tables is None:
        _in_savepoint(conn, [f"ALTER SCHEMA {qs} RENAME TO {q}"])
        return
    statements = [f"ALTER SCHEMA {q} RENAME TO {qo}", f"ALTER SCHEMA {qs} RENAME TO {q}"]
    if tables:
        statements.append(
            "DROP FOREIGN TABLE " + ", ".join(f"{qo}.{quote_ident(t)}" for t in tables)
        )
    statements.append(f"DROP SCHEMA {qo}")
    _in_savepoint(conn, statements)


def refresh_in(
    conn: Connection, settings: Settings, tenants: Sequence[str] | None = None
) -> RefreshReport:
    """(Re-)import tenants' foreign tables in the caller's transaction; see :func:`refresh`."""
    started = time.monotonic()
    report = RefreshReport()
    lock(conn)
    wanted = catalog.find_tenants(conn, tenants=tenants)
    app = quote_ident(settings.veneer.app_role)

    # 1. Each tenant's state on its shard, read before the import: a migration that lands
    #    in between leaves the veneer marked stale, never falsely in step.
    by_shard = group_by_shard(wanted)
    remote: dict[str, RemoteTenant] = {}
    for shard, schemas in by_shard.items():
        inst = settings.shards.get(shard)
        if inst is None:
            for schema in schemas:
                report.errors[schema] = (
                    f"its shard {shard!r} is not in the settings (PPP_SHARDS lists "
                    f"{', '.join(settings.shards) or 'none'})"
                )
            continue
        try:
            remote.update(read_remote(inst, schemas, settings.connect_timeout))
        except PPPError as exc:
            for schema in schemas:
                report.errors[schema] = str(exc)
        except Exception as exc:  # reported per tenant, the others go on
            for schema in schemas:
                report.errors[schema] = f"cannot read shard {shard!r}: {first_line(exc)}"

    # 2. Import into staging schemas: no lock on any live table while the shards answer.
    staged: list[tuple[str, str, str | None]] = []
    for t in wanted:
        if t.schema in report.errors:
            continue
        state = remote[t.schema]
        if not state.exists:
            report.pending.append(t.schema)
            continue
        stage = f"ppp-stage-{len(staged)}"  # '-': never a valid tenant name
        try:
            _stage(conn, t, stage, state, app)
        except DBAPIError as exc:
            if _pgcode(exc) == _SCHEMA_NOT_FOUND:
                report.pending.append(t.schema)
            else:
                report.errors[t.schema] = f"cannot import from shard {t.shard!r}: {first_line(exc)}"
            continue
        staged.append((t.schema, stage, state.revision))

    # 3. Swap: the staging schema takes the tenant's name, the old foreign tables go.
    existing = _existing(conn, [schema for schema, _stage, _rev in staged])
    wired: dict[str, str | None] = {}
    for i, (schema, stage, revision) in enumerate(staged):
        try:
            _swap(conn, schema, stage, f"ppp-old-{i}", existing.get(schema))
        except DBAPIError as exc:
            report.errors[schema] = (
                f"cannot replace its foreign tables: {first_line(exc)} (the veneer schema "
                f"{schema!r} must hold nothing but PPP's foreign tables)"
            )
            _ddl(conn, f"DROP SCHEMA IF EXISTS {quote_ident(stage)} CASCADE")
            continue
        wired[schema] = revision
    catalog.mark_wired(conn, wired)
    report.refreshed = list(wired)
    report.revisions = wired
    report.seconds = time.monotonic() - started
    return report


def refresh(settings: Settings, tenants: Sequence[str] | None = None) -> RefreshReport:
    """Re-import the foreign tables of ``tenants`` (None: every tenant) in one transaction.

    Grants USAGE and SELECT/INSERT/UPDATE/DELETE to ``veneer_app``, leaves the shard's
    ``alembic_version`` out, and records each tenant's revision on its shard as
    ``wired_revision``. A tenant whose schema is not on its shard yet is reported as
    pending; a failed tenant is reported with its error and the others are still wired.
    """
    with catalog.admin_connection(settings) as conn:
        return refresh_in(conn, settings, tenants)


def unwire(conn: Connection, schema: str) -> None:
    """Drop a tenant's foreign tables (its veneer schema); its data on the shard stays."""
    _ddl(conn, f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
