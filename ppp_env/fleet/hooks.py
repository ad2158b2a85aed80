"""What a worker needs from the Alembic environment it runs in, and the tenant being
migrated (:func:`current_tenant`, for the few revisions that must know it)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ppp_env import db
from ppp_env.errors import PPPError


# -- the Alembic side a worker needs ------------------------------------------------------------
@dataclass
class Rendered:
    """The first steps of a path rendered offline, and where (and why) rendering stopped.

    ``chunks`` holds one ``(label, sql)`` per rendered step, in order; ``stopped_at`` is the
    label of the first step that cannot be rendered (None: the whole path rendered).
    """

    chunks: list[tuple[str, str]] = field(default_factory=list)
    stopped_at: str | None = None
    reason: str | None = None
    #: The step stopped because it needs the tenant (it can be rendered per tenant).
    per_tenant: bool = False
    #: The heads after each rendered step (what the version table holds then).
    heads: list[tuple[str, ...]] = field(default_factory=list)

    @property
    def sql(self) -> str:
        return "".join(sql for _label, sql in self.chunks)


@dataclass
class AlembicHooks:
    """What the runner needs from the Alembic environment it runs in (see tenant_env)."""

    command: str
    #: The steps from these heads to the command's destination.
    steps: Callable[[tuple[str, ...]], list[Any]]
    #: Render as many of these steps (the path from these heads) as can be rendered offline.
    render: Callable[[Sequence[Any], tuple[str, ...]], Rendered]
    #: Run these steps online for a tenant on a SQLAlchemy connection; StepFailed on error.
    #: The flag: Alembic owns the transaction (for ``autocommit_block``).
    run_online: Callable[[Any, str, Sequence[Any], bool], None]
    #: Whether a step must run outside a transaction (it uses ``autocommit_block``).
    autocommit: Callable[[Any], bool]
    #: ``revision <id> (<message>)``: how errors and reports name a step.
    label: Callable[[Any], str]


class StepFailed(Exception):
    """A step of a tenant's path failed: which revision, and the original error."""

    def __init__(self, label: str, error: BaseException) -> None:
        super().__init__(f"{label}: {db.error_text(error)}")
        self.label = label
        self.error = error


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
