"""Move a tenant to another shard, online or with writes blocked, and never lose it.

``move_tenant(settings, schema, target, mode=...)`` copies the tenant's schema to the target
shard, verifies it (row count and checksum per table, source against target), switches the
veneer in one transaction (the catalog's ``shard`` and the tenant's foreign tables, re-created
on the target's server: readers see the old tables or the new ones, never none), and keeps
the source copy renamed ``ppp_moved_<schema>_<started>`` and closed to the app role until
:func:`cleanup_tenant` drops it.

Steps, each recorded in ``ppp.moves.step`` (veneer catalog) once done:

=============== ======== ==========================================================================
step            mode     done when
=============== ======== ==========================================================================
started         both     the move is recorded and the tenant is ``moving`` (nothing else changed)
schema_copied   online   the target has the schema's DDL (``pg_dump --schema-only``), no app writes
subscribed      online   publication (source) + slot + subscription (target) exist
synced          online   the subscription copied every table (every table ``ready``)
blocked         both     the source's app role lost INSERT/UPDATE/DELETE and no writer is left
copied          both     block: ``pg_dump | psql`` in one transaction; online: the target confirmed
                         every change up to the source's WAL position after the block, and the
                         sequences are set to the source's values
verified        both     count and checksum of every table equal on both shards
switched        both     the veneer's catalog and foreign tables point at the target (one
                         transaction; the target's app role got its DML back just before)
retired         both     subscription, slot and publication dropped; the source schema renamed,
                         closed to the app role
(row deleted)   both     done: the tenant is ``active`` on the target
=============== ======== ==========================================================================

Rerunning the same move (same tenant and target) after a crash or a kill resumes: before
``switched`` the steps are repeated from the recorded one (a step whose work may be half
done starts over: the target's copy is dropped and made again); from ``switched`` on it only
finishes. Until the switch the tenant is wholly on its source (the veneer reads it there; the
target is closed to the app role); from the block on the source refuses writes, so the tenant
is never writable in two places. ``move_tenant(..., abort=True)`` takes an unfinished move back
before the switch: target copy dropped, source writable again. A failed verification does that
by itself. After the switch, moving back is another move (``--to <old shard>``).

Who runs what: pg_dump (source) and psql (target) run where :mod:`ppp_env.servers.clients`
says, in the server's container or as local programs at least as new as the server, checked
before a new move records anything; a move to an older major version is refused then too (a
dump is only guaranteed to load into the same major version or a newer one). Online, each
shard's replication work (source: publication, slot, the subscription's connection; target:
the subscription) runs as its ``{db}_admin`` when PostgreSQL lets it (16 and later, with what
``ppp init`` grants), else as its superuser (:func:`move_shard.replication_role`).

Test hook: ``PPP_TEST_MOVE_STOP_AFTER=<step>`` makes the mover stop (``MoveStopped``, a
PPPError) right after recording that step, as if it was killed there.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import psycopg2
import psycopg2.errors
from sqlalchemy import text

from ppp_env import db
from ppp_env.errors import PPPError
from ppp_env.identifiers import validate_tenant
from ppp_env.lifecycle import move_shard as shard
from ppp_env.servers.clients import Client, client_for, major, server_version, show
from ppp_env.settings import Instance, Role, Settings
from ppp_env.veneer.catalog import admin_connection
from ppp_env.veneer.tables import refresh_in

Mode = Literal["block", "online"]
MODES: tuple[Mode, ...] = ("block", "online")
STEPS = (
    "started",
    "schema_copied",
    "subscribed",
    "synced",
    "checked",
    "blocked",
    "copied",
    "verified",
    "switched",
    "retired",
)
ONLINE_ONLY = ("schema_copied", "subscribed", "synced", "checked")
STOP_ENV = "PPP_TEST_MOVE_STOP_AFTER"
#: Session advisory lock on the veneer (first key; second: hashtext(schema)): one mover per
#: tenant at a time.
MOVE_LOCK_NAMESPACE = 0x5050_4D56  # "PPMV"
#: Seconds the initial copy and the catch-up may take before the move stops with an error.
SYNC_TIMEOUT = 3600.0
CATCH_UP_TIMEOUT = 60.0


class MoveStopped(PPPError):
    """Raised by the test hook ``PPP_TEST_MOVE_STOP_AFTER``: the move stopped after a step."""


@dataclass
class MoveReport:
    schema: str
    source: str
    target: str
    mode: str
    #: The recorded step a rerun resumed after (None: a new move).
    resumed_after: str | None = None
    #: The source copy's new name, on the source shard.
    moved_copy: str = ""
    rows: dict[str, int] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: From blocking the source's writes to the switch (the time writes were refused).
    blocked_seconds: float = 0.0
    #: The data copy: block mode pg_dump | psql; online mode the subscription's initial copy.
    copy_seconds: float = 0.0
    aborted: bool = False
    #: Seconds each step of this run took.
    step_seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Move:
    source: str
    target: str
    mode: str
    step: str
    error: str | None
    started_at: datetime


def steps_of(mode: str) -> list[str]:
    return [s for s in STEPS if mode == "online" or s not in ONLINE_ONLY]


def replication_name(schema: str) -> str:
    """Publication, slot and subscription name of a tenant's move (63 bytes at most)."""
    name = f"ppp_move_{schema}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha1(schema.encode()).hexdigest()[:8]
    return f"ppp_move_{schema[:45]}_{digest}"


