"""Shard-side pieces of a tenant move: copy a schema, block and unblock writes, replicate,
checksum, rename the source copy.

Every function takes psycopg2 connections in autocommit mode (or instances to run the
PostgreSQL client tools against) and is safe to run again: the mover (``move.py``) repeats a
step after an interruption.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from ppp_env.db import first_line
from ppp_env.errors import PPPError
from ppp_env.identifiers import quote_ident, quote_literal
from ppp_env.servers.clients import Client, for_instance, server_version, tail
from ppp_env.settings import Instance, Role
from ppp_env.tenant_state import VERSION_TABLE, ensure_index, track_sql

#: Prefix of a moved tenant's source copy, and of the comment that names its tenant.
MOVED_PREFIX = "ppp_moved_"
MOVED_COMMENT = "ppp_moved"
#: Session settings that make a row's text the same on both shards (checksums compare it).
_TEXT_SETTINGS = (
    "SET datestyle = 'ISO, MDY'; SET timezone = 'UTC'; SET intervalstyle = 'postgres'; "
    "SET extra_float_digits = 3; SET bytea_output = 'hex'; SET jit = off"
)


def copy_schema(
    source: Instance,
    target: Instance,
    schema: str,
    *,
    with_data: bool,
    connect_timeout: int = 5,
    clients: tuple[Client, Client] | None = None,
) -> None:
    """``pg_dump -n schema | psql --single-transaction`` from source to target, both as their
    ``{db}_admin`` role (objects on the target belong to its admin, and its default
    privileges give the app role DML). Without ``with_data``: only the DDL. ``clients``: how
    to run the programs on each side (see :mod:`ppp_env.servers.clients`)."""
    src, dst = clients or (
        for_instance(source, connect_timeout=connect_timeout),
        for_instance(target, connect_timeout=connect_timeout),
    )
    dump = ["--no-owner", "--no-privileges", "--no-comments", "-n", schema]
    if not with_data:
        dump.append("--schema-only")
    d = src.start("pg_dump", *dump)
    assert d.stdout is not None and d.stderr is not None
    r = dst.start(
        "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
        stdin=d.stdout, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    d.stdout.close()
    _out, rerr = r.communicate()
    derr = d.stderr.read()
    d.stderr.close()
    d.wait()
    if d.returncode != 0:
        raise PPPError(
            f"pg_dump of {schema!r} on {source.label} ({src.where}) failed: {tail(derr)}; "
            f"nothing was written to {target.label}"
        )
    if r.returncode != 0:
        raise PPPError(
            f"restoring {schema!r} on {target.label} ({dst.where}) failed (rolled back there): "
            f"{tail(rerr)}"
        )


def schema_exists(cur: Any, schema: str) -> bool:
    cur.execute("SELECT to_regnamespace(%s) IS NOT NULL", (quote_ident(schema),))
    return bool(cur.fetchone()[0])


def tables(cur: Any, schema: str, kinds: str = "r") -> list[str]:
    cur.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        'WHERE n.nspname = %s AND c.relkind = ANY(%s) ORDER BY c.relname COLLATE "C"',
        (schema, list(kinds)),
    )
    return [r[0] for r in cur.fetchall()]


def without_identity(cur: Any, schema: str) -> list[str]:
    """Tables that logical replication cannot update or delete in (no replica identity)."""
    cur.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind = 'r' AND (c.relreplident = 'n' OR "
        "(c.relreplident = 'd' AND NOT EXISTS (SELECT 1 FROM pg_index i "
        'WHERE i.indrelid = c.oid AND i.indisprimary))) ORDER BY c.relname COLLATE "C"',
        (schema,),
    )
    return [r[0] for r in cur.fetchall()]


def unlogged(cur: Any, schema: str) -> list[str]:
    """Unlogged tables: logical replication does not carry their rows."""
    cur.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind = 'r' AND c.relpersistence = 'u' "
        'ORDER BY c.relname COLLATE "C"',
        (schema,),
    )
    return [r[0] for r in cur.fetchall()]


def _qualified(schema: str, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}"


# -- writes: blocked on the source during the copy, closed on the target until the switch -------
def _roles(app_role: str, also: Sequence[str]) -> str:
    return ", ".join(quote_ident(r) for r in (app_role, *also))


def block_writes(
    cur: Any, schema: str, app_role: str, lock_timeout: float, *, also: Sequence[str] = ()
) -> None:
    """Take INSERT/UPDATE/DELETE/TRUNCATE from the app role (and the roles ``also``: the
    tenant's own role in strict isolation) on every table of the schema, then wait for the
    transactions that may still write (they hold their table locks until they end):
    afterwards nothing writes there. The revoke is persistent, so a killed mover leaves the
    tenant read-only, never writable in two places."""
    q = quote_ident(schema)
    cur.execute(
        f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA {q} "
        f"FROM {_roles(app_role, also)}"
    )
    names = tables(cur, schema)
    if not names:
        return
    listed = ", ".join(_qualified(schema, n) for n in names)
    try:
        cur.execute(
            f"BEGIN; SET LOCAL lock_timeout = '{int(lock_timeout * 1000)}ms'; "
            f"LOCK TABLE {listed} IN SHARE MODE; COMMIT"
        )
    except Exception as exc:
        cur.execute("ROLLBACK")
        raise PPPError(
            f"writes to {schema!r} are revoked, but a transaction still holds its tables after "
            f"{lock_timeout:g} s ({first_line(exc)})"
        ) from None


def open_writes(cur: Any, schema: str, app_role: str, *, also: Sequence[str] = ()) -> None:
    """Give the app role (and the roles ``also``) back DML on every table of the schema (what
    ``ppp init``'s default privileges and strict isolation give), except the Alembic version
    table; sync the shard's version index."""
    q, who = quote_ident(schema), _roles(app_role, also)
    cur.execute(
        f"GRANT USAGE ON SCHEMA {q} TO {who}; "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {q} TO {who}; "
        f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {q} TO {who}"
    )
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{q}.{VERSION_TABLE}",))
    if cur.fetchone()[0]:
        ensure_index(cur, app_role)
        cur.execute("BEGIN;" + track_sql(schema, app_role) + "COMMIT;")


def close_writes(cur: Any, schema: str, app_role: str) -> None:
    """On the target before the switch: the app role may read but not write yet."""
    cur.execute(
        f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA {quote_ident(schema)} "
        f"FROM {quote_ident(app_role)}"
    )


def drop_schema(cur: Any, schema: str) -> None:
    cur.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")


def prepare_target(cur: Any, app_role: str) -> None:
    """The target's version index (schema ppp): the copied version table's trigger needs it."""
    ensure_index(cur, app_role)


# -- who does the replication: {db}_admin where PostgreSQL lets it, else the superuser ----------
#: PostgreSQL 16 added pg_create_subscription: a non-superuser may create a subscription.
SUBSCRIBERS_WITHOUT_SUPERUSER = 160000
Side = Literal["source", "target"]


def admin_can_publish(cur: Any) -> bool:
    """Whether the connected role (the source's ``{db}_admin``) may create the move's slot and
    serve the subscription's connection: it has REPLICATION (``ppp init`` on 16 and later)."""
    cur.execute("SELECT rolreplication FROM pg_roles WHERE rolname = current_user")
    return bool(cur.fetchone()[0])


def admin_can_subscribe(cur: Any) -> bool:
    """Whether the connected role (the target's ``{db}_admin``) may create the subscription,
    in a session whose statements are not logged (its connection string holds a password)."""
    if server_version(cur) < SUBSCRIBERS_WITHOUT_SUPERUSER:
        return False
    cur.execute(
        "SELECT pg_has_role('pg_create_subscription', 'USAGE') "
        "AND has_database_privilege(current_database(), 'CREATE') "
        "AND has_parameter_privilege('log_statement', 'SET') "
        "AND has_parameter_privilege('log_min_error_statement', 'SET')"
    )
    return bool(cur.fetchone()[0])


def replication_role(cur: Any, inst: Instance, side: Side) -> Role:
    """Who does an online move's replication work on ``inst`` (``cur``: its admin): on the
    source the publication, the slot and the subscription's connection, on the target the
    subscription. Its ``{db}_admin`` when it may, else its superuser; PPPError when neither."""
    if admin_can_publish(cur) if side == "source" else admin_can_subscribe(cur):
        return "admin"
    if inst.superuser_password:
        return "superuser"
    if server_version(cur) < SUBSCRIBERS_WITHOUT_SUPERUSER:
        raise PPPError(
            f"moving a tenant online needs the superuser of {inst.label}: set "
            f"{inst.env_prefix}SUPERUSER_PASSWORD (PostgreSQL 15 keeps publications "
            "FOR TABLES IN SCHEMA and subscriptions to superusers)"
        )
    needs = (
        "REPLICATION"
        if side == "source"
        else "pg_create_subscription and SET on log_statement and log_min_error_statement"
    )
    raise PPPError(
        f"moving a tenant online needs {needs} for {inst.admin_role} on {inst.label} "
        f"(PostgreSQL 16 and later; `ppp init` grants it), or {inst.env_prefix}"
        "SUPERUSER_PASSWORD set"
    )


def not_owned(cur: Any, schema: str) -> list[str]:
    """Tables of the schema the connected role does not own (a publication FOR TABLE needs
    their owner)."""
    cur.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind = 'r' AND NOT pg_has_role(c.relowner, 'USAGE') "
        'ORDER BY c.relname COLLATE "C"',
        (schema,),
    )
    return [r[0] for r in cur.fetchall()]


# -- logical replication (the roles above) -------------------------------------------------------
def create_marker(cur: Any, name: str, app_role: str) -> None:
    """The move's marker table ``ppp.<name>`` (on both shards): a row written on the source
    once its writes are blocked reaches the target after every earlier change (logical
    replication applies in commit order), so its arrival says the target caught up, at once
    (the slot's confirmed position only moves with the subscriber's periodic feedback)."""
    ensure_index(cur, app_role)
    cur.execute(
        f"CREATE TABLE IF NOT EXISTS ppp.{quote_ident(name)} "
        "(token text PRIMARY KEY, at timestamptz NOT NULL DEFAULT now()); "
        f"REVOKE ALL ON ppp.{quote_ident(name)} FROM PUBLIC, {quote_ident(app_role)}"
    )


def drop_marker(cur: Any, name: str) -> None:
    cur.execute(f"DROP TABLE IF EXISTS ppp.{quote_ident(name)}")


def mark(cur: Any, name: str) -> str:
    """Write a new marker row on the source; return its token."""
    token = uuid.uuid4().hex
    # Flushed at once: the walsender only sends flushed WAL, and the shard may commit
    # asynchronously (a marker waiting for the WAL writer would hold the block longer).
    cur.execute(
        "BEGIN; SET LOCAL synchronous_commit = on; "
        f"INSERT INTO ppp.{quote_ident(name)} (token) VALUES (%s); COMMIT",
        (token,),
    )
    return token


def wait_mark(cur: Any, name: str, token: str, timeout: float) -> None:
    """Until the marker row ``token`` is on the target."""
    deadline = time.monotonic() + timeout
    while True:
        cur.execute(f"SELECT 1 FROM ppp.{quote_ident(name)} WHERE token = %s", (token,))
        if cur.fetchone() is not None:
            return
        if time.monotonic() > deadline:
            raise PPPError(f"the target did not catch up with the source in {timeout:g} s")
        time.sleep(0.005)


def create_publication(cur: Any, name: str, schema: str, *, listed: bool = False) -> None:
    """The schema's tables and the marker table: ``FOR TABLES IN SCHEMA`` (a superuser's), or
    with ``listed`` each table by name (``FOR TABLE``: their owner may, no superuser needed;
    no table comes or goes during the move, which holds the tenant's migration lock)."""
    cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,))
    if cur.fetchone() is not None:
        return
    marker = f"ppp.{quote_ident(name)}"
    if listed:
        what = ", ".join([*(_qualified(schema, t) for t in tables(cur, schema)), marker])
        cur.execute(f"CREATE PUBLICATION {quote_ident(name)} FOR TABLE {what}")
    else:
        cur.execute(
            f"CREATE PUBLICATION {quote_ident(name)} FOR TABLES IN SCHEMA {quote_ident(schema)}, "
            f"TABLE {marker}"
        )


