"""Provisioning (``ppp init`` / ``ppp teardown``): databases, roles, grants, the FDW extension.

In every instance, as its superuser: the roles ``{db}_admin`` (owns the database and every
schema PPP creates, runs migrations) and ``{db}_app`` (LOGIN, DML only), the database owned
by ``{db}_admin``, CONNECT only for those two, CREATE on schema public revoked from PUBLIC,
and default privileges so that whatever ``{db}_admin`` creates later is usable by
``{db}_app`` at once. On the veneer also the postgres_fdw extension with USAGE for
``veneer_admin``, so the veneer's migrations never need a superuser. On a shard of
PostgreSQL 16 or later also what lets ``{db}_admin`` move tenants online without a superuser
(REPLICATION, pg_create_subscription, SET on the statement-logging settings); ``ppp
teardown`` takes it back.

Passwords never appear in SQL text: PPP sends SCRAM-SHA-256 verifiers computed here, in a
session with statement logging off, and compares verifiers to tell whether a role's
password already matches its setting.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.extensions

from ppp_env.db import connection, first_line
from ppp_env.errors import PPPError
from ppp_env.identifiers import quote_ident, quote_literal, validate_identifier
from ppp_env.settings import MAX_DBNAME_BYTES, Instance, Settings

SCRAM_ITERATIONS = 4096


def encrypt_password(scope: Any, role: str, password: str) -> str:
    """The SCRAM-SHA-256 verifier of ``password``, computed by libpq (psycopg2's
    ``encrypt_password``) on this side of ``scope``, a connection or cursor: only the
    verifier is sent to the server."""
    return str(psycopg2.extensions.encrypt_password(password, role, scope, "scram-sha-256"))


def scram_verifier(
    password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677), with a
    given salt. libpq makes verifiers only with a random salt and through a connection, so
    this serves where neither fits: checking a stored verifier (:func:`password_matches`)
    and setting a new local server's first password, before any connection can be made."""
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )


def password_matches(stored: str | None, password: str) -> bool:
    """Whether a stored verifier (``pg_authid.rolpassword``) is the one of ``password``."""
    if not stored or not stored.startswith("SCRAM-SHA-256$"):
        return False
    try:
        head, _keys = stored[len("SCRAM-SHA-256$") :].split("$", 1)
        iterations, salt = head.split(":", 1)
        expected = scram_verifier(password, base64.b64decode(salt), int(iterations))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(expected, stored)


@dataclass
class Report:
    """What one instance's provisioning did: the list of changes, empty when none."""

    instance: str
    changes: list[str] = field(default_factory=list)


def _superuser(inst: Instance, settings: Settings, dbname: str | None = None) -> Any:
    if inst.superuser_password is None:
        raise PPPError(
            f"{inst.env_prefix}SUPERUSER_PASSWORD is not set: provisioning {inst.label} needs "
            f"a superuser connection ({inst.masked_url('superuser')})"
        )
    return connection(
        inst, "superuser", dbname=dbname, autocommit=True, connect_timeout=settings.connect_timeout
    )


def _quiet(cur: Any) -> None:
    """No statement logging in this session: role passwords (even hashed) stay out of logs."""
    cur.execute("SET log_statement = 'none'")


def _ensure_role(cur: Any, role: str, password: str, report: Report) -> None:
    cur.execute("SELECT rolpassword, rolcanlogin FROM pg_authid WHERE rolname = %s", (role,))
    row = cur.fetchone()
    verifier = quote_literal(encrypt_password(cur, role, password))
    if row is None:
        cur.execute(f"CREATE ROLE {quote_ident(role)} LOGIN PASSWORD {verifier}")
        report.changes.append(f"created role {role}")
        return
    if not row[1]:
        cur.execute(f"ALTER ROLE {quote_ident(role)} LOGIN")
        report.changes.append(f"allowed role {role} to log in")
    if not password_matches(row[0], password):
        cur.execute(f"ALTER ROLE {quote_ident(role)} PASSWORD {verifier}")
        report.changes.append(f"set the password of role {role}")


def _has_privilege(cur: Any, sql: str, *args: Any) -> bool:
    cur.execute(sql, args)
    return bool(cur.fetchone()[0])


def check_instance(inst: Instance) -> None:
    """Refuse what provisioning cannot do safely, before anything is created."""
    where = f"{inst.env_prefix}DB" if inst.env_prefix else "database name"
    try:
        validate_identifier(inst.dbname, "database name", MAX_DBNAME_BYTES)
    except PPPError as exc:
        raise PPPError(f"{where}: {exc}") from None
    if inst.superuser_password is None:
        raise PPPError(
            f"{inst.env_prefix}SUPERUSER_PASSWORD is not set: provisioning {inst.label} needs "
            f"a superuser connection ({inst.masked_url('superuser')})"
        )


