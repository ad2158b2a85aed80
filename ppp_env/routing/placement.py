"""Where each tenant lives, read from the veneer's catalog, cached, and kept fresh.

Two pieces, both replaceable:

- a :class:`PlacementSource` reads placements (schema -> shard, state). The default,
  :class:`CatalogPlacement`, calls ``ppp.placement()`` as the veneer's app role when that
  function exists (a SECURITY DEFINER function: the application needs no privilege on the
  catalog), and otherwise reads ``ppp.tenants`` as ``veneer_admin``.
- a :class:`PlacementListener` keeps one connection to the veneer in a background thread,
  ``LISTEN ppp_placement``, and tells the cache which tenant changed (the payload is the
  tenant's schema; an empty payload means "everything"). After a lost connection it
  reconnects and forgets every cached placement: notifications may have been missed.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg2

from ppp_env import db
from ppp_env.errors import PPPError
from ppp_env.settings import Settings

log = logging.getLogger(__name__)

#: The channel the catalog's trigger notifies with a tenant's schema as payload.
CHANNEL = "ppp_placement"


@dataclass(frozen=True)
class Placement:
    """One tenant's home: its schema, its shard and its lifecycle state."""

    schema: str
    shard: str
    state: str


class PlacementSource(Protocol):
    """Reads placements; ``schemas=None`` means every tenant."""

    def read(self, schemas: Iterable[str] | None = None) -> dict[str, Placement]: ...

    def close(self) -> None: ...


class CatalogPlacement:
    """Placements from the veneer's catalog, over one kept connection (reopened on failure).

    ``ppp.placement()`` (as the veneer's app role) is preferred; without it the catalog
    table is read as ``veneer_admin``. Which one is used is decided at the first read.
    """

    FUNCTION_SQL = "SELECT schema, shard, state FROM ppp.placement()"
    TABLE_SQL = "SELECT schema, shard, state FROM ppp.tenants"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn: Any = None
        self._sql: str | None = None
        self._lock = threading.Lock()

    def _connect(self) -> tuple[Any, str]:
        veneer, timeout = self.settings.veneer, self.settings.connect_timeout
        if self._sql in (None, self.FUNCTION_SQL):
            conn = db.connect(veneer, "app", connect_timeout=timeout, autocommit=True)
            try:
                with conn.cursor() as cur:
                    cur.execute(self.FUNCTION_SQL + " WHERE false")
                return conn, self.FUNCTION_SQL
            except psycopg2.Error:
                conn.close()
                if self._sql == self.FUNCTION_SQL:
                    raise
        conn = db.connect(veneer, "admin", connect_timeout=timeout, autocommit=True)
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('ppp.tenants') IS NOT NULL")
            if not cur.fetchone()[0]:
                conn.close()
                raise PPPError(
                    "the catalog does not exist yet: run `alembic -n veneer upgrade head`"
                )
        return conn, self.TABLE_SQL

    def read(self, schemas: Iterable[str] | None = None) -> dict[str, Placement]:
        wanted = None if schemas is None else list(schemas)
        sql = "" if wanted is None else " WHERE schema = ANY(%s)"
        with self._lock:
            for attempt in (1, 2):
                if self._conn is None:
                    self._conn, self._sql = self._connect()
                try:
                    with self._conn.cursor() as cur:
                        cur.execute(f"{self._sql}{sql}", None if wanted is None else (wanted,))
                        return {r[0]: Placement(r[0], r[1], r[2]) for r in cur.fetchall()}
                except psycopg2.Error as exc:
                    self._drop()
                    if attempt == 2:
                        raise PPPError(
                            f"cannot read tenant placement from the veneer at "
                            f"{self.settings.veneer.masked_url('app')}: {db.first_line(exc)}"
                        ) from None
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
        self._conn = None

    def close(self) -> None:
        with self._lock:
            self._drop()


class PlacementListener:
    """``LISTEN ppp_placement`` on the veneer in a daemon thread.

    ``on_change(schema)`` is called for each notification (``None``: forget everything,
    after a reconnect or an empty payload). :meth:`start` returns once the LISTEN is in
    place, so a change committed after it is never missed.
    """

    def __init__(
        self,
        settings: Settings,
        on_change: Callable[[str | None], None],
        *,
        channel: str = CHANNEL,
        retry_seconds: float = 1.0,
    ) -> None:
        self.settings = settings
        self.on_change = on_change
        self.channel = channel
        self.retry_seconds = retry_seconds
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self.error: str | None = None

    def _listen(self) -> Any:
        conn = db.connect(
            self.settings.veneer,
            "app",
            connect_timeout=self.settings.connect_timeout,
            autocommit=True,
            application_name="ppp-router-listen",
        )
        with conn.cursor() as cur:
            cur.execute(f"LISTEN {self.channel}")
        return conn

    def start(self, timeout: float = 10.0) -> None:
        self._conn = self._listen()  # the first LISTEN in the caller: its errors are theirs
        self._thread = threading.Thread(target=self._run, name="ppp-placement", daemon=True)
        self._thread.start()
        self._ready.wait(timeout)

    def _run(self) -> None:
        conn = self._conn
        self._ready.set()
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self._listen()
                    self._conn = conn
                    self.on_change(None)  # notifications may have been missed meanwhile
                    self.error = None
                ready, _, _ = select.select([conn], [], [], 0.5)
                if not ready:
                    continue
                conn.poll()
                while conn.notifies:
                    note = conn.notifies.pop(0)
                    self.on_change(note.payload or None)
            except (PPPError, psycopg2.Error, OSError, ValueError) as exc:
                if self._stop.is_set():
                    break
                self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.warning("placement listener: %s; reconnecting", self.error)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = self._conn = None
                self.on_change(None)
                self._stop.wait(self.retry_seconds)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