def create_slot(cur: Any, name: str) -> None:
    cur.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (name,))
    if cur.fetchone() is None:
        cur.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))


def create_subscription(cur: Any, name: str, source: Instance, role: Role = "superuser") -> None:
    """Subscribe the target to the source's publication of the same name, on the slot made by
    :func:`create_slot` (made apart, so a source and target in one cluster do not wait for each
    other), connecting as the source's ``role``. The connection string holds that role's
    password: the session logs no statement, and no message PPP shows contains it."""
    cur.execute("SELECT 1 FROM pg_subscription WHERE subname = %s", (name,))
    if cur.fetchone() is not None:
        return
    user, secret = source.user_and_password(role)
    password = secret or ""
    conninfo = " ".join(
        f"{k}={quote_literal(str(v))}"
        for k, v in (
            ("host", source.fdw_host),
            ("port", source.fdw_port),
            ("dbname", source.dbname),
            ("user", user),
            ("password", password),
            ("application_name", name),
        )
    )
    q = quote_ident(name)
    try:
        cur.execute("SET log_statement = 'none'; SET log_min_error_statement = 'panic'")
        cur.execute(
            f"CREATE SUBSCRIPTION {q} CONNECTION {quote_literal(conninfo)} PUBLICATION {q} "
            f"WITH (create_slot = false, slot_name = {quote_literal(name)}, copy_data = true)"
        )
    except Exception as exc:
        text = first_line(exc)
        if password:
            text = text.replace(password, "***")
        raise PPPError(f"cannot subscribe {name!r}: {text}") from None
    finally:
        cur.execute("RESET log_statement; RESET log_min_error_statement")