@contextmanager
def _reported(inst: Instance, action: str) -> Iterator[None]:
    """Turn a server's refusal (permission, dependent objects...) into a PPPError."""
    try:
        yield
    except psycopg2.Error as exc:
        raise PPPError(f"{action} {inst.label} failed: {first_line(exc)}") from None


def provision_instance(inst: Instance, settings: Settings) -> Report:
    """Bring one instance to the provisioned state; report what changed."""
    check_instance(inst)
    with _reported(inst, "provisioning"):
        return _provision_instance(inst, settings)


def _provision_instance(inst: Instance, settings: Settings) -> Report:
    report = Report(inst.name)
    with _superuser(inst, settings) as conn, conn.cursor() as cur:
        _quiet(cur)
        _ensure_role(cur, inst.admin_role, inst.admin_password, report)
        _ensure_role(cur, inst.app_role, inst.app_password, report)
        _ensure_database(cur, inst.dbname, inst.admin_role, report)
    with _superuser(inst, settings, dbname=inst.dbname) as conn, conn.cursor() as cur:
        _quiet(cur)
        _database_grants(cur, inst, report)
        _default_privileges(cur, inst.admin_role, inst.app_role, report)
        if inst.kind == "veneer":
            _foreign_data_wrapper(cur, inst.admin_role, report)
            _remote_nextval(cur, inst.admin_role, inst.app_role, report)
        else:
            _replication_grants(cur, inst.admin_role, inst.dbname, report)
    return report


def _ensure_database(cur: Any, db: str, admin: str, report: Report) -> None:
    """The database, owned by ``{db}_admin``."""
    cur.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (db,))
    row = cur.fetchone()
    if row is None:
        cur.execute(f"CREATE DATABASE {quote_ident(db)} OWNER {quote_ident(admin)}")
        report.changes.append(f"created database {db}")
    elif row[0] != admin:
        cur.execute(f"ALTER DATABASE {quote_ident(db)} OWNER TO {quote_ident(admin)}")
        report.changes.append(f"made {admin} the owner of database {db}")


def _database_grants(cur: Any, inst: Instance, report: Report) -> None:
    """CONNECT for the app role only, no CREATE on schema public, and what lets the admin
    name the sessions that block a migration."""
    admin, app, db = inst.admin_role, inst.app_role, inst.dbname
    qa, qp, qd = quote_ident(admin), quote_ident(app), quote_ident(db)
    steps: list[tuple[Callable[[], bool], str, str]] = [
        (
            lambda: _has_privilege(
                cur, "SELECT has_database_privilege('public', %s, 'CONNECT')", db
            ),
            f"REVOKE ALL ON DATABASE {qd} FROM PUBLIC",
            f"revoked CONNECT and TEMP on database {db} from PUBLIC",
        ),
        (
            lambda: (
                not _has_privilege(cur, "SELECT has_database_privilege(%s, %s, 'CONNECT')", app, db)
            ),
            f"GRANT CONNECT ON DATABASE {qd} TO {qp}",
            f"granted CONNECT on database {db} to {app}",
        ),
        (
            lambda: _has_privilege(
                cur, "SELECT has_schema_privilege('public', 'public', 'CREATE')"
            ),
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
            "revoked CREATE on schema public from PUBLIC",
        ),
        (
            # A migration that waits for a lock names who holds it: the admin role must see
            # other roles' sessions in pg_stat_activity.
            lambda: (
                not _has_privilege(
                    cur, "SELECT pg_has_role(%s, 'pg_read_all_stats', 'MEMBER')", admin
                )
            ),
            f"GRANT pg_read_all_stats TO {qa}",
            f"granted pg_read_all_stats to {admin} (to name sessions that block a migration)",
        ),
    ]
    for needed, sql, change in steps:
        if needed():
            cur.execute(sql)
            report.changes.append(change)


#: (pg_default_acl.defaclobjtype, privileges, kind): what the app role gets on whatever the
#: admin role creates later.
_DEFAULTS = (
    ("r", "SELECT, INSERT, UPDATE, DELETE", "TABLES"),
    ("S", "USAGE, SELECT, UPDATE", "SEQUENCES"),
    ("f", "EXECUTE", "FUNCTIONS"),
    ("n", "USAGE", "SCHEMAS"),
)


