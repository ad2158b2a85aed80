"""The mover: a tenant's move, step by step, each step recorded in ``ppp.moves`` once done.

:class:`Mover` runs the steps of :data:`STEPS` left for a move (see :mod:`ppp_env.lifecycle.move`
for what each one does), each through its own method (:attr:`Mover.WORK`), resuming after the
last recorded one, or takes an unswitched move back (:meth:`Mover.abort_work`). Connections to
the shards are opened once per move; pg_dump and psql run as :mod:`ppp_env.servers.clients`
decides.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import psycopg2
import psycopg2.errors
from sqlalchemy import text

from ppp_env import db
from ppp_env.errors import PPPError
from ppp_env.lifecycle import move_shard as shard
from ppp_env.routing import isolation
from ppp_env.servers.clients import Client, client_for, server_version
from ppp_env.settings import Instance, Role, Settings
from ppp_env.veneer.catalog import Move, admin_connection
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
#: Seconds the initial copy and the catch-up may take before the move stops with an error.
SYNC_TIMEOUT = 3600.0
CATCH_UP_TIMEOUT = 60.0


class MoveStopped(PPPError):
    """Raised by an ``after_step`` hook to stop the move right after a recorded step, as if
    it was killed there: no error is noted, and a rerun resumes."""


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


def steps_of(mode: str) -> list[str]:
    return [s for s in STEPS if mode == "online" or s not in ONLINE_ONLY]


def replication_name(schema: str) -> str:
    """Publication, slot and subscription name of a tenant's move (63 bytes at most)."""
    name = f"ppp_move_{schema}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha1(schema.encode()).hexdigest()[:8]
    return f"ppp_move_{schema[:45]}_{digest}"


def check_superusers(schema: str, source: Instance, target: Instance) -> None:
    """A tenant in strict isolation keeps it through a move: its role is created on the
    target and dropped on the source, as each shard's superuser."""
    for inst in (source, target):
        if not inst.superuser_password:
            raise PPPError(
                f"tenant {schema!r} is in strict isolation: moving it creates its role on the "
                f"target and drops it on the source as each shard's superuser; set "
                f"{inst.env_prefix}SUPERUSER_PASSWORD ({inst.label})"
            )


def _never(_step: str) -> None:
    """The default after-step hook: nothing."""