def sync_state(cur: Any, name: str) -> tuple[int, int, int]:
    """(tables, tables ready, errors so far) of a subscription on the target."""
    cur.execute(
        "SELECT count(r.*), count(r.*) FILTER (WHERE r.srsubstate = 'r'), "
        "coalesce(max(st.apply_error_count + st.sync_error_count), 0) "
        "FROM pg_subscription s LEFT JOIN pg_subscription_rel r ON r.srsubid = s.oid "
        "LEFT JOIN pg_stat_subscription_stats st ON st.subid = s.oid WHERE s.subname = %s "
        "GROUP BY s.oid",
        (name,),
    )
    row = cur.fetchone()
    if row is None:
        raise PPPError(f"the subscription {name!r} is gone from the target")
    return int(row[0]), int(row[1]), int(row[2])


def wait_synced(cur: Any, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        total, ready, errors = sync_state(cur, name)
        if errors:
            raise PPPError(
                f"the subscription {name!r} failed on the target ({errors} error(s)): see the "
                "target's server log"
            )
        if total and ready == total:
            return
        if time.monotonic() > deadline:
            raise PPPError(
                f"the subscription {name!r} copied {ready} of {total} table(s) in {timeout:g} s"
            )
        time.sleep(0.05)


def drop_subscription(cur: Any, name: str) -> None:
    """Drop the subscription without touching the remote slot (see :func:`drop_slot`)."""
    cur.execute("SELECT 1 FROM pg_subscription WHERE subname = %s", (name,))
    if cur.fetchone() is None:
        return
    q = quote_ident(name)
    cur.execute(f"ALTER SUBSCRIPTION {q} DISABLE")
    cur.execute(f"ALTER SUBSCRIPTION {q} SET (slot_name = NONE)")
    cur.execute(f"DROP SUBSCRIPTION {q}")


def drop_publication_and_slot(cur: Any, name: str, timeout: float = 30.0) -> None:
    cur.execute(f"DROP PUBLICATION IF EXISTS {quote_ident(name)}")
    deadline = time.monotonic() + timeout
    while True:
        cur.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (name,))
        row = cur.fetchone()
        if row is None:
            return
        if row[0] is not None:  # the walsender of a just-disabled subscription is ending
            if time.monotonic() > deadline:
                cur.execute("SELECT pg_terminate_backend(%s)", (row[0],))
            time.sleep(0.05)
            continue
        cur.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = %s AND active_pid IS NULL",
            (name,),
        )