def _stamp(started_at: datetime) -> str:
    return started_at.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S")


@contextmanager
def _veneer(settings: Settings) -> Iterator[Any]:
    conn = db.connect(
        settings.veneer, "admin", autocommit=True, connect_timeout=settings.connect_timeout
    )
    try:
        yield conn
    finally:
        conn.close()


def _read(cur: Any, schema: str) -> tuple[tuple[str, str] | None, _Move | None]:
    cur.execute("SELECT to_regclass('ppp.moves') IS NOT NULL, to_regclass('ppp.tenants')")
    has_moves, has_tenants = cur.fetchone()
    if has_tenants is None:
        raise PPPError("the catalog does not exist yet: run `alembic -n veneer upgrade head`")
    if not has_moves:
        raise PPPError(
            "the catalog has no ppp.moves table: run `ppp veneer upgrade` (the lifecycle "
            "revision adds it)"
        )
    cur.execute("SELECT shard, state FROM ppp.tenants WHERE schema = %s", (schema,))
    row = cur.fetchone()
    tenant = None if row is None else (str(row[0]), str(row[1]))
    cur.execute(
        "SELECT source, target, mode, step, error, started_at FROM ppp.moves WHERE schema = %s",
        (schema,),
    )
    m = cur.fetchone()
    return tenant, (None if m is None else _Move(*m))


