"""Where every tenant of a shard stands, read in one or two round trips per shard.

The tenant migration runner, ``alembic current``, ``ppp status`` and the veneer refresh all
need the same fact: for each tenant schema on a shard, does the schema exist and which
revision(s) its ``alembic_version`` table holds.

Reading thousands of version tables costs about 0.3 ms each on the server (a UNION ALL
over 3,333 tables took 1.0-1.4 s), so each shard keeps an index of them: the table
``ppp.tenant_versions``, maintained by a statement trigger on every tenant's
``alembic_version`` (whatever changes that table, the index follows in the same
transaction). The state query reads the index for tenants whose trigger exists and falls
back to reading the version tables themselves for the others.

Each row also follows what the tenant's version changes changed, for the veneer refresh:
``changed`` (oids), ``changed_since`` (the heads when that set started), ``changed_xact``. A
deferred constraint trigger runs once per transaction that changes the heads, at its commit,
and adds the tenant's relations the transaction holds an AccessExclusiveLock on (every DDL
that changes what a foreign table is made of takes one: CREATE, ALTER, RENAME, DROP, CREATE
OR REPLACE VIEW) and the locked relations that no longer exist (dropped). NULL means unknown
(a new row, or a revision that ran outside a transaction): the next refresh compares the
tenant's every table, then starts the set anew (``'{}'`` since the heads it wired).

The same schema holds ``ppp.tenant_outside``: a row per tenant that is inside a revision
running outside a transaction (``autocommit_block``), see :mod:`ppp_env.outside_record`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ppp_env.identifiers import quote_ident, quote_literal

VERSION_TABLE = "alembic_version"
TRACK_TRIGGER = "ppp_track_version"
#: The deferred trigger of ``ppp.tenant_versions`` that notes, at the commit of a version
#: change, which of the tenant's relations the transaction changed (see :data:`SETUP_SQL`).
FOLLOW_TRIGGER = "ppp_follow_changes"
_CHUNK = 2000
#: Serialises the one-time creation of the index objects on a shard.
_SETUP_LOCK = (0x505050, 0)

SETUP_SQL = f"""
SELECT pg_advisory_xact_lock({_SETUP_LOCK[0]}, {_SETUP_LOCK[1]});
CREATE SCHEMA IF NOT EXISTS ppp;
CREATE TABLE IF NOT EXISTS ppp.tenant_versions (
    schema_name text PRIMARY KEY,
    heads text[] NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS ppp.tenant_outside (
    schema_name text PRIMARY KEY,
    revision text NOT NULL,
    label text NOT NULL,
    heads text[] NOT NULL,
    heads_after text[] NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    pid integer NOT NULL,
    backend_start timestamptz,
    application_name text NOT NULL DEFAULT '',
    indexes text[] NOT NULL DEFAULT '{{}}'
);
ALTER TABLE ppp.tenant_versions
    ADD COLUMN IF NOT EXISTS changed oid[],
    ADD COLUMN IF NOT EXISTS changed_since text[],
    ADD COLUMN IF NOT EXISTS changed_xact xid8;
CREATE OR REPLACE FUNCTION ppp.follow_changes() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $ppp$
DECLARE
    known oid[];
    xact xid8;
BEGIN
    SELECT v.changed, v.changed_xact INTO known, xact
    FROM ppp.tenant_versions v WHERE v.schema_name = NEW.schema_name;
    IF known IS NULL OR xact IS NOT DISTINCT FROM pg_current_xact_id() THEN
        RETURN NULL;
    END IF;
    UPDATE ppp.tenant_versions v SET changed_xact = pg_current_xact_id(), changed = ARRAY(
        SELECT DISTINCT o FROM unnest(known || ARRAY(
            SELECT l.relation FROM pg_locks l LEFT JOIN pg_class c ON c.oid = l.relation
            WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted
              AND l.mode = 'AccessExclusiveLock'
              AND l.database = (SELECT d.oid FROM pg_database d
                                WHERE d.datname = current_database())
              AND (c.oid IS NULL OR (c.relkind IN ('r', 'v', 'f', 'm', 'p')
                   AND c.relnamespace = to_regnamespace(quote_ident(NEW.schema_name))))
        )) o ORDER BY o)
    WHERE v.schema_name = NEW.schema_name;
    RETURN NULL;
END
$ppp$;
CREATE OR REPLACE FUNCTION ppp.forget_changes() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $ppp$
BEGIN
    UPDATE ppp.tenant_versions SET changed = NULL
    WHERE schema_name = NEW.schema_name AND changed IS NOT NULL;
    RETURN NULL;
END
$ppp$;
DROP TRIGGER IF EXISTS {FOLLOW_TRIGGER} ON ppp.tenant_versions;
CREATE CONSTRAINT TRIGGER {FOLLOW_TRIGGER} AFTER INSERT OR UPDATE OF heads
    ON ppp.tenant_versions DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ppp.follow_changes();
DROP TRIGGER IF EXISTS ppp_outside_unknown ON ppp.tenant_outside;
CREATE TRIGGER ppp_outside_unknown AFTER INSERT OR UPDATE ON ppp.tenant_outside
    FOR EACH ROW EXECUTE FUNCTION ppp.forget_changes();
CREATE OR REPLACE FUNCTION ppp.track_version() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $ppp$
BEGIN
    EXECUTE format(
        'INSERT INTO ppp.tenant_versions AS v (schema_name, heads, updated_at) '
        'SELECT %L, coalesce(array_agg(version_num ORDER BY version_num), ''{{}}''), now() '
        'FROM %I.%I ON CONFLICT (schema_name) DO UPDATE '
        'SET heads = excluded.heads, updated_at = excluded.updated_at',
        TG_TABLE_SCHEMA, TG_TABLE_SCHEMA, TG_TABLE_NAME);
    RETURN NULL;
END
$ppp$;
"""


def ensure_index(cursor: Any, app_role: str) -> None:
    """Create the shard's version index and outside-transaction record (schema ppp) once;
    one cheap query when they exist. An older shape (no change tracking) is brought up to
    date, idempotently, under the same advisory lock.

    The app role gets nothing in schema ppp: default privileges would otherwise let it
    edit the index that decides which tenants are already migrated.
    """
    cursor.execute(
        "SELECT to_regprocedure('ppp.track_version()') IS NOT NULL "
        "AND to_regclass('ppp.tenant_outside') IS NOT NULL AND EXISTS (SELECT 1 FROM pg_trigger "
        "WHERE tgrelid = to_regclass('ppp.tenant_versions') AND tgname = %s)",
        (FOLLOW_TRIGGER,),
    )
    if cursor.fetchone()[0]:
        return
    app = quote_ident(app_role)
    cursor.execute(
        "BEGIN;"
        + SETUP_SQL
        + f"REVOKE ALL ON SCHEMA ppp FROM {app};\n"
        + f"REVOKE ALL ON ppp.tenant_versions FROM {app};\n"
        + f"REVOKE ALL ON ppp.tenant_outside FROM {app};\n"
        + "COMMIT;"
    )


def track_sql(schema: str, app_role: str | None = None) -> str:
    """SQL that attaches the index trigger to a tenant's version table and syncs its row.

    Also takes the app role's privileges on the version table away: default privileges
    give it DML on every table, and nothing but migrations should touch that one.
    """
    table = f"{quote_ident(schema)}.{VERSION_TABLE}"
    sql = (
        f"DROP TRIGGER IF EXISTS {TRACK_TRIGGER} ON {table};\n"
        f"CREATE TRIGGER {TRACK_TRIGGER} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE "
        f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION ppp.track_version();\n"
        f"INSERT INTO ppp.tenant_versions (schema_name, heads) SELECT {quote_literal(schema)}, "
        f"coalesce(array_agg(version_num ORDER BY version_num), '{{}}') FROM {table} "
        "ON CONFLICT (schema_name) DO UPDATE SET heads = excluded.heads, updated_at = now();\n"
    )
    if app_role:
        sql += f"REVOKE ALL ON {table} FROM {quote_ident(app_role)};\n"
    return sql


@dataclass(frozen=True)
class TenantState:
    """A tenant schema on its shard: whether it exists, and its Alembic heads (sorted)."""

    schema: str
    exists: bool
    heads: tuple[str, ...] = ()
    #: Whether its version table carries the index trigger (so the index row is exact).
    tracked: bool = False
    has_version_table: bool = False

    @property
    def revision(self) -> str | None:
        return " ".join(self.heads) if self.heads else None


def read_states(cursor: Any, schemas: Sequence[str]) -> dict[str, TenantState]:
    """States of ``schemas`` on the shard behind a DB-API ``cursor`` (psycopg2)."""
    if not schemas:
        return {}
    cursor.execute("SELECT to_regclass('ppp.tenant_versions') IS NOT NULL")
    indexed = bool(cursor.fetchone()[0])
    index_join = "LEFT JOIN ppp.tenant_versions v ON v.schema_name = n.nspname" if indexed else ""
    cursor.execute(
        "SELECT n.nspname, c.oid IS NOT NULL, t.oid IS NOT NULL, "
        + ("v.heads " if indexed else "NULL::text[] ")
        + "FROM pg_namespace n "
        "LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = %s AND c.relkind = 'r' "
        "LEFT JOIN pg_trigger t ON t.tgrelid = c.oid AND t.tgname = %s "
        f"{index_join} WHERE n.nspname = ANY(%s)",
        (VERSION_TABLE, TRACK_TRIGGER, list(schemas)),
    )
    states: dict[str, TenantState] = {}
    unread: list[str] = []
    sort: dict[tuple[str, ...], tuple[str, ...]] = {}  # the same heads: one sorted tuple
    for schema, has_table, has_trigger, indexed_heads in cursor.fetchall():
        if has_table and has_trigger and indexed_heads is not None:
            key = tuple(indexed_heads)
            if key not in sort:
                sort[key] = tuple(sorted(key))
            states[schema] = TenantState(schema, True, sort[key], True, True)
        elif has_table:
            unread.append(schema)
        else:
            states[schema] = TenantState(schema, True)
    heads: dict[str, list[str]] = {s: [] for s in unread}
    for i in range(0, len(unread), _CHUNK):
        chunk = unread[i : i + _CHUNK]
        cursor.execute(
            " UNION ALL ".join(
                f"SELECT {quote_literal(s)}, version_num FROM {quote_ident(s)}.{VERSION_TABLE}"
                for s in chunk
            )
        )
        for schema, version in cursor.fetchall():
            heads[schema].append(version)
    for schema, versions in heads.items():
        states[schema] = TenantState(schema, True, tuple(sorted(versions)), False, True)
    return {s: states.get(s) or TenantState(s, False) for s in schemas}


def revision_heads(revision: str | None) -> tuple[str, ...]:
    """A revision as the sorted heads it names (None: no heads): the inverse of
    :attr:`TenantState.revision`."""
    return tuple(sorted(revision.split())) if revision else ()


def group_by_shard(tenants: Sequence[Any]) -> dict[str, list[str]]:
    """Catalog tenants (anything with ``.schema`` and ``.shard``) as shard -> schemas."""
    grouped: dict[str, list[str]] = {}
    for t in tenants:
        grouped.setdefault(t.shard, []).append(t.schema)
    return grouped


#: A fresh start of tenants' change tracking: nothing changed since the heads just wired,
#: only where the row is still as the refresh read it (a version change in between leaves
#: it, so the next refresh compares everything). A row a migration holds now is skipped, not
#: waited for: it is about to change.
_RESET_SQL = """
WITH w AS (
    SELECT * FROM unnest(%(schemas)s::text[], %(heads)s::text[], %(updated)s::timestamptz[],
                         %(xacts)s::text[]) AS w(schema_name, heads, updated_at, xact)
), still AS (
    SELECT v.schema_name FROM ppp.tenant_versions v JOIN w ON w.schema_name = v.schema_name
    WHERE v.heads = coalesce(string_to_array(nullif(w.heads, ''), ' '), '{}')
      AND v.updated_at = w.updated_at AND v.changed_xact IS NOT DISTINCT FROM w.xact::xid8
    FOR UPDATE OF v SKIP LOCKED
)
UPDATE ppp.tenant_versions v SET changed = '{}', changed_since = v.heads
FROM still WHERE v.schema_name = still.schema_name
"""


def reset_changes(cursor: Any, rows: Sequence[tuple[str, Sequence[str], Any, str | None]]) -> int:
    """Start the change tracking of tenants anew after the veneer wired them: ``rows`` of
    (schema, heads wired, ``updated_at`` and ``changed_xact`` as read before). One
    statement; returns how many rows it reset."""
    if not rows:
        return 0
    cursor.execute(
        _RESET_SQL,
        {
            "schemas": [r[0] for r in rows],
            "heads": [" ".join(r[1]) for r in rows],
            "updated": [r[2] for r in rows],
            "xacts": [r[3] for r in rows],
        },
    )
    return int(cursor.rowcount)