def copy_sequences(src: Any, dst: Any, schema: str) -> int:
    """Logical replication does not carry sequence values: set each on the target to the
    source's."""
    names = tables(src, schema, "S")
    for name in names:
        qn = _qualified(schema, name)
        src.execute(f"SELECT last_value, is_called FROM {qn}")
        last, called = src.fetchone()
        dst.execute("SELECT setval(%s::regclass, %s, %s)", (qn, last, called))
    return len(names)


# -- verification -------------------------------------------------------------------------------
def snapshot(conn: Any) -> None:
    """Start a read-only REPEATABLE READ transaction on ``conn`` and take its snapshot now."""
    cur = conn.cursor()
    cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; " + _TEXT_SETTINGS)
    cur.execute("SELECT 1")


def checksums(
    conn: Any, schema: str, names: Sequence[str], *, counts_only: bool = False, begun: bool = False
) -> dict[str, tuple[int, str]]:
    """Row count and a 64-bit hash sum of every row's text, per table, in one snapshot (the
    transaction :func:`snapshot` began, with ``begun``)."""
    if not begun:
        snapshot(conn)
    cur = conn.cursor()
    digest_sql = "''" if counts_only else "coalesce(sum(hashtextextended(ppp_row::text, 0)), 0)"
    try:
        out: dict[str, tuple[int, str]] = {}
        for name in names:
            cur.execute(
                f"SELECT count(*), ({digest_sql})::text FROM {_qualified(schema, name)} AS ppp_row"
            )
            count, digest = cur.fetchone()
            out[name] = (int(count), str(digest))
        return out
    finally:
        cur.execute("ROLLBACK; RESET ALL")