class _Mover:
    def __init__(
        self,
        settings: Settings,
        schema: str,
        move: _Move,
        vconn: Any,
        say: Callable[[str], None],
        report: MoveReport,
        clients: tuple[Client, Client] | None = None,
    ) -> None:
        self.settings = settings
        self.schema = schema
        self.move = move
        self.vconn = vconn
        self.say = say
        self.report = report
        self.source: Instance = settings.shard(move.source)
        self.target: Instance = settings.shard(move.target)
        self.name = replication_name(schema)
        self.stack = ExitStack()
        self._conns: dict[tuple[str, str], Any] = {}
        self._roles: dict[str, Role] = {}
        self._clients = clients

    # -- connections ------------------------------------------------------------------------
    def conn(self, which: str, role: Role = "admin") -> Any:
        key = (which, role)
        if key not in self._conns:
            inst = self.source if which == "source" else self.target
            conn = db.connect(
                inst,
                role,
                dbname=inst.dbname,
                autocommit=True,
                connect_timeout=self.settings.connect_timeout,
            )
            self.stack.callback(conn.close)
            self._conns[key] = conn
        return self._conns[key]

    def role(self, which: shard.Side) -> Role:
        """Who does the replication work on that side (see :func:`shard.replication_role`)."""
        if which not in self._roles:
            inst = self.source if which == "source" else self.target
            self._roles[which] = shard.replication_role(self.cur(which), inst, which)
        return self._roles[which]

    def repl(self, which: shard.Side) -> Any:
        """A cursor as that side's replication role."""
        return self.cur(which, self.role(which))

    def clients(self) -> tuple[Client, Client]:
        """How to run pg_dump on the source and psql on the target."""
        if self._clients is None:
            self._clients = (
                self._client(self.source, self.cur("source")),
                self._client(self.target, self.cur("target")),
            )
        return self._clients

    def _client(self, inst: Instance, cur: Any) -> Client:
        return client_for(inst, server_version(cur), connect_timeout=self.settings.connect_timeout)

    def cur(self, which: str, role: Role = "admin") -> Any:
        return self.conn(which, role).cursor()

    def close(self) -> None:
        self.stack.close()

    # -- the record -------------------------------------------------------------------------
    def record(self, step: str) -> None:
        self.vconn.cursor().execute(
            "UPDATE ppp.moves SET step = %s, error = NULL, updated_at = now() WHERE schema = %s",
            (step, self.schema),
        )
        self.move = _Move(
            self.move.source, self.move.target, self.move.mode, step, None, self.move.started_at
        )
        self.report.steps.append(step)
        self.say(f"{self.schema}: {step}")
        if os.environ.get(STOP_ENV) == step:
            raise MoveStopped(f"stopped after step {step!r} ({STOP_ENV})")

    # -- steps ------------------------------------------------------------------------------
    def copy_to_target(self, *, with_data: bool) -> None:
        """A fresh copy of the tenant's schema on the target (its data too, or only its DDL
        for an online move), closed to the target's app role until the switch."""
        self.reset_target()
        shard.prepare_target(self.cur("target"), self.target.app_role)
        shard.copy_schema(
            self.source,
            self.target,
            self.schema,
            with_data=with_data,
            connect_timeout=self.settings.connect_timeout,
            clients=self.clients(),
        )
        shard.close_writes(self.cur("target"), self.schema, self.target.app_role)

    def reset_target(self) -> None:
        """Drop whatever an interrupted run made on the target (and the replication objects)."""
        if self.move.mode == "online":
            self.drop_replication()
        shard.drop_schema(self.cur("target"), self.schema)

    def drop_replication(self) -> None:
        if self.move.mode != "online":
            return
        shard.drop_subscription(self.repl("target"), self.name)
        shard.drop_publication_and_slot(self.repl("source"), self.name)
        shard.drop_marker(self.cur("target"), self.name)
        shard.drop_marker(self.cur("source"), self.name)

    def subscribe(self) -> None:
        """Marker tables, publication and slot on the source, subscription on the target."""
        shard.create_marker(self.cur("source"), self.name, self.source.app_role)
        shard.create_marker(self.cur("target"), self.name, self.target.app_role)
        src, as_admin = self.repl("source"), self.role("source") == "admin"
        shard.create_publication(src, self.name, self.schema, listed=as_admin)
        shard.create_slot(src, self.name)
        shard.create_subscription(self.repl("target"), self.name, self.source, self.role("source"))

    def hold_tenant(self) -> None:
        """The fleet's per-tenant advisory lock on the source, for the whole move: no tenant
        migration runs on it meanwhile (logical replication does not carry DDL)."""
        from ppp_env.fleet.worker import LOCK_NAMESPACE

        cur = self.cur("source")
        try:
            cur.execute(
                f"SET lock_timeout = '{int(self.settings.lock_timeout * 1000)}ms'; "
                "SELECT pg_advisory_lock(%s, hashtext(%s))",
                (LOCK_NAMESPACE, self.schema),
            )
        except psycopg2.errors.LockNotAvailable:
            raise PPPError(
                f"tenant {self.schema!r} is being migrated on shard {self.move.source!r} "
                f"(waited {self.settings.lock_timeout:g} s, PPP_LOCK_TIMEOUT): try again when "
                "the migration is done"
            ) from None
        finally:
            cur.execute("RESET lock_timeout")

    def _todo(self) -> list[str]:
        """The steps left; before the switch, from the last one whose work cannot be half
        done."""
        order = steps_of(self.move.mode)
        if self.move.step not in order:
            raise PPPError(f"unknown step {self.move.step!r} recorded for {self.schema!r}")
        todo = order[order.index(self.move.step) + 1 :]
        if "switched" not in todo:
            return todo
        restart = {
            "started": "started",
            "schema_copied": "started",
            "subscribed": "subscribed",
            "synced": "synced",
            "checked": "checked",
            "blocked": "blocked",
            "copied": "copied",
            "verified": "verified",
        }[self.move.step]
        if self.move.step in ("subscribed", "synced") and not self._subscribed():
            restart = "started"
        return order[order.index(restart) + 1 :]

    def _prepare(self, todo: list[str]) -> None:
        """What the steps left need from this machine and the shards' roles, checked before
        any of them runs (a resumed move may run elsewhere than the one that started it)."""
        if "schema_copied" in todo or (self.move.mode == "block" and "copied" in todo):
            self.clients()
        if self.move.mode == "online" and "subscribed" in todo:
            self.role("source")
            self.role("target")

    def run(self) -> None:
        self.hold_tenant()
        todo = self._todo()
        self._prepare(todo)
        started = time.monotonic()
        blocked_at: float | None = None
        for step in todo:
            step_started = time.monotonic()
            if step == "schema_copied":
                self.copy_to_target(with_data=False)
            elif step == "subscribed":
                self.subscribe()
            elif step == "synced":
                t0 = time.monotonic()
                shard.wait_synced(self.cur("target"), self.name, SYNC_TIMEOUT)
                self.report.copy_seconds = time.monotonic() - t0
            elif step == "checked":
                self.check_online()
            elif step == "blocked":
                blocked_at = time.monotonic()
                shard.block_writes(
                    self.cur("source"),
                    self.schema,
                    self.source.app_role,
                    self.settings.lock_timeout,
                )
            elif step == "copied":
                if self.move.mode == "online":
                    token = shard.mark(self.cur("source"), self.name)
                    shard.wait_mark(self.cur("target"), self.name, token, CATCH_UP_TIMEOUT)
                    shard.copy_sequences(self.cur("source"), self.cur("target"), self.schema)
                else:
                    t0 = time.monotonic()
                    self.copy_to_target(with_data=True)
                    self.report.copy_seconds = time.monotonic() - t0
            elif step == "verified":
                # Online, the checksums were compared at step checked (outside the block);
                # every change since came through the same replication: counts suffice here.
                self._verify(counts_only=self.move.mode == "online")
            elif step == "switched":
                shard.open_writes(self.cur("target"), self.schema, self.target.app_role)
                self.switch()
                if blocked_at is not None:
                    self.report.blocked_seconds = time.monotonic() - blocked_at
                self.report.step_seconds[step] = time.monotonic() - step_started
                self.report.steps.append(step)
                self.say(f"{self.schema}: {step}")
                if os.environ.get(STOP_ENV) == step:
                    raise MoveStopped(f"stopped after step {step!r} ({STOP_ENV})")
                continue
            elif step == "retired":
                self.drop_replication()
                shard.retire_source(
                    self.cur("source"),
                    self.schema,
                    self.report.moved_copy,
                    self.move.target,
                    self.source.app_role,
                )
            self.report.step_seconds[step] = time.monotonic() - step_started
            self.record(step)
        self.vconn.cursor().execute("DELETE FROM ppp.moves WHERE schema = %s", (self.schema,))
        self.report.seconds = time.monotonic() - started

    def _verify(self, *, counts_only: bool, begun: bool = False, pair: Any = None) -> None:
        a, b = pair or (self.conn("source"), self.conn("target"))
        try:
            rows = shard.verify(a, b, self.schema, counts_only=counts_only, begun=begun)
        except PPPError as exc:
            self.abort_work()
            self.report.aborted = True
            raise PPPError(
                f"{exc}; the move was taken back: {self.schema!r} stays on shard "
                f"{self.move.source!r}, writable again"
            ) from None
        self.report.rows = rows

    def check_online(self) -> None:
        """Checksums of a pair of snapshots of the same data, compared while writes go on.

        Writes are blocked on the source for as long as it takes the target to receive a
        marker written after the block (milliseconds): a snapshot on each side then sees the
        same rows; the source is writable again before the (long) checksums run.
        """
        a = db.connect(self.source, "admin", connect_timeout=self.settings.connect_timeout)
        b = db.connect(self.target, "admin", connect_timeout=self.settings.connect_timeout)
        a.autocommit = b.autocommit = True
        self.stack.callback(a.close)
        self.stack.callback(b.close)
        src = self.cur("source")
        try:
            shard.block_writes(src, self.schema, self.source.app_role, self.settings.lock_timeout)
            token = shard.mark(src, self.name)
            shard.snapshot(a)
            shard.wait_mark(self.cur("target"), self.name, token, CATCH_UP_TIMEOUT)
            shard.snapshot(b)
        finally:
            shard.open_writes(src, self.schema, self.source.app_role)
        self._verify(counts_only=False, begun=True, pair=(a, b))

    def _subscribed(self) -> bool:
        cur = self.cur("target")
        cur.execute("SELECT 1 FROM pg_subscription WHERE subname = %s", (self.name,))
        return cur.fetchone() is not None

    def switch(self) -> None:
        """Catalog and foreign tables to the target, in one veneer transaction."""
        with admin_connection(self.settings) as conn:
            step = conn.execute(
                text("SELECT step FROM ppp.moves WHERE schema = :s FOR UPDATE"), {"s": self.schema}
            ).scalar()
            if step != "verified":
                raise PPPError(f"the move of {self.schema!r} is at step {step!r}, not verified")
            conn.execute(
                text(
                    "UPDATE ppp.tenants SET shard = :t, state = 'active', updated_at = now() "
                    "WHERE schema = :s"
                ),
                {"s": self.schema, "t": self.move.target},
            )
            conn.execute(
                text(
                    "UPDATE ppp.moves SET step = 'switched', error = NULL, updated_at = now() "
                    "WHERE schema = :s"
                ),
                {"s": self.schema},
            )
            report = refresh_in(conn, self.settings, [self.schema], full=True)
            if report.errors or self.schema not in report.refreshed:
                why = report.errors.get(self.schema, "its schema is not on the target")
                raise PPPError(
                    f"cannot wire {self.schema!r} on shard {self.move.target!r}: {why}; the "
                    "veneer still reads it on its source (rerun to try again)"
                )
        self.move = _Move(
            self.move.source,
            self.move.target,
            self.move.mode,
            "switched",
            None,
            self.move.started_at,
        )

    def abort_work(self) -> None:
        """Take an unswitched move back: target copy and replication dropped, source writable,
        the tenant active on its source, the move's record gone."""
        if STEPS.index(self.move.step) >= STEPS.index("switched"):
            raise PPPError(
                f"the move of {self.schema!r} to {self.move.target!r} is past the switch: the "
                f"veneer reads it there; finish it (`ppp tenant move {self.schema} --to "
                f"{self.move.target}`) and move it back"
            )
        try:
            self.reset_target()
        except (PPPError, psycopg2.Error) as exc:
            # The target is gone: the tenant still goes back to its source. What is left
            # there (the copy, a subscription) is named for the operator.
            why = str(exc) if isinstance(exc, PPPError) else db.error_text(exc)
            if self.move.mode == "online":
                shard.drop_publication_and_slot(self.repl("source"), self.name)
                shard.drop_marker(self.cur("source"), self.name)
            self.say(
                f"{self.schema}: could not clean up shard {self.move.target!r} ({why}); when it "
                f"is back, drop schema {self.schema}"
                + (f" and subscription {self.name}" if self.move.mode == "online" else "")
                + " there"
            )
        shard.open_writes(self.cur("source"), self.schema, self.source.app_role)
        cur = self.vconn.cursor()
        cur.execute(
            "BEGIN; UPDATE ppp.tenants SET state = 'active', updated_at = now() "
            "WHERE schema = %s AND state = 'moving'; DELETE FROM ppp.moves WHERE schema = %s; "
            "COMMIT",
            (self.schema, self.schema),
        )


