"""The shard's record of tenants inside a revision that runs outside a transaction.

A revision that enters ``autocommit_block`` (``CREATE INDEX CONCURRENTLY``) commits as it goes:
killed half-way, its tenant stays at the previous revision while what the revision built
(an index, valid or INVALID) stays too, and a plain rerun fails on it for good. So before such
a step starts, the fleet runner writes (and commits) a row of ``ppp.tenant_outside`` on the
tenant's shard: the revision, the heads it starts from and will reach, when, and which
session; while the step runs, the name of every index it creates or drops; the row goes in
the same transaction as the tenant's new version (else right after).

A row whose tenant is no longer at the heads it started from is over (the version was written
and the row not yet cleared, or the tenant was moved by hand): :func:`read_records` leaves it
out. A row whose session is still alive is a step running now, not an interrupted one.
Reading costs two small queries per shard (none on a shard without the table), and only
status, doctor and repair read it (a rerun gets the old row back from its write): runs
without such steps never touch the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ppp_env.identifiers import quote_literal
from ppp_env.tenant_state import TenantState

__all__ = [
    "READ_SQL",
    "TABLE",
    "WRITE_SQL",
    "IndexState",
    "OutsideRecord",
    "clear_sql",
    "heads_after",
    "note_index_sql",
    "read_records",
    "record",
]

TABLE = "ppp.tenant_outside"

#: A record's columns as :func:`record` reads them, with whether its session is alive and
#: every index it names or its schema holds INVALID, as ``name state`` (valid, INVALID,
#: missing); ``o`` is the record.
_COLUMNS = """
o.schema_name, o.revision, o.label, o.heads, o.heads_after, o.started_at, o.pid,
o.application_name,
EXISTS (SELECT 1 FROM pg_stat_activity a
        WHERE a.pid = o.pid AND a.backend_start IS NOT DISTINCT FROM o.backend_start),
(SELECT coalesce(array_agg(x.name || ' ' || CASE WHEN i.indexrelid IS NULL THEN 'missing'
                              WHEN i.indisvalid THEN 'valid' ELSE 'INVALID' END
                           ORDER BY x.name), '{}')
 FROM (SELECT unnest(o.indexes) AS name
       UNION
       SELECT c.relname::text FROM pg_index j JOIN pg_class c ON c.oid = j.indexrelid
       WHERE c.relnamespace = to_regnamespace(quote_ident(o.schema_name))
         AND NOT j.indisvalid) x
 LEFT JOIN pg_index i
   ON i.indexrelid = to_regclass(quote_ident(o.schema_name) || '.' || quote_ident(x.name)))