def verify(
    src_conn: Any, dst_conn: Any, schema: str, *, counts_only: bool = False, begun: bool = False
) -> dict[str, int]:
    """Compare every table's row count and checksum, source against target (both at once).

    With ``begun`` the connections are in the transactions :func:`snapshot` began (a pair of
    snapshots of the same data); their table lists are read there too. Returns rows per
    table; PPPError naming the first table that differs.
    """
    src_tables = tables(src_conn.cursor(), schema)
    dst_tables = tables(dst_conn.cursor(), schema)
    if src_tables != dst_tables:
        if begun:
            src_conn.cursor().execute("ROLLBACK; RESET ALL")
            dst_conn.cursor().execute("ROLLBACK; RESET ALL")
        missing = sorted(set(src_tables) - set(dst_tables))
        extra = sorted(set(dst_tables) - set(src_tables))
        raise PPPError(
            f"verification failed: the target's tables differ (missing: {missing or 'none'}, "
            f"extra: {extra or 'none'})"
        )
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(
            checksums, src_conn, schema, src_tables, counts_only=counts_only, begun=begun
        )
        b = pool.submit(
            checksums, dst_conn, schema, dst_tables, counts_only=counts_only, begun=begun
        )
        left, right = a.result(), b.result()
    for name in src_tables:
        if left[name] != right[name]:
            n1, n2 = left[name][0], right[name][0]
            what = f"{n1} rows on the source, {n2} on the target" if n1 != n2 else "checksums"
            raise PPPError(f"verification failed: table {schema}.{name} differs ({what})")
    return {name: left[name][0] for name in src_tables}


# -- the source copy after the switch -----------------------------------------------------------
def moved_name(schema: str, stamp: str) -> str:
    """``ppp_moved_<schema>_<stamp>``, the schema part trimmed to fit 63 bytes."""
    room = 63 - len(MOVED_PREFIX) - 1 - len(stamp)
    return f"{MOVED_PREFIX}{schema[:room]}_{stamp}"


def retire_source(cur: Any, schema: str, new_name: str, target: str, app_role: str) -> bool:
    """Rename the source schema, mark whose copy it is, and close it to the app role.

    False when it was done already (the schema is gone under its own name).
    """
    if not schema_exists(cur, schema):
        return False
    q, qn, app = quote_ident(schema), quote_ident(new_name), quote_ident(app_role)
    comment = f"{MOVED_COMMENT}:{schema}:{target}"
    sql = (
        "BEGIN;\n"
        f"ALTER SCHEMA {q} RENAME TO {qn};\n"
        f"COMMENT ON SCHEMA {qn} IS {quote_literal(comment)};\n"
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {qn} FROM {app};\n"
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {qn} FROM {app};\n"
        f"REVOKE ALL ON SCHEMA {qn} FROM {app};\n"
    )
    cur.execute("SELECT to_regclass('ppp.tenant_versions') IS NOT NULL")
    if cur.fetchone()[0]:
        sql += f"DELETE FROM ppp.tenant_versions WHERE schema_name = {quote_literal(schema)};\n"
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{q}.{VERSION_TABLE}",))
    if cur.fetchone()[0]:
        sql += f"DROP TRIGGER IF EXISTS ppp_track_version ON {qn}.{VERSION_TABLE};\n"
    cur.execute(sql + "COMMIT;")
    return True


def moved_copies(cur: Any, schema: str) -> list[str]:
    """The moved copies of ``schema`` on the shard behind ``cur`` (by their comment)."""
    cur.execute(
        "SELECT n.nspname FROM pg_namespace n WHERE n.nspname LIKE %s "
        "AND split_part(obj_description(n.oid, 'pg_namespace'), ':', 1) = %s "
        "AND split_part(obj_description(n.oid, 'pg_namespace'), ':', 2) = %s "
        'ORDER BY n.nspname COLLATE "C"',
        (MOVED_PREFIX.replace("_", "\\_") + "%", MOVED_COMMENT, schema),
    )
    return [r[0] for r in cur.fetchall()]
