"""The SQL a worker sends around a tenant's migration: its advisory lock, timeouts, the
re-read of its revision, the one-round-trip fast path, and who blocks it."""

from __future__ import annotations

from typing import Any

import psycopg2

from ppp_env.identifiers import quote_ident, quote_literal
from ppp_env.tenant_state import VERSION_TABLE, TenantState

#: First key of the per-tenant advisory lock (the second is hashtext(schema)).
LOCK_NAMESPACE = 0x505050  # "PPP"
#: SQLSTATE PPP raises when a tenant changed (or is locked) since its state was read.
CHANGED = "PPPA1"


def lock_key(tenant: str) -> str:
    return f"{LOCK_NAMESPACE}, hashtext({quote_literal(tenant)})"


def ms(seconds: float) -> str:
    """A timeout for SET: whole milliseconds, at least 1 unless ``seconds`` is 0 (no limit),
    so a short lock wait never turns into none."""
    return f"'{max(1, round(seconds * 1000)) if seconds > 0 else 0}ms'"


def timeouts_sql(lock_timeout: float, statement_timeout: float, scope: str = "LOCAL") -> str:
    """The bounds for the migration's own statements (after the advisory lock)."""
    sql = f"SET {scope} lock_timeout = {ms(lock_timeout)};\n"
    if statement_timeout:
        sql += f"SET {scope} statement_timeout = {ms(statement_timeout)};\n"
    return sql


def lock_sql(tenant: str, skip: bool, wait: float) -> str:
    """Take the tenant's advisory lock, waiting at most ``wait`` seconds (or not at all)."""
    q = quote_literal(tenant)
    if skip:
        take = (
            f"DO $ppp$BEGIN IF NOT pg_try_advisory_xact_lock({lock_key(tenant)}) "
            f"THEN RAISE EXCEPTION 'tenant % is being migrated by another run', {q} "
            "USING ERRCODE = '55P03'; END IF; END$ppp$;"
        )
    else:
        take = f"SELECT pg_advisory_xact_lock({lock_key(tenant)});"
    return f"SET LOCAL lock_timeout = {ms(wait)};\n{take}\n"


def versions_sql(tenant: str) -> str:
    """The tenant's heads as one space-separated value (NULL when none)."""
    return (
        "SELECT string_agg(version_num, ' ' ORDER BY version_num) "
        f"FROM {quote_ident(tenant)}.{VERSION_TABLE}"
    )


def heads_sql(tenant: str, heads: tuple[str, ...]) -> str:
    """Make ``heads`` the tenant's heads (its version table exists)."""
    table = f"{quote_ident(tenant)}.{VERSION_TABLE}"
    values = ", ".join(f"({quote_literal(h)})" for h in heads)
    insert = f"INSERT INTO {table} (version_num) VALUES {values};\n" if heads else ""
    return f"DELETE FROM {table};\n{insert}"


#: The NOTICE before the SQL of the n-th revision of a rendered segment (see last_marker).
_MARKER = "ppp: revision "


def step_marker(n: int) -> str:
    return f"DO $ppp$BEGIN RAISE NOTICE '{_MARKER}{n}'; END$ppp$;\n"


def last_marker(notices: list[str]) -> int | None:
    """The revision whose SQL was running when a segment failed: the last marker the server
    sent (None: none arrived, e.g. ``client_min_messages`` above NOTICE)."""
    for notice in reversed(notices):
        _, found, rest = notice.partition(_MARKER)
        if found and rest.strip().isdigit():
            return int(rest.strip())
    return None


def has_version_table_sql(tenant: str) -> str:
    qt = quote_ident(tenant)
    return f"SELECT to_regclass({quote_literal(qt + '.' + VERSION_TABLE)}) IS NOT NULL"


def prepare_sql(tenant: str, state: TenantState, lock: str, timeouts: str) -> str:
    """Lock the tenant, create its schema if missing, set search_path and the migration's own
    timeouts, re-read its revision: one round trip (after BEGIN)."""
    qt = quote_ident(tenant)
    sql = lock
    if not state.exists:
        sql += f"CREATE SCHEMA IF NOT EXISTS {qt};\n"
    sql += f"SET LOCAL search_path TO {qt};\n" + timeouts
    return sql + (versions_sql(tenant) if state.heads else has_version_table_sql(tenant))


def at_once_sql(tenant: str, state: TenantState, timeouts: str, body: str, track: str) -> str:
    """The whole migration of a tenant in one round trip: it fails with SQLSTATE
    :data:`CHANGED` when the tenant's lock is taken or its revision is not ``state``'s."""
    qt = quote_ident(tenant)
    if state.heads:
        expected = quote_literal(" ".join(state.heads))
        moved = (
            f"(SELECT string_agg(version_num, ' ' ORDER BY version_num COLLATE \"C\") "
            f"FROM {qt}.{VERSION_TABLE}) IS DISTINCT FROM {expected}"
        )
    else:
        moved = f"to_regclass({quote_literal(qt + '.' + VERSION_TABLE)}) IS NOT NULL"
    return (
        "BEGIN;\n"
        + timeouts
        + f"DO $ppp$BEGIN IF NOT pg_try_advisory_xact_lock({lock_key(tenant)}) OR {moved} THEN "
        f"RAISE EXCEPTION 'tenant changed or busy' USING ERRCODE = '{CHANGED}'; "
        "END IF; END$ppp$;\n"
        + ("" if state.exists else f"CREATE SCHEMA IF NOT EXISTS {qt};\n")
        + f"SET LOCAL search_path TO {qt};\n"
        + body
        + f"\n{track}COMMIT;"
    )


BLOCKER_SQL = """
SELECT a.pid, coalesce(nullif(a.application_name, ''), '?'), a.state,
       to_char(a.xact_start, 'HH24:MI:SS'), to_char(a.query_start, 'HH24:MI:SS')
FROM pg_locks l
JOIN pg_class c ON c.oid = l.relation
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE c.relnamespace = to_regnamespace(%s) AND l.granted AND a.pid <> pg_backend_pid()
ORDER BY a.xact_start NULLS LAST
LIMIT 1
"""


def describe_blocker(row: Any) -> str:
    if row is None:
        return "the blocking session has ended"
    pid, app, state, xact, query = row
    return (
        f"blocked by pid {pid} (application {app!r}, {state}, transaction since {xact}, "
        f"query since {query})"
    )


def is_lock_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` (maybe wrapped by SQLAlchemy or StepFailed) is a lock timeout."""
    for candidate in (exc, getattr(exc, "error", None), getattr(exc, "orig", None)):
        inner = getattr(candidate, "orig", candidate)
        if isinstance(inner, psycopg2.errors.LockNotAvailable):
            return True
    return False