"""

#: Write the record of ``%(schema)s`` (with revision, label, heads, heads_after) and return
#: the record it replaced, if any: one statement, committed on its own.
WRITE_SQL = f"""
WITH old AS (SELECT * FROM {TABLE} WHERE schema_name = %(schema)s),
new AS (
    INSERT INTO {TABLE} AS o (schema_name, revision, label, heads, heads_after, started_at,
                              pid, backend_start, application_name, indexes)
    SELECT %(schema)s, %(revision)s, %(label)s, %(heads)s, %(heads_after)s, now(),
           pg_backend_pid(), a.backend_start, coalesce(a.application_name, ''), '{{}}'
    FROM (SELECT 1) one
    LEFT JOIN pg_stat_activity a ON a.pid = pg_backend_pid()
    ON CONFLICT (schema_name) DO UPDATE SET
        revision = excluded.revision, label = excluded.label, heads = excluded.heads,
        heads_after = excluded.heads_after, started_at = excluded.started_at,
        pid = excluded.pid, backend_start = excluded.backend_start,
        application_name = excluded.application_name, indexes = excluded.indexes
    RETURNING 1
)
SELECT {_COLUMNS} FROM old o
"""

#: The records of the tenants ``%(schemas)s``.
READ_SQL = f"SELECT {_COLUMNS} FROM {TABLE} o WHERE o.schema_name = ANY(%(schemas)s)"


@dataclass(frozen=True)
class IndexState:
    """An index the interrupted revision built or dropped, or an INVALID one of its schema."""

    name: str
    #: valid | INVALID | missing
    state: str


@dataclass(frozen=True)
class OutsideRecord:
    """A tenant found inside a revision that runs outside a transaction."""

    shard: str
    schema: str
    revision: str
    label: str
    heads: tuple[str, ...]
    heads_after: tuple[str, ...]
    started_at: datetime
    pid: int
    application_name: str
    #: The session that wrote it is still there: the revision is running now.
    running: bool
    indexes: tuple[IndexState, ...] = ()

    @property
    def invalid(self) -> list[str]:
        return [i.name for i in self.indexes if i.state == "INVALID"]

    @property
    def valid(self) -> list[str]:
        return [i.name for i in self.indexes if i.state == "valid"]

    def objects(self) -> str:
        """``index ix_a (valid), index ix_b (INVALID)``, or that none was found."""
        if not self.indexes:
            return "no index of it found"
        return ", ".join(f"index {i.name} ({i.state})" for i in self.indexes)

    def describe(self) -> str:
        """One line: which revision, since when, which session, what exists."""
        since = self.started_at.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
        who = f"pid {self.pid}" + (
            f", application {self.application_name!r}" if self.application_name else ""
        )
        if self.running:
            return f"running {self.label} outside a transaction since {since} ({who})"
        return (
            f"interrupted inside {self.label} (it runs outside a transaction) since {since} "
            f"({who}, gone); {self.objects()}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "label": self.label,
            "heads": list(self.heads),
            "heads_after": list(self.heads_after),
            "since": self.started_at.isoformat(),
            "pid": self.pid,
            "application_name": self.application_name,
            "running": self.running,
            "indexes": [{"name": i.name, "state": i.state} for i in self.indexes],
            "description": self.describe(),
        }


def _index(entry: str) -> IndexState:
    name, _, state = entry.rpartition(" ")
    return IndexState(name, state)


def record(shard: str, row: Sequence[Any]) -> OutsideRecord:
    """A row of :data:`READ_SQL` or :data:`WRITE_SQL`."""
    schema, revision, label, heads, after, started, pid, app, running, indexes = row
    return OutsideRecord(
        shard,
        schema,
        revision,
        label,
        tuple(sorted(heads)),
        tuple(after),
        started,
        pid,
        app,
        running,
        tuple(_index(i) for i in indexes),
    )


def read_records(
    cursor: Any, shard: str, states: Mapping[str, TenantState]
) -> dict[str, OutsideRecord]:
    """The records of the tenants of ``states`` (read on their shard) that still stand: the
    tenant is at the heads the record started from. Two queries; none when the table does
    not exist yet (no run created it on this shard)."""
    if not states:
        return {}
    cursor.execute(f"SELECT to_regclass('{TABLE}') IS NOT NULL")
    if not cursor.fetchone()[0]:
        return {}
    cursor.execute(READ_SQL, {"schemas": list(states)})
    found: dict[str, OutsideRecord] = {}
    for row in cursor.fetchall():
        rec = record(shard, row)
        state = states.get(rec.schema)
        if state is not None and rec.heads == state.heads:  # else over: the tenant moved on
            found[rec.schema] = rec
    return found


def clear_sql(schema: str) -> str:
    """Delete the record of ``schema`` written by this session (a later run's stays)."""
    return (
        f"DELETE FROM {TABLE} WHERE schema_name = {quote_literal(schema)} "
        "AND pid = pg_backend_pid()"
    )


def note_index_sql(schema: str, index: str) -> str:
    """Add an index of the tenant's schema to its record (before the statement on it runs)."""
    name = quote_literal(index)
    return (
        f"UPDATE {TABLE} SET indexes = array_append(indexes, {name}) "
        f"WHERE schema_name = {quote_literal(schema)} AND pid = pg_backend_pid() "
        f"AND NOT {name} = ANY(indexes)"
    )


def heads_after(
    heads: Sequence[str], revision: str, downs: Sequence[str], upgrade: bool
) -> list[str]:
    """The heads once a step of ``revision`` (down revisions ``downs``) has run from ``heads``."""
    if upgrade:
        return sorted((set(heads) - set(downs)) | {revision})
    return sorted((set(heads) - {revision}) | set(downs))
