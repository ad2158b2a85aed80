"""The fleet runner's side of ``ppp.tenant_outside`` (see :mod:`ppp_env.outside_record`).

Before a step that runs outside a transaction, :func:`start_sql` writes the tenant's record
(committed on its own) and returns the record it replaced; while the step runs,
:func:`watching` adds the name of every index the step creates or drops to the record (before
the statement runs, so a kill midway leaves the name) and clears the record in the same
transaction as the tenant's new version.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.sql.ddl import CreateIndex, DropIndex
from sqlalchemy.sql.dml import UpdateBase

from ppp_env import alembic_adapter as adapter
from ppp_env.alembic_adapter import as_tuple
from ppp_env.fleet.hooks import StepFailed
from ppp_env.outside_record import (
    WRITE_SQL,
    OutsideRecord,
    clear_sql,
    heads_after,
    note_index_sql,
    record,
)
from ppp_env.tenant_state import VERSION_TABLE

__all__ = ["WRITE_SQL", "LeftBehind", "clear_sql", "found_before", "start_params", "watching"]


def start_params(tenant: str, step: Any, label: str, heads: Sequence[str]) -> dict[str, Any]:
    """Parameters of :data:`~ppp_env.outside_record.WRITE_SQL`: ``step`` from ``heads``."""
    info = adapter.describe(step)
    script = info.script
    revision = script.revision if script is not None else label
    downs = as_tuple(script.down_revision) if script is not None else ()
    return {
        "schema": tenant,
        "revision": revision,
        "label": label,
        "heads": list(heads),
        "heads_after": heads_after(heads, revision, downs, info.upgrade),
    }


def found_before(shard: str, row: Sequence[Any] | None, own_pid: int) -> OutsideRecord | None:
    """The record the write replaced, when another session left it (not a retry of ours)."""
    if row is None:
        return None
    found = record(shard, row)
    return None if found.pid == own_pid else found


class LeftBehind(StepFailed):
    """A step outside a transaction failed: its error, then the tenant's record (what an
    earlier run left, if anything) and the repair command."""

    def __init__(
        self, failed: StepFailed, tenant: str, shard: str, before: OutsideRecord | None
    ) -> None:
        super().__init__(failed.label, failed.error)
        found = f"found {before.describe()}; " if before is not None else ""
        self.args = (
            f"{failed}; {found}the tenant stays recorded as interrupted in "
            f"ppp.tenant_outside on shard {shard}: `ppp tenant repair {tenant}` shows what the "
            "revision left and repairs it",
        )


@contextmanager
def watching(conn: Any, cur: Any, tenant: str) -> Iterator[None]:
    """Note the indexes the step creates or drops in the tenant's schema; clear the record
    with the version change. ``conn`` is the SQLAlchemy connection Alembic runs on, ``cur`` a
    cursor of its DBAPI connection (same session, same transaction)."""

    def before(conn_: Any, clause: Any, *_: Any) -> None:
        if isinstance(clause, (CreateIndex, DropIndex)):
            index = clause.element
            schema = getattr(index.table, "schema", None) if index.table is not None else None
            if index.name and schema in (None, tenant):
                cur.execute(note_index_sql(tenant, str(index.name)))

    def after(conn_: Any, clause: Any, *_: Any) -> None:
        table = getattr(clause, "table", None)
        if isinstance(clause, UpdateBase) and getattr(table, "name", None) == VERSION_TABLE:
            cur.execute(clear_sql(tenant))

    event.listen(conn, "before_execute", before)
    event.listen(conn, "after_execute", after)
    try:
        yield
    finally:
        event.remove(conn, "before_execute", before)
        event.remove(conn, "after_execute", after)