def _lock(vconn: Any, schema: str) -> None:
    cur = vconn.cursor()
    cur.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (MOVE_LOCK_NAMESPACE, schema))
    if not cur.fetchone()[0]:
        raise PPPError(f"tenant {schema!r} is being moved by another process right now")


def _check_new(
    settings: Settings, schema: str, source: str, target: str, mode: str
) -> tuple[Client, Client]:
    """Everything a new move needs, checked before anything changes; how to run the client
    programs on the source and on the target."""
    src, dst = settings.shard(source), settings.shard(target)
    timeout = settings.connect_timeout
    with (
        db.connection(src, "admin", autocommit=True, connect_timeout=timeout) as a,
        db.connection(dst, "admin", autocommit=True, connect_timeout=timeout) as b,
    ):
        scur, dcur = a.cursor(), b.cursor()
        _check_source(scur, schema, source, mode)
        if shard.schema_exists(dcur, schema):
            raise PPPError(
                f"shard {target!r} already has a schema {schema!r} (not this tenant's: the "
                "catalog places it elsewhere); drop or rename it there first"
            )
        versions = server_version(scur), server_version(dcur)
        check_versions(schema, src, dst, *versions)
        clients = (
            client_for(src, versions[0], connect_timeout=timeout),
            client_for(dst, versions[1], connect_timeout=timeout),
        )
        if mode == "online":
            _check_online(scur, dcur, schema, src, dst)
    return clients


