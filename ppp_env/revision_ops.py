"""Operations for revisions that are safe to run again after a kill midway.

``CREATE INDEX CONCURRENTLY`` runs outside a transaction (``autocommit_block``): killed after
it finished, the revision is not recorded and the index stays; killed while it ran, an
INVALID index of that name stays. Either way a plain rerun fails on the name for good. These
helpers look first, as GitLab's ``add_concurrent_index`` and strong_migrations do:

- :func:`create_index_concurrently` skips a VALID index of that name on that table, drops an
  INVALID one (``DROP INDEX CONCURRENTLY``) and builds it;
- :func:`drop_index_concurrently` is ``DROP INDEX CONCURRENTLY IF EXISTS`` (an INVALID index
  left by an interrupted drop goes too).

Each enters ``autocommit_block`` itself (a revision calls just the helper; inside a block of
the revision's own it uses that one). Offline (``--sql``) nothing can be looked up: the create
renders the plain ``CREATE INDEX CONCURRENTLY`` (that SQL, run again after a kill, fails on the
leftover index like any plain statement); the drop keeps its ``IF EXISTS``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import sqlalchemy as sa
from alembic import op

from ppp_env.errors import PPPError
from ppp_env.identifiers import quote_ident

__all__ = ["create_index_concurrently", "drop_index_concurrently"]

log = logging.getLogger("ppp.revision_ops")

#: The table an index of this name (search_path decides its schema) belongs to, and whether
#: it is valid; no row when there is none.
_INDEX_SQL = sa.text(
    "SELECT t.relname::text, i.indisvalid FROM pg_index i "
    "JOIN pg_class t ON t.oid = i.indrelid WHERE i.indexrelid = to_regclass(:name)"
)


def create_index_concurrently(
    index_name: str,
    table_name: str,
    columns: Sequence[str | Any],
    *,
    schema: str | None = None,
    unique: bool = False,
    where: str | Any | None = None,
    **kw: Any,
) -> None:
    """``CREATE [UNIQUE] INDEX CONCURRENTLY`` that can run again: a VALID index of that name
    on ``table_name`` is kept (nothing to do), an INVALID one is dropped first. ``where``: a
    partial index's predicate (SQL text or a SQLAlchemy expression); ``kw`` goes to
    ``op.create_index`` (``postgresql_using``, ``postgresql_include``...)."""
    predicate = sa.text(where) if isinstance(where, str) else where
    ctx = op.get_context()
    with _outside(ctx):
        if not ctx.as_sql:
            found = _existing(index_name, schema)
            if found is not None:
                table, valid = found
                if table != table_name:
                    raise PPPError(
                        f"cannot create index {index_name} on {table_name}: an index of that "
                        f"name exists on table {table}"
                    )
                if valid:
                    log.info("index %s exists and is valid: nothing to do", index_name)
                    return
                log.warning("index %s is INVALID (an interrupted build): rebuilding", index_name)
                op.drop_index(
                    index_name, table_name=table_name, schema=schema, postgresql_concurrently=True
                )
        op.create_index(
            index_name,
            table_name,
            list(columns),
            schema=schema,
            unique=unique,
            postgresql_concurrently=True,
            postgresql_where=predicate,
            **kw,
        )


def drop_index_concurrently(
    index_name: str, table_name: str | None = None, *, schema: str | None = None, **kw: Any
) -> None:
    """``DROP INDEX CONCURRENTLY IF EXISTS``: nothing to do when it is gone; an INVALID index
    left by an interrupted drop is dropped too."""
    ctx = op.get_context()
    with _outside(ctx):
        op.drop_index(
            index_name,
            table_name=table_name,
            schema=schema,
            postgresql_concurrently=True,
            if_exists=True,
            **kw,
        )


def _existing(index_name: str, schema: str | None) -> tuple[str, bool] | None:
    name = quote_ident(index_name)
    if schema is not None:
        name = f"{quote_ident(schema)}.{name}"
    row = op.get_bind().execute(_INDEX_SQL, {"name": name}).first()
    return None if row is None else (str(row[0]), bool(row[1]))


@contextmanager
def _outside(ctx: Any) -> Iterator[None]:
    """``autocommit_block``, unless the revision already opened one (online, the connection is
    then in AUTOCOMMIT)."""
    inside = False
    if not ctx.as_sql:
        level = ctx.connection.get_execution_options().get("isolation_level")
        inside = level == "AUTOCOMMIT"
    with nullcontext() if inside else ctx.autocommit_block():
        yield