class Mover:
    def __init__(
        self,
        settings: Settings,
        schema: str,
        move: Move,
        vconn: Any,
        say: Callable[[str], None],
        report: MoveReport,
        clients: tuple[Client, Client] | None = None,
        after_step: Callable[[str], None] = _never,
    ) -> None:
        self.settings = settings
        self.schema = schema
        self.move = move
        self.vconn = vconn
        self.say = say
        self.report = report
        self.after_step = after_step
        self.source: Instance = settings.shard(move.source)
        self.target: Instance = settings.shard(move.target)
        self.name = replication_name(schema)
        self.stack = ExitStack()
        self._conns: dict[tuple[str, str], Any] = {}
        self._roles: dict[str, Role] = {}
        self._clients = clients
        self._blocked_at: float | None = None
        self._strict: tuple[str, list[str]] | bool | None = False  # False: not read yet

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

    # -- strict isolation -------------------------------------------------------------------
    def strict(self) -> tuple[str, list[str]] | None:
        """The tenant's own login role on the source and the shared schemas granted to it,
        when the tenant is in strict isolation (None: it is not, or its role is gone with
        the source copy)."""
        if self._strict is False:
            cur = self.cur("source")
            role = isolation.existing_role(cur, self.source, self.schema)
            self._strict = (
                None
                if role is None
                else (role, isolation.shared_schemas_of(cur, role, self.schema))
            )
        assert self._strict is not True
        return self._strict

    def source_roles(self) -> tuple[str, ...]:
        """Who writes the tenant on the source besides the app role: its own role if strict."""
        strict = self.strict()
        return () if strict is None else (strict[0],)

    def check_strict(self) -> None:
        """A tenant in strict isolation keeps it: its role is created on the target and
        dropped on the source, as each shard's superuser."""
        if self.strict() is not None:
            check_superusers(self.schema, self.source, self.target)

    # -- the record -------------------------------------------------------------------------
    def record(self, step: str) -> None:
        self.vconn.cursor().execute(
            "UPDATE ppp.moves SET step = %s, error = NULL, updated_at = now() WHERE schema = %s",
            (step, self.schema),
        )
        self.recorded(step)

    def recorded(self, step: str) -> None:
        """``step`` is in the catalog: said, reported, and handed to the after-step hook."""
        self.move = dataclasses.replace(self.move, step=step, error=None)
        self.report.steps.append(step)
        self.say(f"{self.schema}: {step}")
        self.after_step(step)

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
        done (a schema copy starts over; so does a subscription that is gone)."""
        order = steps_of(self.move.mode)
        if self.move.step not in order:
            raise PPPError(f"unknown step {self.move.step!r} recorded for {self.schema!r}")
        todo = order[order.index(self.move.step) + 1 :]
        if "switched" not in todo:
            return todo
        restart = self.move.step
        if restart == "schema_copied" or (
            restart in ("subscribed", "synced") and not self.subscribed()
        ):
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
        if "switched" in todo:
            self.check_strict()

    def run(self) -> None:
        """The steps left, each recorded once done (the switch records itself, in the
        veneer's transaction), then the move's record deleted."""
        self.hold_tenant()
        todo = self._todo()
        self._prepare(todo)
        started = time.monotonic()
        for step in todo:
            step_started = time.monotonic()
            self.WORK[step](self)
            self.report.step_seconds[step] = time.monotonic() - step_started
            if step == "switched":
                self.recorded(step)
            else:
                self.record(step)
        self.vconn.cursor().execute("DELETE FROM ppp.moves WHERE schema = %s", (self.schema,))
        self.report.seconds = time.monotonic() - started

    # -- the steps' work --------------------------------------------------------------------
    def _schema_copied(self) -> None:
        self.copy_to_target(with_data=False)

    def _synced(self) -> None:
        t0 = time.monotonic()
        shard.wait_synced(self.cur("target"), self.name, SYNC_TIMEOUT)
        self.report.copy_seconds = time.monotonic() - t0

    def _blocked(self) -> None:
        self._blocked_at = time.monotonic()
        shard.block_writes(
            self.cur("source"),
            self.schema,
            self.source.app_role,
            self.settings.lock_timeout,
            also=self.source_roles(),
        )

    def _copied(self) -> None:
        if self.move.mode == "online":
            token = shard.mark(self.cur("source"), self.name)
            shard.wait_mark(self.cur("target"), self.name, token, CATCH_UP_TIMEOUT)
            shard.copy_sequences(self.cur("source"), self.cur("target"), self.schema)
        else:
            t0 = time.monotonic()
            self.copy_to_target(with_data=True)
            self.report.copy_seconds = time.monotonic() - t0

    def _verified(self) -> None:
        # Online, the checksums were compared at step checked (outside the block); every
        # change since came through the same replication: counts suffice here.
        self.verify(counts_only=self.move.mode == "online")

    def _switched(self) -> None:
        shard.open_writes(self.cur("target"), self.schema, self.target.app_role)
        strict = self.strict()
        if strict is not None:  # the same role and grants on the target, before the switch
            isolation.enable(
                self.settings, self.schema, shared_schemas=strict[1], shard=self.move.target
            )
        self.switch()
        if self._blocked_at is not None:
            self.report.blocked_seconds = time.monotonic() - self._blocked_at

    def _retired(self) -> None:
        self.drop_replication()
        shard.retire_source(
            self.cur("source"),
            self.schema,
            self.report.moved_copy,
            self.move.target,
            self.source.app_role,
        )
        # Strict isolation: the tenant's role goes with the source copy (its sessions too).
        if isolation.existing_role(self.cur("source"), self.source, self.schema):
            isolation.disable(self.settings, self.schema, shard=self.move.source)

    def verify(self, *, counts_only: bool, begun: bool = False, pair: Any = None) -> None:
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
            shard.block_writes(
                src,
                self.schema,
                self.source.app_role,
                self.settings.lock_timeout,
                also=self.source_roles(),
            )
            token = shard.mark(src, self.name)
            shard.snapshot(a)
            shard.wait_mark(self.cur("target"), self.name, token, CATCH_UP_TIMEOUT)
            shard.snapshot(b)
        finally:
            shard.open_writes(src, self.schema, self.source.app_role, also=self.source_roles())
        self.verify(counts_only=False, begun=True, pair=(a, b))

    def subscribed(self) -> bool:
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
        self.move = dataclasses.replace(self.move, step="switched", error=None)

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
            if isolation.existing_role(self.cur("target"), self.target, self.schema):
                isolation.disable(self.settings, self.schema, shard=self.move.target)
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
        shard.open_writes(
            self.cur("source"), self.schema, self.source.app_role, also=self.source_roles()
        )
        cur = self.vconn.cursor()
        cur.execute(
            "BEGIN; UPDATE ppp.tenants SET state = 'active', updated_at = now() "
            "WHERE schema = %s AND state = 'moving'; DELETE FROM ppp.moves WHERE schema = %s; "
            "COMMIT",
            (self.schema, self.schema),
        )

    #: Each step's work, by the step's name.
    WORK: ClassVar[dict[str, Callable[[Mover], None]]] = {
        "schema_copied": _schema_copied,
        "subscribed": subscribe,
        "synced": _synced,
        "checked": check_online,
        "blocked": _blocked,
        "copied": _copied,
        "verified": _verified,
        "switched": _switched,
        "retired": _retired,
    }