def _check_source(cur: Any, schema: str, source: str, mode: str) -> None:
    """The tenant is there, no migration holds it, and (online) replication can carry it."""
    from ppp_env.fleet.worker import LOCK_NAMESPACE

    cur.execute("SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))", (LOCK_NAMESPACE, schema))
    if not cur.fetchone()[0]:
        raise PPPError(
            f"tenant {schema!r} is being migrated on shard {source!r}: try again when the "
            "migration is done"
        )
    if not shard.schema_exists(cur, schema):
        raise PPPError(
            f"tenant {schema!r} has no schema on shard {source!r} yet: nothing to move (run "
            "`ppp migrate` first, or change its shard in the catalog)"
        )
    if mode != "online":
        return
    bad = shard.without_identity(cur, schema)
    if bad:
        raise PPPError(
            f"cannot move {schema!r} online: table(s) {', '.join(bad)} have no primary key or "
            "replica identity (logical replication could not apply their updates); use "
            "--mode block"
        )
    bad = shard.unlogged(cur, schema)
    if bad:
        raise PPPError(
            f"cannot move {schema!r} online: table(s) {', '.join(bad)} are unlogged (logical "
            "replication does not carry their rows); use --mode block"
        )


def check_versions(schema: str, src: Instance, dst: Instance, old: int, new: int) -> None:
    """A dump loads into the same major version or a newer one, never an older one."""
    if major(old) > major(new):
        raise PPPError(
            f"cannot move {schema!r} from {src.label} (PostgreSQL {show(old)}) to {dst.label} "
            f"(PostgreSQL {show(new)}): a dump of a newer major version is not guaranteed to "
            f"load into an older one, so move it to a shard of PostgreSQL {show(old, full=False)}"
            " or later"
        )


