"""Whether a query through the veneer runs as one remote query, read from its plan.

A query on a tenant's foreign tables is *pushed down fully* when postgres_fdw sends all of
it to the shard: ``EXPLAIN (VERBOSE, FORMAT JSON)`` shows one Foreign Scan at the top of the
plan (under the ModifyTable of an UPDATE or DELETE, doing the update itself) and no other
foreign scan, so its ``Remote SQL`` is the whole query. Anything above it (a Hash Join, an
Aggregate, a Sort, a Limit) runs in the veneer on rows fetched from the shard.

``benchmarks/veneer_queries.py`` and ``tests/test_veneer_pushdown.py`` read plans with it;
so can an application's own tests::

    cur.execute(pushdown.explain(sql))
    assert pushdown.read(cur.fetchone()[0]).fully
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any


def explain(sql: str) -> str:
    """The statement whose one row :func:`read` reads (it plans ``sql``, never runs it)."""
    return f"EXPLAIN (VERBOSE, FORMAT JSON) {sql}"


@dataclass(frozen=True)
class RemotePlan:
    """What a plan sends to the shards."""

    #: One remote query does all of it.
    fully: bool
    #: The top node's type (``Foreign Scan``, ``Hash Join``, ``ModifyTable``...).
    top: str
    #: Every foreign scan's ``Remote SQL``, in plan order.
    remote_sql: tuple[str, ...]


def _nodes(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _nodes(child)


def read(explained: Any) -> RemotePlan:
    """Read ``EXPLAIN (VERBOSE, FORMAT JSON)`` output (the parsed JSON: a list holding one
    object with ``Plan``)."""
    plan = explained[0]["Plan"]
    foreign = [n for n in _nodes(plan) if n["Node Type"] == "Foreign Scan"]
    node = plan
    modifies = plan["Node Type"] == "ModifyTable"
    if modifies and len(plan.get("Plans", ())) == 1:
        node = plan["Plans"][0]
    fully = (
        len(foreign) == 1
        and node is foreign[0]
        # an UPDATE or DELETE done remotely, not rows fetched to be changed one by one
        and (not modifies or node.get("Operation", "Select") != "Select")
    )
    return RemotePlan(
        fully=fully,
        top=str(plan["Node Type"]),
        remote_sql=tuple(str(n.get("Remote SQL", "")) for n in foreign),
    )
