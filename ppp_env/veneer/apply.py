"""Applying refresh plans in the veneer: batches of bounded locks, each tenant atomically.

A batch of tenants runs in one transaction (a refresh of its own) or a savepoint (inside the
caller's transaction); a failed batch is run again tenant by tenant, so one tenant's failure
leaves the others refreshed and names its cause.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from ppp_env.db import first_line
from ppp_env.settings import Settings
from ppp_env.veneer import catalog
from ppp_env.veneer.plan import LOCK_BUDGET, TABLE, WIRED, Plan, RefreshReport
from ppp_env.veneer.wiring import ddl

log = logging.getLogger("ppp.veneer")
#: Lock timeout (seconds) of a batch of tenants: a tenant whose foreign table a long query
#: holds fails the batch quickly (then it waits ``settings.lock_timeout`` on its own).
BATCH_LOCK_TIMEOUT = 1.0

_RECORD = f"""
INSERT INTO {WIRED} (schema, name, kind, signature, local_oid, remote_oid)
SELECT w.schema, w.name, w.kind, w.signature,
       CASE w.kind WHEN '{TABLE}' THEN to_regclass(format('%I.%I', w.schema, w.name))::oid
                   ELSE to_regtype(format('%I.%I', w.schema, w.name))::oid END, w.remote_oid
FROM unnest(CAST(:schemas AS text[]), CAST(:names AS text[]), CAST(:kinds AS text[]),
            CAST(:signatures AS text[]), CAST(:remote_oids AS oid[]))
     AS w(schema, name, kind, signature, remote_oid)
ON CONFLICT (schema, name) DO UPDATE SET kind = excluded.kind,
    signature = excluded.signature, local_oid = excluded.local_oid,
    remote_oid = excluded.remote_oid, wired_at = now()
"""
_FORGET = f"""
DELETE FROM {WIRED} w USING unnest(CAST(:schemas AS text[]), CAST(:names AS text[]))
    AS g(schema, name) WHERE w.schema = g.schema AND w.name = g.name
"""


def run_plans(conn: Connection, plans: Sequence[Plan]) -> None:
    """The DDL of ``plans`` in one round trip, then their records and revisions."""
    sql = ";\n".join(s for p in plans for s in p.statements)
    if sql:
        ddl(conn, sql)
    rows = [(p.schema, *r) for p in plans for r in p.record]
    if rows:
        conn.execute(
            text(_RECORD),
            {
                "schemas": [r[0] for r in rows],
                "names": [r[1] for r in rows],
                "kinds": [r[2] for r in rows],
                "signatures": [r[3] for r in rows],
                "remote_oids": [r[4] for r in rows],
            },
        )
    gone = [(p.schema, n) for p in plans for n in p.forget]
    if gone:
        conn.execute(
            text(_FORGET), {"schemas": [g[0] for g in gone], "names": [g[1] for g in gone]}
        )
    catalog.mark_wired(conn, {p.schema: p.revision for p in plans})


def batches(plans: Sequence[Plan]) -> Iterator[list[Plan]]:
    """Consecutive plans whose estimated locks stay under :data:`LOCK_BUDGET` together (a
    tenant above it alone goes in a batch of its own)."""
    batch: list[Plan] = []
    locks = 0
    for plan in plans:
        if batch and locks + plan.locks > LOCK_BUDGET:
            yield batch
            batch, locks = [], 0
        batch.append(plan)
        locks += plan.locks
    if batch:
        yield batch


@contextmanager
def unit(conn: Connection, own: bool, lock_timeout: float) -> Iterator[None]:
    """A transaction of the refresh's own (with a lock timeout), or a savepoint in the
    caller's transaction; undone if the block fails."""
    if own:
        with conn.begin():
            ms = max(1, round(lock_timeout * 1000))
            ddl(conn, f"SET LOCAL lock_timeout = '{ms}ms'; SET LOCAL jit = off")
            yield
    else:
        with conn.begin_nested():
            yield


def explain(plan: Plan, exc: DBAPIError) -> str:
    """One line naming why a tenant's foreign tables could not be replaced."""
    code, msg = _pgcode(exc), first_line(exc)
    kept = "its foreign tables are unchanged"
    if code == "55P03":
        return f"a session held its foreign tables longer than the lock timeout ({msg}); {kept}"
    if code == "53200":
        return f"the veneer ran out of lock space ({msg}); {kept}"
    if code == "2BP01":
        return (
            f"cannot replace its foreign tables: {msg} (the veneer schema {plan.schema!r} must "
            f"hold nothing but PPP's foreign tables and types); {kept}"
        )
    if code in ("42704", "3F000"):
        named = [n for n in plan.others if f"{plan.schema}.{n}" in msg or f'"{n}"' in msg]
        hint = (
            f"{plan.schema}.{named[0]} is a {plan.others[named[0]]} type; the veneer creates a "
            "tenant's enum, domain and composite types only"
            if named
            else "a column type outside pg_catalog and the tenant schema must exist in the "
            "veneer under the same name"
        )
        return f"cannot create its foreign tables: {msg} ({hint}); {kept}"
    return f"cannot replace its foreign tables: {msg}; {kept}"


class VeneerLost(Exception):
    pass


def fail_if_lost(conn: Connection, exc: DBAPIError) -> None:
    """Raise if the veneer itself is gone (not a tenant's problem)."""
    if exc.connection_invalidated or conn.invalidated or conn.closed:
        raise VeneerLost(first_line(exc)) from exc


def apply(
    conn: Connection, plans: Sequence[Plan], settings: Settings, report: RefreshReport, own: bool
) -> None:
    """Run the plans in batches of bounded locks; a failed batch is run again tenant by
    tenant, each on its own, so that one tenant's failure leaves the others refreshed."""

    def done(batch: Sequence[Plan]) -> None:
        for p in batch:
            report.revisions[p.schema] = p.revision
            if not p.statements:
                report.unchanged.append(p.schema)
            report.tables_created += p.tables_created
            report.tables_dropped += p.tables_dropped
            report.types_changed += p.types_changed

    for batch in batches(plans):
        try:
            with unit(conn, own, min(BATCH_LOCK_TIMEOUT, settings.lock_timeout)):
                run_plans(conn, batch)
        except DBAPIError as exc:
            fail_if_lost(conn, exc)
            log.info("refresh: a batch of %d tenant(s) failed (%s)", len(batch), first_line(exc))
            for plan in batch:
                try:
                    with unit(conn, own, settings.lock_timeout):
                        run_plans(conn, [plan])
                except DBAPIError as exc2:
                    fail_if_lost(conn, exc2)
                    report.errors[plan.schema] = explain(plan, exc2)
                    continue
                done([plan])
            continue
        done(batch)


def _pgcode(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "pgcode", None)