def _default_privileges(cur: Any, admin: str, app: str, report: Report) -> None:
    """Default privileges: the app role can use what the admin role creates, at once."""
    cur.execute(
        "SELECT DISTINCT d.defaclobjtype FROM pg_default_acl d, aclexplode(d.defaclacl) x "
        "WHERE d.defaclrole = %s::regrole AND d.defaclnamespace = 0 "
        "AND x.grantee = %s::regrole",
        (admin, app),
    )
    granted = {r[0] for r in cur.fetchall()}
    for objtype, privileges, kind in _DEFAULTS:
        if objtype not in granted:
            cur.execute(
                f"ALTER DEFAULT PRIVILEGES FOR ROLE {quote_ident(admin)} "
                f"GRANT {privileges} ON {kind} TO {quote_ident(app)}"
            )
            report.changes.append(f"default privileges: {app} gets {privileges} on {kind}")


def _foreign_data_wrapper(cur: Any, admin: str, report: Report) -> None:
    """postgres_fdw in the veneer, usable by its admin role (no superuser for migrations)."""
    cur.execute("SELECT 1 FROM pg_extension WHERE extname = 'postgres_fdw'")
    if cur.fetchone() is None:
        cur.execute("CREATE EXTENSION postgres_fdw")
        report.changes.append("created extension postgres_fdw")
    if not _has_privilege(
        cur, "SELECT has_foreign_data_wrapper_privilege(%s, 'postgres_fdw', 'USAGE')", admin
    ):
        cur.execute(f"GRANT USAGE ON FOREIGN DATA WRAPPER postgres_fdw TO {quote_ident(admin)}")
        report.changes.append(f"granted USAGE on postgres_fdw to {admin}")


#: From PostgreSQL 16 a shard's ``{db}_admin`` may run an online tenant move itself.
REPLICATION_GRANTS_FROM = 160000
#: What the subscription's creator turns off in its session: no log line holds the password
#: of its connection string.
_QUIET = ("log_statement", "log_min_error_statement")


def _replication_grants(cur: Any, admin: str, db: str, report: Report) -> None:
    """On a shard of PostgreSQL 16 or later: what lets ``{db}_admin`` move tenants online
    without a superuser (``ppp_env.lifecycle.move``). REPLICATION: the slot, and the
    subscription's connection to this shard as the source; pg_create_subscription, CREATE on
    the database and SET on the logging settings: the subscription on this shard as the
    target. Nothing on older servers (their online moves use the superuser)."""
    cur.execute("SELECT current_setting('server_version_num')::int")
    if cur.fetchone()[0] < REPLICATION_GRANTS_FROM:
        return
    qa = quote_ident(admin)
    steps = [
        (
            "SELECT NOT rolreplication FROM pg_roles WHERE rolname = %s",
            (admin,),
            f"ALTER ROLE {qa} REPLICATION",
            f"gave {admin} REPLICATION (online tenant moves from this shard)",
        ),
        (
            "SELECT NOT pg_has_role(%s, 'pg_create_subscription', 'MEMBER')",
            (admin,),
            f"GRANT pg_create_subscription TO {qa}",
            f"granted pg_create_subscription to {admin} (online tenant moves to this shard)",
        ),
        (
            "SELECT NOT has_database_privilege(%s, %s, 'CREATE')",
            (admin, db),
            f"GRANT CREATE ON DATABASE {quote_ident(db)} TO {qa}",
            f"granted CREATE on database {db} to {admin}",
        ),
        (
            "SELECT NOT (has_parameter_privilege(%s, %s, 'SET') "
            "AND has_parameter_privilege(%s, %s, 'SET'))",
            (admin, _QUIET[0], admin, _QUIET[1]),
            f"GRANT SET ON PARAMETER {', '.join(_QUIET)} TO {qa}",
            f"granted SET on {' and '.join(_QUIET)} to {admin} (a subscription's password "
            "stays out of the server log)",
        ),
    ]
    for query, args, sql, change in steps:
        if _has_privilege(cur, query, *args):
            cur.execute(sql)
            report.changes.append(change)


def _revoke_replication_grants(cur: Any, admin: str) -> None:
    """Take back what :func:`_replication_grants` gave, before the role is dropped (so that
    nothing of it stays should the drop fail)."""
    cur.execute(
        "SELECT current_setting('server_version_num')::int >= %s AND EXISTS "
        "(SELECT 1 FROM pg_roles WHERE rolname = %s)",
        (REPLICATION_GRANTS_FROM, admin),
    )
    if not cur.fetchone()[0]:
        return
    qa = quote_ident(admin)
    cur.execute(f"ALTER ROLE {qa} NOREPLICATION")
    cur.execute(f"REVOKE pg_create_subscription FROM {qa}")
    cur.execute(f"REVOKE SET ON PARAMETER {', '.join(_QUIET)} FROM {qa}")


