"""The veneer's postgres_fdw wiring: one foreign server per shard, and user mappings.

Everything here runs as ``veneer_admin`` (never a superuser) on a SQLAlchemy connection whose
transaction the caller owns (Alembic's, in ``veneer_migrations/env.py``).

- :func:`reconcile` makes one foreign server per shard in the settings (named after the
  shard; host, port and database from the settings, never from a revision file) and user
  mappings from ``veneer_admin`` and ``veneer_app`` to the shard's app role.

User mapping passwords never appear in SQL text (the veneer may log every statement): they
travel through ``COPY ... FROM STDIN`` into a temporary table, and a ``DO`` block, which
``log_statement`` does not expand, creates the mappings from it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ppp_env.errors import PPPError
from ppp_env.identifiers import quote_ident, quote_literal
from ppp_env.settings import FDW_STARTUP_COST, FDW_TUPLE_COST, Instance, Settings
from ppp_env.veneer import catalog

log = logging.getLogger("ppp.veneer")

#: Advisory lock (veneer database) serializing veneer migrations and refreshes.
VENEER_LOCK_KEY = 0x50505F76656E  # "PPP_ven"
#: Rows per remote fetch (postgres_fdw's default is 100: too many round trips for scans;
#: 10,000 gained nothing more in benchmarks/fdw_options.py and holds more per cursor).
FETCH_SIZE = 1000


def ddl(conn: Connection, sql: str) -> None:
    """Run a statement with no parameters (so ``%`` is never taken for a placeholder)."""
    conn.exec_driver_sql(sql, execution_options={"no_parameters": True})


#: The old private name, for a module that still imports it (fleet/rendering.py).
_ddl = ddl


def lock(conn: Connection) -> None:
    """Wait for other veneer migrations and refreshes; held until the transaction ends."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": VENEER_LOCK_KEY})


# -- foreign servers and user mappings ----------------------------------------------------------
def _cost(value: float) -> str:
    """A planner cost as postgres_fdw's option text (50000, 10, 0.5)."""
    return format(value, "g")


