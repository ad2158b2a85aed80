"""Strict isolation: a login role per tenant, so a tenant's session cannot reach another tenant.

With the default router every tenant of a shard shares the shard's app role, which can
read and write every tenant schema there: isolation rests on the ``search_path`` the
router sets, and any SQL that names another schema crosses it. ``SET ROLE`` to a
per-tenant role would not fix that (the session could ``RESET ROLE`` or ``SET ROLE`` to
any other granted role), so in strict mode the router logs in as the tenant's own role:

- ``{db}_t_{tenant}`` (a hash when that is longer than 63 bytes), LOGIN, no other role
  granted to it and not granted to any role; CONNECT on the shard's database only; USAGE on
  the tenant's schema, DML on its tables, sequences and functions, the same for tables
  the admin role creates there later (default privileges), and USAGE + SELECT on the
  shared schemas given; ``search_path`` = the tenant for that role in that database.
- Its password is derived from the shard's app password (HMAC-SHA-256 over the role name):
  nothing more to store, and after rotating the app password :func:`enable` must run again.

What this enforces: a session of tenant A cannot read, write or ``SET ROLE`` into tenant
B's objects, whatever SQL it sends. What it does not: anyone holding the application's
settings can derive every tenant's password (the application serves all tenants); catalog
metadata (other schemas' and tables' names) stays visible, as to every PostgreSQL role;
roles are per server, not per database (hence the database name in the role's name). A
move keeps it: ``ppp tenant move`` creates the role on the target with the same grants
(:func:`existing_role`, :func:`shared_schemas_of`) before the switch, and drops it on the
source with the source copy. Each tenant gets its own pool: a shard with N tenants in use
may hold N x pool_size connections (max_connections).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Any

from ppp_env import db
from ppp_env.errors import PPPError
from ppp_env.identifiers import MAX_IDENTIFIER_BYTES, quote_ident, quote_literal, validate_tenant
from ppp_env.settings import Instance, Settings
from ppp_env.veneer.catalog import admin_connection, lookup_tenant


def role_name(inst: Instance, tenant: str) -> str:
    """The tenant's login role on ``inst``'s server."""
    name = f"{inst.dbname}_t_{tenant}"
    if len(name.encode()) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.sha256(f"{inst.dbname}/{tenant}".encode()).hexdigest()[:32]
    return f"ppp_t_{digest}"


def role_password(inst: Instance, role: str) -> str:
    """The tenant role's password, derived from the shard's app password."""
    key = inst.app_password.encode()
    return hmac.new(key, f"ppp-tenant-role:{role}".encode(), hashlib.sha256).hexdigest()


def existing_role(cur: Any, inst: Instance, tenant: str) -> str | None:
    """The tenant's login role on ``inst``'s server if it exists (strict isolation is on)."""
    role = role_name(inst, tenant)
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
    return role if cur.fetchone() is not None else None


def shared_schemas_of(cur: Any, role: str, tenant: str) -> list[str]:
    """The schemas besides the tenant's that :func:`enable` granted ``role`` (USAGE), in the
    database of ``cur``: what to grant it again elsewhere."""
    cur.execute(
        "SELECT n.nspname FROM pg_namespace n, aclexplode(n.nspacl) a "
        "WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s) "
        "AND a.privilege_type = 'USAGE' AND n.nspname <> %s ORDER BY 1",
        (role, tenant),
    )
    return [r[0] for r in cur.fetchall()]


def _shard_of(settings: Settings, tenant: str, shard: str | None) -> Instance:
    validate_tenant(tenant)
    if shard is None:
        with admin_connection(settings) as conn:
            found = lookup_tenant(conn, tenant)
        if found is None:
            raise PPPError(f"unknown tenant {tenant!r}: not in the catalog")
        shard = found.shard
    return settings.shard(shard)


def _superuser(settings: Settings, inst: Instance) -> Any:
    if inst.superuser_password is None:
        raise PPPError(
            f"{inst.env_prefix}SUPERUSER_PASSWORD is not set: creating a tenant role on "
            f"{inst.label} needs a superuser connection ({inst.masked_url('superuser')})"
        )
    return db.connection(
        inst,
        "superuser",
        dbname=inst.dbname,
        autocommit=False,
        connect_timeout=settings.connect_timeout,
    )


def enable(
    settings: Settings,
    tenant: str,
    *,
    shared_schemas: Iterable[str] = (),
    shard: str | None = None,
) -> str:
    """Create (or bring up to date) the tenant's login role on its shard; return its name.

    The shard is the catalog's unless given. Runs as the shard's superuser, in one
    transaction; safe to run again (e.g. after a migration added tables: default privileges
    cover those, or after rotating the app password).
    """
    from ppp_env.servers.provision import encrypt_password

    inst = _shard_of(settings, tenant, shard)
    shared = [validate_tenant(s) if s != "public" else s for s in shared_schemas]
    role = role_name(inst, tenant)
    r, t, a, d = quote_ident(role), quote_ident(tenant), quote_ident(inst.admin_role), inst.dbname
    with _superuser(settings, inst) as conn, conn.cursor() as cur:
        verifier = quote_literal(encrypt_password(cur, role, role_password(inst, role)))
        cur.execute("SET LOCAL log_statement = 'none'")  # the verifier stays out of the logs
        cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (tenant,))
        if cur.fetchone() is None:
            raise PPPError(
                f"tenant {tenant!r} has no schema on shard {inst.name!r} yet: run "
                "`ppp migrate` first"
            )
        verb = "ALTER" if existing_role(cur, inst, tenant) else "CREATE"
        cur.execute(
            f"{verb} ROLE {r} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT "
            f"NOREPLICATION NOBYPASSRLS PASSWORD {verifier}"
        )
        cur.execute(f"GRANT CONNECT ON DATABASE {quote_ident(d)} TO {r}")
        cur.execute(f"ALTER ROLE {r} IN DATABASE {quote_ident(d)} SET search_path = {t}")
        cur.execute(f"GRANT USAGE ON SCHEMA {t} TO {r}")
        cur.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {t} TO {r}")
        cur.execute(f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {t} TO {r}")
        cur.execute(f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {t} TO {r}")
        for privileges, kind in (
            ("SELECT, INSERT, UPDATE, DELETE", "TABLES"),
            ("USAGE, SELECT, UPDATE", "SEQUENCES"),
            ("EXECUTE", "FUNCTIONS"),
        ):
            cur.execute(
                f"ALTER DEFAULT PRIVILEGES FOR ROLE {a} IN SCHEMA {t} GRANT {privileges} "
                f"ON {kind} TO {r}"
            )
        for s in shared:
            cur.execute(f"GRANT USAGE ON SCHEMA {quote_ident(s)} TO {r}")
            cur.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {quote_ident(s)} TO {r}")
        conn.commit()
    return role


def disable(settings: Settings, tenant: str, *, shard: str | None = None) -> bool:
    """Drop the tenant's login role on its shard (or ``shard``); True if it existed.

    Its sessions are ended first; the tenant's data stays.
    """
    inst = _shard_of(settings, tenant, shard)
    role = role_name(inst, tenant)
    with _superuser(settings, inst) as conn, conn.cursor() as cur:
        if existing_role(cur, inst, tenant) is None:
            return False
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )
        cur.execute(f"DROP OWNED BY {quote_ident(role)}")
        cur.execute(f"DROP ROLE {quote_ident(role)}")
        conn.commit()
    return True