def _check_online(scur: Any, dcur: Any, schema: str, src: Instance, dst: Instance) -> None:
    """Logical decoding on the source, and a role on each side that may replicate."""
    scur.execute("SELECT current_setting('wal_level')")
    level = scur.fetchone()[0]
    if level != "logical":
        raise PPPError(
            f"cannot move {schema!r} online: {src.label} runs with wal_level = {level}; set "
            "wal_level = logical there and restart it, or use --mode block"
        )
    publisher = shard.replication_role(scur, src, "source")
    shard.replication_role(dcur, dst, "target")
    bad = shard.not_owned(scur, schema) if publisher == "admin" else []
    if bad:
        raise PPPError(
            f"cannot move {schema!r} online: table(s) {', '.join(bad)} are not owned by "
            f"{src.admin_role} on {src.label} (its publication lists tables it owns); change "
            "their owner or use --mode block"
        )


def move_tenant(
    settings: Settings,
    schema: str,
    target: str | None = None,
    *,
    mode: Mode | None = None,
    abort: bool = False,
    say: Callable[[str], None] | None = None,
) -> MoveReport:
    """Move ``schema`` to shard ``target`` (see the module's docstring), or resume its
    unfinished move; with ``abort``, take an unfinished move back instead."""
    validate_tenant(schema)
    if mode is not None and mode not in MODES:
        raise PPPError(f"invalid mode {mode!r}: expected block or online")
    if target is not None:
        settings.shard(target)
    emit = say or (lambda _line: None)
    with _veneer(settings) as vconn:
        _lock(vconn, schema)
        cur = vconn.cursor()
        tenant, move = _read(cur, schema)
        if tenant is None:
            raise PPPError(f"unknown tenant {schema!r}: not in the catalog (see `ppp tenant list`)")
        if abort:
            if move is None:
                raise PPPError(f"tenant {schema!r} has no move under way: nothing to abort")
            if target is not None and target != move.target:
                raise PPPError(
                    f"the move under way takes {schema!r} to {move.target!r}, not {target!r}"
                )
            report = MoveReport(schema, move.source, move.target, move.mode, move.step)
            mover = _Mover(settings, schema, move, vconn, emit, report)
            try:
                mover.abort_work()
            finally:
                mover.close()
            report.aborted = True
            emit(f"{schema}: move to {move.target!r} taken back; it stays on {move.source!r}")
            return report
        if target is None:
            raise PPPError("which shard? give --to <shard>")
        if move is not None:
            if move.target != target:
                raise PPPError(
                    f"tenant {schema!r} is in the middle of a move from {move.source!r} to "
                    f"{move.target!r} (step {move.step}): rerun `ppp tenant move {schema} --to "
                    f"{move.target}` to finish it, or add --abort to take it back"
                )
            if mode is not None and mode != move.mode:
                raise PPPError(
                    f"the move of {schema!r} under way runs in mode {move.mode!r}: rerun it "
                    f"with --mode {move.mode} (or without --mode)"
                )
            resumed: str | None = move.step
            checked = None
            emit(f"{schema}: resuming the move to {target!r} after step {move.step!r}")
        else:
            source, state = tenant
            if source == target:
                raise PPPError(f"tenant {schema!r} is already on shard {target!r}")
            if state != "active":
                raise PPPError(f"tenant {schema!r} is {state}: only an active tenant can be moved")
            chosen: str = mode or "block"
            checked = _check_new(settings, schema, source, target, chosen)
            cur.execute(
                "BEGIN; UPDATE ppp.tenants SET state = 'moving', updated_at = now() "
                "WHERE schema = %s AND shard = %s AND state = 'active'",
                (schema, source),
            )
            if cur.rowcount != 1:
                cur.execute("ROLLBACK")
                raise PPPError(f"tenant {schema!r} changed while the move started: try again")
            cur.execute(
                "INSERT INTO ppp.moves (schema, source, target, mode, step) "
                "VALUES (%s, %s, %s, %s, 'started') RETURNING started_at",
                (schema, source, target, chosen),
            )
            started_at = cur.fetchone()[0]
            cur.execute("COMMIT")
            move = _Move(source, target, chosen, "started", None, started_at)
            resumed = None
            emit(f"{schema}: moving from {source!r} to {target!r} ({chosen} mode)")
        report = MoveReport(schema, move.source, move.target, move.mode, resumed)
        report.moved_copy = shard.moved_name(schema, _stamp(move.started_at))
        mover = _Mover(settings, schema, move, vconn, emit, report, checked)
        if resumed is None:
            report.steps.append("started")
            if os.environ.get(STOP_ENV) == "started":
                mover.close()
                raise MoveStopped(f"stopped after step 'started' ({STOP_ENV})")
        try:
            mover.run()
        except (PPPError, psycopg2.Error) as exc:
            if isinstance(exc, MoveStopped) or report.aborted:
                raise
            why = str(exc) if isinstance(exc, PPPError) else db.error_text(exc)
            _note_error(vconn, schema, why)
            raise PPPError(
                f"{why} (the move stopped after step {mover.move.step!r}: rerun the same "
                f"command to resume, or add --abort to take it back)"
            ) from None
        finally:
            mover.close()
        return report


