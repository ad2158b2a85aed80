"""What a worker needs from the Alembic environment it runs in, what the renderer reports per
revision, and the tenant being migrated (:func:`current_tenant`, for the few revisions that
must know it)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppp_env import db
from ppp_env.errors import PPPError


# -- what the renderer reports -----------------------------------------------------------------
@dataclass(frozen=True)
class Where:
    """A line of a revision file."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{Path(self.file).name} line {self.line}"


#: Blocker kinds that depend on the tenant: such a revision renders per tenant (``--sql``).
PER_TENANT = frozenset({"tenant", "default_schema"})


@dataclass(frozen=True)
class Blocker:
    """Why a revision cannot be rendered once for every tenant.

    ``kind``: ``reads`` (it reads from the database: ``call`` says how), ``tenant`` (it calls
    ``current_tenant()``), ``default_schema`` (its SQL names the default schema, the
    tenant), ``flagged`` (it sets ``ppp_online = True``) or ``error`` (rendering it failed:
    ``call`` is the error).
    """

    kind: str
    call: str | None = None
    where: Where | None = None

    @property
    def per_tenant(self) -> bool:
        return self.kind in PER_TENANT

    def reason(self) -> str:
        """In words a revision author can act on."""
        at = f", {self.where}" if self.where else ""
        if self.kind == "reads":
            return f"it reads from the database ({self.call}{at})"
        if self.kind == "tenant":
            return f"it calls current_tenant(){f' ({self.where})' if self.where else ''}"
        if self.kind == "default_schema":
            return "it uses the default schema (the tenant)"
        if self.kind == "flagged":
            return "it sets ppp_online = True"
        return f"it cannot be rendered offline ({self.call}{at})"


def outside_reason(where: Where | None) -> str:
    return f"it runs outside a transaction (autocommit_block{f', {where}' if where else ''})"


@dataclass(frozen=True)
class RevisionRender:
    """One revision of a rendered path: its SQL, or why it has none usable."""

    label: str
    #: What rendering wrote for it (empty, or partial, when it could not be rendered).
    sql: str
    #: The heads once it has run (None: it was not rendered).
    heads_after: tuple[str, ...] | None
    blocker: Blocker | None = None
    #: Where it enters ``autocommit_block``: rendered, but it must run alone, online, outside
    #: the tenant's transaction.
    outside_transaction: Where | None = None

    @property
    def replayable(self) -> bool:
        """Its SQL can be sent for any tenant inside the tenant's transaction."""
        return self.blocker is None and self.outside_transaction is None


@dataclass
class Rendered:
    """A path rendered offline, revision by revision: a revision with a :class:`Blocker` has
    no SQL (it was stepped over: its code did not run to the end), and the revisions after
    it are rendered as they run once it has (their version statements follow from it)."""

    revisions: list[RevisionRender] = field(default_factory=list)

    def replayable(self) -> list[RevisionRender]:
        """The leading revisions whose SQL can be replayed inside a tenant's transaction."""
        out: list[RevisionRender] = []
        for revision in self.revisions:
            if not revision.replayable:
                break
            out.append(revision)
        return out

    @property
    def blocked(self) -> RevisionRender | None:
        """The revision where rendering stopped (None: every revision rendered)."""
        return next((r for r in self.revisions if r.blocker is not None), None)

    @property
    def sql(self) -> str:
        """The SQL of every revision up to the first blocked one."""
        out = []
        for revision in self.revisions:
            if revision.blocker is not None:
                break
            out.append(revision.sql)
        return "".join(out)


# -- the Alembic side a worker needs ------------------------------------------------------------
@dataclass
class AlembicHooks:
    """What the runner needs from the Alembic environment it runs in (see fleet.env)."""

    command: str
    #: The steps from these heads to the command's destination.
    steps: Callable[[tuple[str, ...]], list[Any]]
    #: Render these steps (the path from these heads) offline, revision by revision, every
    #: one of them (a blocked revision is stepped over).
    render: Callable[[Sequence[Any], tuple[str, ...]], Rendered]
    #: Run these steps online for a tenant on a SQLAlchemy connection; StepFailed on error.
    #: The flag: Alembic owns the transaction (for ``autocommit_block``).
    run_online: Callable[[Any, str, Sequence[Any], bool], None]
    #: ``revision <id> (<message>)``: how errors and reports name a step.
    label: Callable[[Any], str]
    #: Run these steps' revision functions for a tenant on a SQLAlchemy connection, inside
    #: the caller's transaction, without Alembic's version table work (the caller writes the
    #: heads it knows); StepFailed on error. None: only ``run_online``.
    run_functions: Callable[[Any, str, Sequence[Any]], None] | None = None


class StepFailed(Exception):
    """A step of a tenant's path failed: which revision, and the original error."""

    def __init__(self, label: str, error: BaseException) -> None:
        super().__init__(f"{label}: {db.error_text(error)}")
        self.label = label
        self.error = error


class OutsideTransaction(Exception):
    """A revision entered ``autocommit_block`` inside the tenant's transaction: it must run
    alone (PPP rolls the tenant back and runs that revision on its own next time)."""

    def __init__(self, where: Where | None) -> None:
        super().__init__(outside_reason(where))
        self.where = where


_current_tenant: str | None = None
_rendering = False


class NeedsOnline(Exception):
    """Raised while rendering when a revision needs a live, tenant-specific run."""


def current_tenant() -> str:
    """The tenant schema being migrated; for revisions that must know it.

    Calling it marks the revision as tenant-specific: it then runs online per tenant
    instead of being rendered once for all.
    """
    if _rendering:
        raise NeedsOnline("it calls current_tenant()")
    if _current_tenant is None:
        raise PPPError("current_tenant() is only available while PPP migrates a tenant")
    return _current_tenant


@contextmanager
def rendering() -> Iterator[None]:
    global _rendering
    _rendering = True
    try:
        yield
    finally:
        _rendering = False


@contextmanager
def migrating(tenant: str) -> Iterator[None]:
    """Make :func:`current_tenant` answer ``tenant`` for the duration."""
    global _current_tenant
    _current_tenant = tenant
    try:
        yield
    finally:
        _current_tenant = None
