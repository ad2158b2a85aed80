"""``ppp tenant repair``: a tenant a killed run left inside a revision outside a transaction.

The fleet runner records such a tenant in ``ppp.tenant_outside`` (:mod:`ppp_env.outside_record`)
and retries the revision on the next run, which is all a revision built with
:mod:`ppp_env.revision_ops` needs. A plain ``CREATE INDEX CONCURRENTLY`` fails on what the
interrupted run left, for good; the operator then looks (:func:`find_interrupted`) and chooses:

- :func:`stamp_interrupted` (``--stamp``): the revision's work is complete and valid (checked by
  the operator; an INVALID index it built is refused): the tenant's version becomes the
  revision's, the record goes, in one transaction;
- :func:`retry_interrupted` (``--retry``): repair drops the INVALID indexes the revision left
  (``DROP INDEX CONCURRENTLY``; never a valid one: it refuses then) and clears the record,
  so the next run builds them again.

Both run under the tenant's advisory lock (refused while a run migrates it) and check that
the record and the tenant's version are still what was shown; nothing changes otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ppp_env import db
from ppp_env.errors import PPPError
from ppp_env.fleet.tenant_sql import heads_sql, lock_key, ms
from ppp_env.identifiers import quote_ident, validate_tenant
from ppp_env.outside_record import TABLE, OutsideRecord, read_records
from ppp_env.settings import Settings
from ppp_env.tenant_state import read_states
from ppp_env.veneer import catalog

__all__ = ["RepairResult", "find_interrupted", "retry_interrupted", "stamp_interrupted"]


@dataclass
class RepairResult:
    record: OutsideRecord
    #: stamp | retry
    action: str
    #: The INVALID indexes repair dropped (``retry``).
    dropped: list[str] = field(default_factory=list)


def find_interrupted(settings: Settings, schema: str) -> OutsideRecord:
    """The record of ``schema``; PPPError for an unknown tenant, a tenant with no record
    (nothing to repair) and a revision running now."""
    validate_tenant(schema)
    with catalog.admin_connection(settings) as conn:
        tenant = catalog.lookup_tenant(conn, schema)
    if tenant is None:
        raise PPPError(f"unknown tenant {schema!r}: not in the catalog (see `ppp tenant list`)")
    with _shard(settings, tenant.shard) as cur:
        return _record(cur, tenant.shard, schema)


def stamp_interrupted(settings: Settings, record: OutsideRecord) -> RepairResult:
    """Mark the interrupted revision as done: the tenant's version becomes the heads it was
    going to reach, its record goes, one transaction. Refused with an INVALID index."""
    if record.invalid:
        raise PPPError(
            f"cannot stamp {record.schema}: index {', '.join(record.invalid)} is INVALID (its "
            "build did not finish): use --retry, which drops it so the next run builds it"
        )
    schema = record.schema
    with _shard(settings, record.shard) as cur:
        cur.execute("BEGIN")
        try:
            _take(cur, settings, record, "pg_try_advisory_xact_lock")
            cur.execute(
                heads_sql(schema, record.heads_after)
                + f"DELETE FROM {TABLE} WHERE schema_name = %s",
                (schema,),
            )
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
    return RepairResult(record, "stamp")


def retry_interrupted(settings: Settings, record: OutsideRecord) -> RepairResult:
    """Drop the INVALID indexes the interrupted revision left and clear its record, so the
    next run retries the revision. Refused when it left a VALID index (a retried build fails
    on it: stamp instead, or drop it by hand first)."""
    if record.valid:
        raise PPPError(
            f"cannot retry {record.schema}: index {', '.join(record.valid)} is VALID (built) and "
            "a retried CREATE INDEX fails on it: use --stamp when the revision's work is "
            "complete, or drop the index yourself first"
        )
    result = RepairResult(record, "retry")
    # The session lock goes with the connection, at the end of the block.
    with _shard(settings, record.shard) as cur:
        now = _take(cur, settings, record, "pg_try_advisory_lock")
        for name in now.invalid:  # as read under the lock
            qualified = f"{quote_ident(record.schema)}.{quote_ident(name)}"
            cur.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {qualified}")
            result.dropped.append(name)
        cur.execute(f"DELETE FROM {TABLE} WHERE schema_name = %s", (record.schema,))
    return result


@contextmanager
def _shard(settings: Settings, shard: str) -> Iterator[Any]:
    inst = settings.shard(shard)
    with db.connection(
        inst, "admin", autocommit=True, connect_timeout=settings.connect_timeout
    ) as conn:
        yield conn.cursor()


def _record(cur: Any, shard: str, schema: str) -> OutsideRecord:
    states = read_states(cur, [schema])
    found = read_records(cur, shard, states).get(schema)
    if found is None:
        raise PPPError(
            f"nothing to repair for tenant {schema!r}: no revision that runs outside a "
            f"transaction was interrupted (ppp.tenant_outside on shard {shard} has no record "
            "of it at its current revision)"
        )
    if found.running:
        raise PPPError(
            f"tenant {schema!r} is {found.describe()}: not interrupted; wait for it to finish"
        )
    return found


def _take(cur: Any, settings: Settings, record: OutsideRecord, how: str) -> OutsideRecord:
    """The tenant's advisory lock (``how``: transaction or session level: the connection's
    end releases it), then the check that its record and version are what was shown; the
    record as read under the lock (a record is only read at the tenant's current heads)."""
    cur.execute(
        f"SET lock_timeout = {ms(settings.lock_timeout)};\nSELECT {how}({lock_key(record.schema)})"
    )
    if not cur.fetchone()[0]:
        raise PPPError(f"tenant {record.schema!r} is being migrated by another run: try later")
    now = _record(cur, record.shard, record.schema)
    if (now.started_at, now.pid, now.heads) != (record.started_at, record.pid, record.heads):
        raise PPPError(f"tenant {record.schema!r} changed meanwhile: nothing done, look again")
    return now