def server_options(
    inst: Instance,
    remote_estimate: bool = False,
    startup_cost: float = FDW_STARTUP_COST,
    tuple_cost: float = FDW_TUPLE_COST,
) -> dict[str, str]:
    """The postgres_fdw options PPP manages on a shard's foreign server (every veneer upgrade
    restores them). Chosen by measurement: ``fetch_size`` 1000 (``benchmarks/fdw_options.py``:
    range scans and fan-outs 1.5-2.5x faster than postgres_fdw's 100), ``async_capable`` (an
    Append over several shards runs them at once: a cross-tenant view costs its slowest
    shard, not the sum). ``use_remote_estimate`` is off unless ``PPP_FDW_REMOTE_ESTIMATE``:
    every query would pay a remote EXPLAIN, and ``benchmarks/query_paths.py`` measured the
    veneer's point lookups 1.3x slower than a hand-wired postgres_fdw with it (1.04x
    without). ``extensions`` is not set: no extension is shared by the veneer and the shards
    whose functions queries would push down.

    ``fdw_startup_cost`` 50000 and ``fdw_tuple_cost`` 10 (``PPP_FDW_STARTUP_COST``,
    ``PPP_FDW_TUPLE_COST``): PPP never analyzes foreign tables, and without remote estimates
    postgres_fdw prices a remote join as a nested loop over the cross product of its
    tables' guessed sizes, so with its own costs (100 and 0.01) fetching every table and
    joining, grouping and sorting in the veneer looked cheaper. What a veneer query costs is
    the rows it fetches: charged 10 each, the remote query that returns fewer rows wins by
    more than the planner's 1 % tolerance, and 50000 per remote query covers the cross
    product of three tables. ``benchmarks/veneer_queries.py`` ships every shape postgres_fdw
    can ship; any startup cost from 20000 to 100000 ships the same with 10 per row (below,
    a join of three whole tables stays in the veneer; above, small groupings do, their
    savings within the tolerance), and 0.2 per row (PostgreSQL 17's default) left grouped
    joins in the veneer."""
    return {
        "host": inst.fdw_host,
        "port": str(inst.fdw_port),
        "dbname": inst.dbname,
        "async_capable": "true",
        "fetch_size": str(FETCH_SIZE),
        "use_remote_estimate": "true" if remote_estimate else "false",
        "fdw_startup_cost": _cost(startup_cost),
        "fdw_tuple_cost": _cost(tuple_cost),
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
    # With ppp.placement() (the lifecycle revision) the app role keeps USAGE to call it.
    placement = conn.execute(text("SELECT to_regprocedure('ppp.placement()') IS NOT NULL")).scalar()
    exposed = conn.execute(
        text(
            "SELECT (NOT :placement AND has_schema_privilege(:app, 'ppp', 'USAGE')) "
            "OR has_schema_privilege(:app, 'ppp', 'CREATE') "
            "OR EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = 'ppp'::regnamespace "
            "AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND has_table_privilege(:app, c.oid, "
            "'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER'))"
        ),
        {"app": app, "placement": bool(placement)},
    ).scalar()
    if not exposed:
        return []
    qa = quote_ident(app)
    ddl(conn, f"REVOKE {'CREATE' if placement else 'ALL'} ON SCHEMA ppp FROM PUBLIC, {qa}")
    ddl(conn, f"REVOKE ALL ON ALL TABLES IN SCHEMA ppp FROM PUBLIC, {qa}")
    ddl(conn, f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA ppp FROM PUBLIC, {qa}")
    return [f"revoked every privilege of {app} on the catalog (schema ppp)"]


def reconcile(conn: Connection, settings: Settings, *, remove: bool = True) -> list[str]:
    """Make the foreign servers and user mappings match the settings; return what changed.

    One postgres_fdw server per shard, named after it, with host/port/dbname from the
    settings (``fdw_host``/``fdw_port``: how the veneer's server reaches the shard) and
    the options of :func:`server_options`; user mappings from ``veneer_admin`` and
    ``veneer_app`` to the shard's app role with its password. The shards are recorded in
    ``ppp.shards``. With ``remove``, a shard in the catalog but no longer in the settings
    loses its server, unless tenants still live on it: that is a PPPError naming them.
    """
    catalog.require_catalog(conn)
    servers = _servers(conn)
    changes = _reconcile_servers(conn, settings, servers)
    changes += _reconcile_mappings(conn, settings)
    changes += _reconcile_database(conn)
    if remove:
        changes += _remove_gone_shards(conn, settings, servers)
    changes.extend(lock_down_catalog(conn, settings))
    for change in changes:
        log.info("%s", change)
    return changes


def _reconcile_servers(
    conn: Connection, settings: Settings, servers: Mapping[str, Any]
) -> list[str]:
    """A foreign server per shard with the options of :func:`server_options`, recorded in
    ``ppp.shards``; a server of that name that is not PPP's is a PPPError."""
    me = conn.execute(text("SELECT current_user")).scalar_one()
    changes: list[str] = []
    for name, inst in settings.shards.items():
        want = server_options(
            inst, settings.remote_estimate, settings.fdw_startup_cost, settings.fdw_tuple_cost
        )
        row = servers.get(name)
        if row is None:
            opts = ", ".join(f"{k} {quote_literal(v)}" for k, v in want.items())
            ddl(
                conn,
                f"CREATE SERVER {quote_ident(name)} FOREIGN DATA WRAPPER postgres_fdw "
                f"OPTIONS ({opts})",
            )
            where = f"{inst.fdw_host}:{inst.fdw_port}/{inst.dbname}"
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
                ddl(conn, f"ALTER SERVER {quote_ident(name)} OPTIONS ({opts})")
                shown = ", ".join(f"{k}={v}" for k, v in diff.items())
                changes.append(f"updated foreign server {name}: {shown}")
        catalog.upsert_shard(conn, name, inst.fdw_host, inst.fdw_port, inst.dbname)
    return changes


#: Settings PPP gives the veneer database (new sessions get them; a role's or a session's own
#: setting wins). The veneer plans with guessed row counts (PPP never analyzes foreign
#: tables): ``enable_nestloop`` off, so a join the shard cannot do is a hash join, linear in
#: the rows that arrive, rather than a nested loop over a guess (an EXISTS took 10x as long);
#: ``jit`` off, as with 10 per row fetched a query of 10,000 rows is costly enough for JIT
#: compilation, which takes longer than the little the veneer evaluates itself.
DATABASE_SETTINGS = {"enable_nestloop": "off", "jit": "off"}


def _reconcile_database(conn: Connection) -> list[str]:
    """:data:`DATABASE_SETTINGS` on the veneer database, when ``veneer_admin`` owns it."""
    row = conn.execute(
        text(
            "SELECT d.datname, current_user AS me, pg_get_userbyid(d.datdba) AS owner, s.setconfig "
            "FROM pg_database d LEFT JOIN pg_db_role_setting s "
            "ON s.setdatabase = d.oid AND s.setrole = 0 WHERE d.datname = current_database()"
        )
    ).one()
    have = _options(row.setconfig)
    changes = []
    for name, value in DATABASE_SETTINGS.items():
        if have.get(name) == value:
            continue
        if row.owner != row.me:
            log.warning(
                "cannot set %s = %s on the veneer database %s: it is owned by %s, not %s",
                name,
                value,
                row.datname,
                row.owner,
                row.me,
            )
            continue
        ddl(conn, f"ALTER DATABASE {quote_ident(row.datname)} SET {name} = {quote_literal(value)}")
        changes.append(f"set {name} = {value} for new sessions of the veneer database")
    return changes


def _reconcile_mappings(conn: Connection, settings: Settings) -> list[str]:
    """User mappings of ``veneer_admin`` and ``veneer_app`` to each shard's app role."""
    admin, app = settings.veneer.admin_role, settings.veneer.app_role
    mappings = conn.execute(
        text(
            "SELECT srvname, usename, umoptions FROM pg_user_mappings "
            "WHERE srvname = ANY(CAST(:s AS text[])) AND usename IN (:admin, :app)"
        ),
        {"s": list(settings.shards), "admin": admin, "app": app},
    ).all()
    found = {(m.srvname, m.usename): m.umoptions for m in mappings}
    stale: list[tuple[str, str, str, str]] = []
    changes: list[str] = []
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
    return changes


def _remove_gone_shards(
    conn: Connection, settings: Settings, servers: Mapping[str, Any]
) -> list[str]:
    """Drop the servers of shards no longer in the settings; PPPError while tenants live
    on one of them."""
    gone = [s.name for s in catalog.list_shards(conn) if s.name not in settings.shards]
    living = catalog.tenants_on(conn, gone)
    if living:
        detail = "; ".join(
            f"shard {shard}: {catalog.plural(names)}" for shard, names in living.items()
        )
        raise PPPError(
            f"shard{'s' if len(living) > 1 else ''} {', '.join(living)} "
            f"{'are' if len(living) > 1 else 'is'} no longer in the settings (PPP_SHARDS) "
            f"but tenants still live there ({detail}): add the shard back, or move or "
            "remove those tenants first"
        )
    changes = []
    for shard in gone:
        if shard in servers:
            ddl(conn, f"DROP SERVER IF EXISTS {quote_ident(shard)} CASCADE")
        catalog.delete_shard(conn, shard)
        changes.append(f"dropped foreign server {shard} (no longer in the settings)")
    return changes


def drop_all_wiring(conn: Connection) -> None:
    """Unwire every tenant and drop every shard's server (the base revision's downgrade)."""
    ddl(conn, "DROP SCHEMA IF EXISTS ppp_all CASCADE")  # the cross-tenant views
    for tenant in catalog.find_tenants(conn):
        ddl(conn, f"DROP SCHEMA IF EXISTS {quote_ident(tenant.schema)} CASCADE")
    for shard in catalog.list_shards(conn):
        ddl(conn, f"DROP SERVER IF EXISTS {quote_ident(shard.name)} CASCADE")
