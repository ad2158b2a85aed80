"""A worker's plan of a tenant's path: which steps, and in which pieces they run.

The path from a tenant's starting heads is planned and rendered once (every revision of it:
one that cannot be rendered is reported and stepped over); each position of it is cut into a
:class:`Segment` once: the longest stretch of rendered SQL (replayed for every tenant on that
path), else the consecutive steps that cannot be rendered (run online through Alembic in one
migration context), else one step that must run alone outside the tenant's transaction (it
enters ``autocommit_block``). What the renderer reports decides, and what a run learns (a
step found entering ``autocommit_block`` online) changes the plan for the next tenant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ppp_env.fleet.hooks import AlembicHooks, Rendered, RevisionRender, Where, outside_reason
from ppp_env.fleet.options import RENDERABLE


@dataclass(frozen=True)
class Segment:
    """The next part of a tenant's path: rendered SQL of consecutive steps, or steps that run
    online through Alembic (``autocommit``: alone, outside the tenant's transaction)."""

    chunks: tuple[tuple[str, str], ...] = ()
    online: tuple[Any, ...] = ()
    autocommit: bool = False
    #: The heads after the steps, as rendering found them (None: not known, e.g. when nothing
    #: is rendered).
    heads_after: tuple[str, ...] | None = None

    @property
    def size(self) -> int:
        return len(self.chunks) or len(self.online)

    @property
    def sql(self) -> str:
        return "".join(sql for _label, sql in self.chunks)


@dataclass
class PathPlan:
    """Paths and segments of one worker, planned once and kept."""

    hooks: AlembicHooks
    #: Render renderable commands (``-x render=false``: everything online).
    render: bool = True
    #: Revisions that ran online on this shard, and why (reported once per run).
    online: dict[str, str] = field(default_factory=dict)
    #: Steps known to run outside a transaction, by label.
    outside: dict[str, Where | None] = field(default_factory=dict)
    _paths: dict[tuple[str, ...], list[Any]] = field(default_factory=dict)
    _rendered: dict[tuple[str, ...], Rendered] = field(default_factory=dict)
    _segments: dict[tuple[tuple[str, ...], int], Segment] = field(default_factory=dict)

    def path(self, heads: tuple[str, ...]) -> list[Any]:
        """The steps from ``heads`` to the destination, worked out once per starting heads (a
        relative destination such as ``-3`` counts from where the tenant started)."""
        if heads not in self._paths:
            self._paths[heads] = self.hooks.steps(heads)
        return self._paths[heads]

    def segment(self, start: tuple[str, ...], pos: int) -> Segment:
        """What to run at step ``pos`` of the path from ``start``."""
        key = (start, pos)
        if key not in self._segments:
            self._segments[key] = self._cut(start, pos)
        return self._segments[key]

    def rendered(self, start: tuple[str, ...]) -> Rendered:
        """The whole path from ``start``, rendered once."""
        if start not in self._rendered:
            self._rendered[start] = self.hooks.render(self.path(start), start)
        return self._rendered[start]

    def learn_outside(self, label: str, where: Where | None) -> None:
        """``label`` enters ``autocommit_block``: from now on it runs alone."""
        self.outside[label] = where
        self.online[label] = outside_reason(where)
        self._segments.clear()

    def _cut(self, start: tuple[str, ...], pos: int) -> Segment:
        rest = self.path(start)[pos:]
        label: Callable[[Any], str] = self.hooks.label
        if label(rest[0]) in self.outside:
            return Segment(online=(rest[0],), autocommit=True)
        plain = rest
        for i, step in enumerate(rest):
            if label(step) in self.outside:
                plain = rest[:i]
                break
        if not (self.render and self.hooks.command in RENDERABLE):
            return Segment(online=tuple(plain))
        revisions = self.rendered(start).revisions[pos : pos + len(plain)]
        first = revisions[0] if revisions else None
        if first is not None and first.outside_transaction is not None:
            self.learn_outside(first.label, first.outside_transaction)
            return Segment(online=(rest[0],), autocommit=True)
        if first is not None and first.replayable:
            ready = _leading(revisions, lambda r: r.replayable)
            chunks = tuple((r.label, r.sql) for r in ready)
            return Segment(chunks=chunks, heads_after=ready[-1].heads_after)
        # Steps that cannot be rendered, as many as follow each other: one online run.
        online = _leading(
            revisions, lambda r: r.blocker is not None and r.outside_transaction is None
        )
        for revision in online:
            if revision.blocker is not None:
                self.online[revision.label] = revision.blocker.reason()
        heads_after = online[-1].heads_after if online else None
        return Segment(online=tuple(rest[: max(1, len(online))]), heads_after=heads_after)


def _leading(
    revisions: list[RevisionRender], keep: Callable[[RevisionRender], bool]
) -> list[RevisionRender]:
    out: list[RevisionRender] = []
    for revision in revisions:
        if not keep(revision):
            break
        out.append(revision)
    return out
