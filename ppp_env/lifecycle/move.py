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
is never writable in two places. A tenant in strict isolation (its own login role, see
:mod:`ppp_env.routing.isolation`) keeps it: its role's writes are blocked with the app
role's, the role is created on the target with the same grants just before the switch and
dropped on the source at ``retired`` (each shard's superuser does it).
``move_tenant(..., abort=True)`` takes an unfinished move back before the switch: target copy
dropped, source writable again. A failed verification does that by itself. After the switch,
moving back is another move (``--to <old shard>``).

Who runs what: pg_dump (source) and psql (target) run where :mod:`ppp_env.servers.clients`
says, in the server's container or as local programs at least as new as the server, checked
before a new move records anything; a move to an older major version is refused then too (a
dump is only guaranteed to load into the same major version or a newer one). Online, each
shard's replication work (source: publication, slot, the subscription's connection; target:
the subscription) runs as its ``{db}_admin`` when PostgreSQL lets it (16 and later, with what
``ppp init`` grants), else as its superuser (:func:`move_shard.replication_role`).

``move_tenant(..., after_step=hook)`` calls ``hook(step)`` after each step is recorded: raising
:class:`MoveStopped` there stops the move as if it was killed right then (the tests stop a
move after every step in turn and resume it). The steps themselves are
:class:`ppp_env.lifecycle.mover.Mover`'s.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg2

from ppp_env import db
from ppp_env.errors import PPPError
from ppp_env.identifiers import validate_tenant
from ppp_env.lifecycle import move_shard as shard
from ppp_env.lifecycle.mover import (
    MODES,
    STEPS,
    Mode,
    Mover,
    MoveReport,
    MoveStopped,
    check_superusers,
    replication_name,
    steps_of,
)
from ppp_env.routing import isolation
from ppp_env.servers.clients import Client, client_for, major, server_version, show
from ppp_env.settings import Instance, Settings
from ppp_env.veneer.catalog import Move

__all__ = [
    "MODES",
    "STEPS",
    "CleanupReport",
    "Mode",
    "MoveReport",
    "MoveStopped",
    "check_versions",
    "cleanup_tenant",
    "move_tenant",
    "replication_name",
    "steps_of",
]

#: Session advisory lock on the veneer (first key; second: hashtext(schema)): one mover per
#: tenant at a time.
MOVE_LOCK_NAMESPACE = 0x5050_4D56  # "PPMV"


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


def _read(cur: Any, schema: str) -> tuple[tuple[str, str] | None, Move | None]:
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
        "SELECT schema, source, target, mode, step, error, started_at, updated_at "
        "FROM ppp.moves WHERE schema = %s",
        (schema,),
    )
    m = cur.fetchone()
    return tenant, (None if m is None else Move(*m))


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
        if isolation.existing_role(scur, src, schema):
            check_superusers(schema, src, dst)
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
    after_step: Callable[[str], None] | None = None,
) -> MoveReport:
    """Move ``schema`` to shard ``target`` (see the module's docstring), or resume its
    unfinished move; with ``abort``, take an unfinished move back instead. ``after_step``
    is called with each step's name once it is recorded."""
    validate_tenant(schema)
    if mode is not None and mode not in MODES:
        raise PPPError(f"invalid mode {mode!r}: expected block or online")
    if target is not None:
        settings.shard(target)
    emit = say or (lambda _line: None)
    hook = after_step or (lambda _step: None)
    with _veneer(settings) as vconn:
        _lock(vconn, schema)
        tenant, move = _read(vconn.cursor(), schema)
        if tenant is None:
            raise PPPError(f"unknown tenant {schema!r}: not in the catalog (see `ppp tenant list`)")
        if abort:
            return _abort(settings, schema, target, move, vconn, emit)
        if target is None:
            raise PPPError("which shard? give --to <shard>")
        clients: tuple[Client, Client] | None = None
        if move is not None:
            _check_resume(schema, target, mode, move)
            emit(f"{schema}: resuming the move to {target!r} after step {move.step!r}")
        else:
            move, clients = _start(settings, schema, target, mode or "block", tenant, vconn)
            emit(f"{schema}: moving from {move.source!r} to {target!r} ({move.mode} mode)")
        report = MoveReport(schema, move.source, move.target, move.mode, None)
        if clients is None:
            report.resumed_after = move.step
        report.moved_copy = shard.moved_name(schema, _stamp(move.started_at))
        mover = Mover(settings, schema, move, vconn, emit, report, clients, hook)
        try:
            if clients is not None:
                report.steps.append("started")
                hook("started")
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


def _abort(
    settings: Settings,
    schema: str,
    target: str | None,
    move: Move | None,
    vconn: Any,
    emit: Callable[[str], None],
) -> MoveReport:
    """Take the unfinished move of ``schema`` back (``--abort``)."""
    if move is None:
        raise PPPError(f"tenant {schema!r} has no move under way: nothing to abort")
    if target is not None and target != move.target:
        raise PPPError(f"the move under way takes {schema!r} to {move.target!r}, not {target!r}")
    report = MoveReport(schema, move.source, move.target, move.mode, move.step)
    mover = Mover(settings, schema, move, vconn, emit, report)
    try:
        mover.abort_work()
    finally:
        mover.close()
    report.aborted = True
    emit(f"{schema}: move to {move.target!r} taken back; it stays on {move.source!r}")
    return report


def _check_resume(schema: str, target: str, mode: Mode | None, move: Move) -> None:
    """Only the same move (same target, same mode) may go on."""
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


def _start(
    settings: Settings,
    schema: str,
    target: str,
    mode: str,
    tenant: tuple[str, str],
    vconn: Any,
) -> tuple[Move, tuple[Client, Client]]:
    """Check everything a new move needs, then record it (step ``started``) and mark the
    tenant ``moving``, in one veneer transaction."""
    source, state = tenant
    if source == target:
        raise PPPError(f"tenant {schema!r} is already on shard {target!r}")
    if state != "active":
        raise PPPError(f"tenant {schema!r} is {state}: only an active tenant can be moved")
    clients = _check_new(settings, schema, source, target, mode)
    cur = vconn.cursor()
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
        (schema, source, target, mode),
    )
    started_at = cur.fetchone()[0]
    cur.execute("COMMIT")
    return Move(schema, source, target, mode, "started", None, started_at, started_at), clients


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
