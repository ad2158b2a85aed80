"""Connections: psycopg2 for PPP's own SQL, SQLAlchemy engines for Alembic.

Every connection failure becomes a PPPError naming the instance and its URL with the
password masked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg2
import psycopg2.extensions
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from ppp_env.errors import PPPError
from ppp_env.settings import Instance, Role

APPLICATION_NAME = "ppp"
T = TypeVar("T")


def each_at_once(
    names: Iterable[str], job: Callable[[str], T], workers: int = 8
) -> tuple[dict[str, T], dict[str, PPPError]]:
    """``job(name)`` for every name (a shard) at once, a thread each (at most ``workers``):
    the results by name, and the PPPError of each that raised one (the others go on)."""
    order = list(dict.fromkeys(names))
    results: dict[str, T] = {}
    errors: dict[str, PPPError] = {}
    if not order:
        return results, errors
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(order)))) as pool:
        futures = {name: pool.submit(job, name) for name in order}
        for name, future in futures.items():
            try:
                results[name] = future.result()
            except PPPError as exc:
                errors[name] = exc
    return results, errors


def first_line(exc: BaseException) -> str:
    """The first line of an error's message; for SQLAlchemy's wrappers, the driver's error."""
    orig = getattr(exc, "orig", None)
    if isinstance(orig, BaseException):
        exc = orig
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def error_text(exc: BaseException) -> str:
    """``<error class>: <first line>`` (the driver's error class for SQLAlchemy's wrappers)."""
    orig = getattr(exc, "orig", None)
    cls = type(orig if isinstance(orig, BaseException) else exc).__name__
    return f"{cls}: {first_line(exc)}"


def connect(
    inst: Instance,
    role: Role = "admin",
    *,
    dbname: str | None = None,
    connect_timeout: int = 5,
    autocommit: bool = False,
    application_name: str = APPLICATION_NAME,
) -> Any:
    """Open a psycopg2 connection to ``inst`` as ``role``; PPPError when it cannot."""
    user, password = inst.user_and_password(role)
    database = dbname or (inst.superuser_dbname if role == "superuser" else inst.dbname)
    try:
        conn = psycopg2.connect(
            host=inst.host,
            port=inst.port,
            dbname=database,
            user=user,
            password=password or None,
            connect_timeout=connect_timeout,
            application_name=application_name,
        )
    except psycopg2.Error as exc:
        raise PPPError(
            f"cannot connect to {inst.label} at {inst.masked_url(role, dbname=database)}: "
            f"{first_line(exc)}"
        ) from None
    conn.autocommit = autocommit
    return conn


@contextmanager
def connection(inst: Instance, role: Role = "admin", **kw: Any) -> Iterator[Any]:
    conn = connect(inst, role, **kw)
    try:
        yield conn
    finally:
        conn.close()


def engine(inst: Instance, role: Role = "admin", *, connect_timeout: int = 5, **kw: Any) -> Engine:
    """A SQLAlchemy engine for ``inst``; its URL renders with the password hidden."""
    return create_engine(
        inst.url(role),
        connect_args={"connect_timeout": connect_timeout, "application_name": APPLICATION_NAME},
        **kw,
    )