def _note_error(vconn: Any, schema: str, error: str) -> None:
    # The veneer itself may be gone: then the step recorded is what counts.
    with contextlib.suppress(Exception):
        vconn.cursor().execute(
            "UPDATE ppp.moves SET error = %s, updated_at = now() WHERE schema = %s",
            (error[:2000], schema),
        )


@dataclass
class CleanupReport:
    schema: str
    dropped: list[tuple[str, str]] = field(default_factory=list)


def cleanup_tenant(settings: Settings, schema: str) -> CleanupReport:
    """Drop the moved copies of ``schema`` left on any shard (``ppp_moved_<schema>_*``)."""
    validate_tenant(schema)
    with _veneer(settings) as vconn:
        cur = vconn.cursor()
        tenant, move = _read(cur, schema)
        if tenant is None:
            raise PPPError(f"unknown tenant {schema!r}: not in the catalog (see `ppp tenant list`)")
        if move is not None and move.step != "retired":
            raise PPPError(
                f"tenant {schema!r} is in the middle of a move to {move.target!r} (step "
                f"{move.step}): finish it first"
            )
    report = CleanupReport(schema)
    found: dict[str, list[str]] = {}
    for name, inst in settings.shards.items():
        with db.connection(
            inst, "admin", autocommit=True, connect_timeout=settings.connect_timeout
        ) as conn:
            found[name] = shard.moved_copies(conn.cursor(), schema)
    for name, copies in found.items():
        if not copies:
            continue
        with db.connection(
            settings.shards[name], "admin", autocommit=True,
            connect_timeout=settings.connect_timeout,
        ) as conn:  # fmt: skip
            for copy in copies:
                shard.drop_schema(conn.cursor(), copy)
                report.dropped.append((name, copy))
    return report