#: The veneer's function giving a shard sequence's next value (a foreign table column's
#: default for a serial or identity column of the shard), through dblink: schema
#: ``ppp_remote``, owned by ``{db}_admin``; dblink's own functions are closed to PUBLIC (they
#: would let the app role open connections anywhere), only ``nextval`` is granted to the app.
_NEXTVAL = """
CREATE OR REPLACE FUNCTION ppp_remote.nextval(server text, seq text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
    link text := 'ppp_nextval_' || server;
    query text := format('SELECT pg_catalog.nextval(%L::pg_catalog.regclass)', seq);
    value bigint;
BEGIN
    -- Only PPP's foreign servers: dblink would take any other text for a connection string.
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_foreign_server s
                   JOIN pg_catalog.pg_foreign_data_wrapper w ON w.oid = s.srvfdw
                   WHERE s.srvname = server AND w.fdwname = 'postgres_fdw') THEN
        RAISE EXCEPTION 'ppp_remote.nextval: % is not a postgres_fdw foreign server', server;
    END IF;
    IF link = ANY (coalesce(ppp_remote.dblink_get_connections(), '{}')) THEN
        BEGIN
            SELECT x INTO value FROM ppp_remote.dblink(link, query) AS t(x bigint);
            RETURN value;
        EXCEPTION WHEN others THEN  -- a connection gone stale: connect again, once
            PERFORM ppp_remote.dblink_disconnect(link);
        END;
    END IF;
    PERFORM ppp_remote.dblink_connect(link, server);
    SELECT x INTO value FROM ppp_remote.dblink(link, query) AS t(x bigint);
    RETURN value;
END
$f$
"""


def _remote_nextval(cur: Any, admin: str, app: str, report: Report) -> None:
    """dblink in schema ``ppp_remote`` and ``ppp_remote.nextval(server, sequence)``."""
    qa, qp = quote_ident(admin), quote_ident(app)
    body = _NEXTVAL.split("$f$")[1]
    cur.execute(
        "SELECT p.prosrc FROM pg_proc p "
        "WHERE p.oid = to_regprocedure('ppp_remote.nextval(text,text)')"
    )
    found = cur.fetchone()
    if found is not None and found[0] == body:
        return
    cur.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'dblink'")
    if cur.fetchone() is None:  # no contrib: inserts through the veneer give sequence values
        return
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS ppp_remote AUTHORIZATION {qa}")
    cur.execute("CREATE EXTENSION IF NOT EXISTS dblink SCHEMA ppp_remote")
    cur.execute("REVOKE ALL ON ALL FUNCTIONS IN SCHEMA ppp_remote FROM PUBLIC")
    cur.execute(f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA ppp_remote TO {qa}")
    cur.execute(_NEXTVAL)
    cur.execute(f"ALTER FUNCTION ppp_remote.nextval(text, text) OWNER TO {qa}")
    cur.execute("REVOKE ALL ON FUNCTION ppp_remote.nextval(text, text) FROM PUBLIC")
    cur.execute(f"GRANT USAGE ON SCHEMA ppp_remote TO {qp}")
    cur.execute(f"GRANT EXECUTE ON FUNCTION ppp_remote.nextval(text, text) TO {qp}")
    report.changes.append(
        f"{'created' if found is None else 'updated'} ppp_remote.nextval (dblink) for remote "
        "sequence defaults"
    )


def teardown_instance(inst: Instance, settings: Settings) -> Report:
    """Remove what :func:`provision_instance` made: the database and both roles."""
    check_instance(inst)
    with _reported(inst, "tearing down"):
        return _teardown_instance(inst, settings)


def _teardown_instance(inst: Instance, settings: Settings) -> Report:
    report = Report(inst.name)
    with _superuser(inst, settings) as conn, conn.cursor() as cur:
        _quiet(cur)
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (inst.dbname,))
        if cur.fetchone() is not None:
            cur.execute(f"DROP DATABASE {quote_ident(inst.dbname)} WITH (FORCE)")
            report.changes.append(f"dropped database {inst.dbname}")
        if inst.kind == "shard":
            _revoke_replication_grants(cur, inst.admin_role)
        for role in (inst.app_role, inst.admin_role):
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            if cur.fetchone() is not None:
                # Privileges the role holds in the maintenance database (if any) go first.
                cur.execute(f"DROP OWNED BY {quote_ident(role)}")
                cur.execute(f"DROP ROLE {quote_ident(role)}")
                report.changes.append(f"dropped role {role}")
    return report


def provision(settings: Settings) -> list[Report]:
    """Provision every instance (veneer first); every instance is checked before any change."""
    for inst in settings.instances:
        check_instance(inst)
    return [provision_instance(inst, settings) for inst in settings.instances]


def teardown(settings: Settings) -> list[Report]:
    """Tear every instance down; every instance is checked before any change."""
    for inst in settings.instances:
        check_instance(inst)
    return [teardown_instance(inst, settings) for inst in settings.instances]
