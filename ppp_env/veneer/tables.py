"""Tenants' foreign tables in the veneer, kept in step with their shards: the refresh.

Everything here runs as ``veneer_admin`` (never a superuser) on a SQLAlchemy connection.
:func:`refresh` (its own transactions) and :func:`refresh_in` (inside the caller's, e.g. a
veneer migration's or a move's switch) bring tenants' foreign tables in step with their
shards, in four steps, each in its own module:

1. :mod:`ppp_env.veneer.remote`: per shard, one connection reads every tenant table's
   signature and the tenant's types (shards in parallel);
2. :mod:`ppp_env.veneer.plan`: the veneer schemas as they are and PPP's record of what it
   wired (``ppp.wired_objects``) give, per tenant, what to drop, create or alter (only the
   tables whose signature changed);
3. the shards again: the column list of one table per signature to create;
4. :mod:`ppp_env.veneer.apply`: the statements, in batches whose locks stay under
   :data:`LOCK_BUDGET`, each tenant atomically (a reader waits at most, then sees the new
   foreign table, never a missing one).

Foreign servers and user mappings are :mod:`ppp_env.veneer.wiring`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError

from ppp_env.db import each_at_once, first_line
from ppp_env.errors import PPPError
from ppp_env.identifiers import quote_ident
from ppp_env.settings import Settings
from ppp_env.tenant_state import group_by_shard, reset_changes, revision_heads
from ppp_env.veneer import catalog, views
from ppp_env.veneer.apply import VeneerLost, apply, fail_if_lost, unit
from ppp_env.veneer.plan import (
    LOCK_BUDGET,
    TABLE,
    WIRED,
    PartialRead,
    Plan,
    RefreshReport,
    create_locks,
    diff,
    ensure_wired,
    finish,
    read_labels,
    read_live,
)
from ppp_env.veneer.remote import RemoteTenant, ShardReader, read_remote
from ppp_env.veneer.wiring import VENEER_LOCK_KEY, ddl, lock

__all__ = [
    "LOCK_BUDGET",
    "WIRED",
    "RefreshReport",
    "read_remote",
    "refresh",
    "refresh_in",
    "unwire",
]

log = logging.getLogger("ppp.veneer")
#: Rows of the record written by one refresh after which it analyzes the record.
_ANALYZE_AFTER = 1000


class _Shards:
    """The shards' side of a refresh: a :class:`ShardReader` per shard, used from a thread
    each; a shard that cannot be read is an error for each of its tenants."""

    def __init__(self, settings: Settings, report: RefreshReport, nextval: bool) -> None:
        self.settings = settings
        self.report = report
        self.readers: dict[str, ShardReader] = {}
        #: The veneer has ``ppp_remote.nextval``: sequence defaults call it.
        self.nextval = nextval

    def _each(self, work: Mapping[str, list[str]], job: Any) -> dict[str, Any]:
        """``job(shard)`` for every shard of ``work`` (shard -> its tenants) in parallel; a
        shard that fails is an error of each of its tenants, the others go on."""

        def guarded(shard: str) -> Any:
            try:
                return job(shard)
            except PPPError:
                raise
            except Exception as exc:
                raise PPPError(f"cannot read shard {shard!r}: {first_line(exc)}") from exc

        out, failed = each_at_once(work, guarded, self.settings.jobs)
        for shard, exc in failed.items():
            for schema in work[shard]:
                self.report.errors[schema] = str(exc)
        return out

    def tenants(
        self,
        wanted: Sequence[catalog.Tenant],
        revisions: Mapping[str, str | None] | None,
        follow: Mapping[str, str | None] | None = None,
    ) -> dict[str, RemoteTenant]:
        """Phase 1 for every wanted tenant (see :meth:`ShardReader.tenants`; ``follow``:
        the tenants that may be read partially, with the revision the veneer wired)."""
        by_shard = group_by_shard(wanted)
        for shard, schemas in by_shard.items():
            if shard not in self.settings.shards:
                for schema in schemas:
                    self.report.errors[schema] = (
                        f"its shard {shard!r} is not in the settings (PPP_SHARDS lists "
                        f"{', '.join(self.settings.shards) or 'none'})"
                    )
        work = {s: names for s, names in by_shard.items() if s in self.settings.shards}

        def read(shard: str) -> dict[str, RemoteTenant]:
            reader = self.readers.get(shard)
            if reader is None:
                reader = ShardReader(self.settings.shards[shard], self.settings.connect_timeout)
                self.readers[shard] = reader
            names = set(work[shard])
            mine = {s: r for s, r in (revisions or {}).items() if s in names}
            followed = {s: r for s, r in (follow or {}).items() if s in names}
            return reader.tenants(work[shard], mine, followed)

        remote: dict[str, RemoteTenant] = {}
        for found in self._each(work, read).values():
            remote.update(found)
        return remote

    def definitions(self, plans: Sequence[Plan]) -> dict[str, dict[str, str]]:
        """Phase 2: shard -> signature -> column list, for the tables the plans create (one
        table read per signature)."""
        wanted: dict[str, dict[str, tuple[str, str]]] = {}
        tenants: dict[str, list[str]] = {}
        for plan in plans:
            if plan.create_tables:
                mine = wanted.setdefault(plan.tenant.shard, {})
                tenants.setdefault(plan.tenant.shard, []).append(plan.schema)
                for name, sig in plan.create_tables:
                    mine.setdefault(sig, (plan.schema, name))
        found = self._each(
            tenants,
            lambda shard: self.readers[shard].definitions(
                wanted[shard], shard if self.nextval else None
            ),
        )
        return {shard: found.get(shard, {}) for shard in wanted}

    def restart_tracking(self, plans: Sequence[Plan]) -> None:
        """After the veneer committed, start the shards' change tracking of the tenants it
        wired anew (one statement per shard, on its reader's connection; see
        :func:`ppp_env.tenant_state.reset_changes`). A failure is only logged: those
        tenants' next refresh compares every table."""
        rows: dict[str, list[tuple[str, Sequence[str], Any, str | None]]] = {}
        for p in plans:
            row = p.tracking
            if row is None or p.needs_full or p.schema not in self.report.revisions:
                continue
            if row.heads != revision_heads(p.revision):
                continue  # wired at other heads than the row's: compared fully next time
            if row.changed == frozenset() and row.since == row.heads:
                continue  # already fresh
            rows.setdefault(p.tenant.shard, []).append(
                (p.schema, row.heads, row.updated_at, row.xact)
            )
        for shard, mine in rows.items():
            reader = self.readers.get(shard)
            if reader is None:
                continue
            try:
                reset_changes(reader.cur, mine)
                reader.conn.commit()
            except Exception as exc:  # the refresh stands; the next one compares fully
                log.warning(
                    "refresh: cannot restart the change tracking on shard %r: %s",
                    shard,
                    first_line(exc),
                )

    def close(self) -> None:
        for reader in self.readers.values():
            self.report.tables_read += reader.tables_read
            reader.close()


@contextmanager
def _reading(conn: Connection, own: bool) -> Iterator[None]:
    if own:
        with conn.begin():
            yield
    else:
        yield


def _refresh(
    conn: Connection,
    settings: Settings,
    tenants: Sequence[str] | None,
    revisions: Mapping[str, str | None] | None,
    full: bool,
    own: bool,
    follow: bool = False,
    wired_only: bool = False,
) -> RefreshReport:
    started = time.monotonic()
    report = RefreshReport()
    wanted, nextval = _from_catalog(conn, settings, tenants, report, own)
    if wired_only:  # PPP_VENEER_WIRING=on-demand: tenants never wired stay so
        wanted = [t for t in wanted if t.state in catalog.WIRED_STATES]
    followed = _followable(conn, wanted, own) if follow and not full else None
    shards = _Shards(settings, report, nextval)
    try:
        plans = _plan(conn, shards, wanted, revisions, full, report, own, followed)
        log.debug("refresh: planned after %.2f s", time.monotonic() - started)
        _apply_plans(conn, settings, plans, report, own)
        if own:  # committed: the shards' change tracking starts anew
            shards.restart_tracking(plans)
    finally:
        shards.close()
    _rebuild_views(conn, settings, report, own)
    report.seconds = time.monotonic() - started
    _summarize(report, wanted)
    return report


def _from_catalog(
    conn: Connection,
    settings: Settings,
    tenants: Sequence[str] | None,
    report: RefreshReport,
    own: bool,
) -> tuple[list[catalog.Tenant], bool]:
    """The tenants to refresh (removed ones named are errors), PPP's record made ready, and
    whether the veneer has ``ppp_remote.nextval`` (sequence defaults call it)."""
    with _reading(conn, own):
        found = catalog.find_tenants(conn, tenants=tenants)
        wanted = catalog.in_service(found)
        for t in found:
            if t.state == "removed" and tenants is not None:
                report.errors[t.schema] = (
                    "it was removed (ppp tenant remove): not wired again; create it anew instead"
                )
        ensure_wired(conn, settings)
        if tenants is None:  # records of tenants no longer in the catalog
            conn.execute(
                text(
                    f"DELETE FROM {WIRED} w WHERE NOT EXISTS "
                    "(SELECT 1 FROM ppp.tenants t WHERE t.schema = w.schema)"
                )
            )
    with _reading(conn, own):
        nextval = bool(
            conn.execute(
                text("SELECT to_regprocedure('ppp_remote.nextval(text,text)') IS NOT NULL")
            ).scalar()
        )
    return wanted, nextval


def _followable(
    conn: Connection, wanted: Sequence[catalog.Tenant], own: bool
) -> dict[str, str | None]:
    """Tenants whose tables may be read partially, with the revision the veneer wired them
    at: those whose every wired table record has its shard oid."""
    with _reading(conn, own):
        lacking = set(
            conn.execute(
                text(
                    f"SELECT DISTINCT schema FROM {WIRED} WHERE schema = ANY(:s) "
                    f"AND kind = '{TABLE}' AND remote_oid IS NULL"
                ),
                {"s": [t.schema for t in wanted]},
            ).scalars()
        )
    return {t.schema: t.wired_revision for t in wanted if t.schema not in lacking}


def _plan(
    conn: Connection,
    shards: _Shards,
    wanted: Sequence[catalog.Tenant],
    revisions: Mapping[str, str | None] | None,
    full: bool,
    report: RefreshReport,
    own: bool,
    follow: Mapping[str, str | None] | None = None,
) -> list[Plan]:
    """Steps 1-3: the shards' signatures, the veneer as it is, the plans, the column lists;
    tenants without a schema on their shard are pending, the others planned. A tenant read
    partially whose plan needs every table is read again in full."""
    remote = shards.tenants(wanted, revisions, follow)
    ready: list[catalog.Tenant] = []
    for t in wanted:
        if t.schema in report.errors:
            continue
        if not remote[t.schema].exists:
            report.pending.append(t.schema)
            continue
        ready.append(t)
    plans = _diff_all(conn, ready, remote, full, shards.nextval, own)
    again = [p.tenant for p in plans if p.needs_full]
    if again:  # read partially, but they need every table
        remote.update(shards.tenants(again, revisions))
        plans = [p for p in plans if not p.needs_full]
        again = [t for t in again if t.schema not in report.errors]
        plans += _diff_all(conn, again, remote, full, shards.nextval, own)
    report.followed = [p.schema for p in plans if remote[p.schema].changed is not None]
    definitions = shards.definitions(plans)
    app = quote_ident(shards.settings.veneer.app_role)
    per_create = create_locks(conn.dialect.server_version_info)
    for plan in plans:
        if plan.schema in report.errors:
            continue
        try:
            finish(plan, definitions.get(plan.tenant.shard, {}), app, per_create)
        except KeyError:
            report.errors[plan.schema] = (
                f"its tables changed on shard {plan.tenant.shard!r} while the refresh read "
                "them; refresh it again"
            )
    return plans


def _diff_all(
    conn: Connection,
    ready: Sequence[catalog.Tenant],
    remote: Mapping[str, RemoteTenant],
    full: bool,
    nextval: bool,
    own: bool,
) -> list[Plan]:
    """Each ready tenant's veneer schema compared with its shard's."""
    with _reading(conn, own):
        if own:  # hash joins whatever the (possibly stale) statistics of the catalogs
            ddl(conn, "SET LOCAL enable_nestloop = off; SET LOCAL jit = off")
        partial = {
            t.schema: PartialRead(list(r.tables), r.changed, list(r.types))
            for t in ready
            if (r := remote[t.schema]).changed is not None
        }
        live = read_live(conn, [t.schema for t in ready], partial)
        enums = [
            (t.schema, n)
            for t in ready
            for n, ty in remote[t.schema].types.items()
            if ty.kind == "e"
            and live[t.schema].types.get(n, (0, ""))[1] == "e"
            and live[t.schema].wired.get(n, ("", "", 0))[1] != ty.signature
        ]
        labels = read_labels(conn, enums)
    return [diff(t, remote[t.schema], live[t.schema], labels, full, nextval) for t in ready]


def _apply_plans(
    conn: Connection, settings: Settings, plans: Sequence[Plan], report: RefreshReport, own: bool
) -> None:
    """Step 4: tenants with changes in batches of bounded locks, each tenant atomically;
    the others only have their revision recorded."""
    ok = [p for p in plans if p.schema not in report.errors]
    replaced = {n for p in ok if p.changes for n in p.drop_tables}
    if replaced:  # a cross-tenant view over a table would block its replacement
        try:
            with unit(conn, own, settings.lock_timeout):
                views.drop_views(conn, sorted(replaced))
        except DBAPIError as exc:  # then the tenants whose tables it holds fail, by name
            fail_if_lost(conn, exc)
            log.warning("refresh: cannot drop the cross-tenant views: %s", first_line(exc))
    apply(conn, [p for p in ok if p.changes], settings, report, own)
    still = [p for p in ok if not p.changes]
    written = sum(len(p.record) + len(p.forget) for p in ok if p.schema in report.revisions)
    if still or written >= _ANALYZE_AFTER:
        with _reading(conn, own):
            if still:
                catalog.mark_wired(conn, {p.schema: p.revision for p in still})
            if written >= _ANALYZE_AFTER:  # the next refresh plans with true sizes
                ddl(conn, f"ANALYZE {WIRED}")
        for p in still:
            report.revisions[p.schema] = p.revision
            report.unchanged.append(p.schema)


def _summarize(report: RefreshReport, wanted: Sequence[catalog.Tenant]) -> None:
    """The report's lists in the catalog's order, and one log line."""
    order = {t.schema: i for i, t in enumerate(wanted)}
    report.refreshed = sorted(report.revisions, key=order.__getitem__)
    report.revisions = {s: report.revisions[s] for s in report.refreshed}
    report.unchanged.sort(key=order.__getitem__)
    log.info(
        "refresh: %d tenant(s) in step (%d unchanged), %d pending, %d failed; %d foreign "
        "table(s) created, %d dropped, %d type change(s); %d table(s) read (%d tenant(s) "
        "following their changes) in %.2f s",
        len(report.refreshed),
        len(report.unchanged),
        len(report.pending),
        len(report.errors),
        report.tables_created,
        report.tables_dropped,
        report.types_changed,
        report.tables_read,
        len(report.followed),
        report.seconds,
    )


def _rebuild_views(conn: Connection, settings: Settings, report: RefreshReport, own: bool) -> None:
    """The cross-tenant views, after the tenants changed (a failure is reported, not raised:
    the tenants' own refresh stands)."""
    try:
        with unit(conn, own, settings.lock_timeout):
            # In the caller's transaction (refresh_in), the tenants it wires count as live
            # even while still 'provisioning': the caller makes them active before it
            # commits, or rolls the views back with them.
            report.cross_tenant = views.rebuild(conn, include=() if own else list(report.revisions))
    except DBAPIError as exc:
        fail_if_lost(conn, exc)
        report.views_error = f"cannot rebuild the cross-tenant views: {first_line(exc)}"
        log.warning("refresh: %s", report.views_error)


def refresh_in(
    conn: Connection,
    settings: Settings,
    tenants: Sequence[str] | None = None,
    *,
    revisions: Mapping[str, str | None] | None = None,
    full: bool = False,
) -> RefreshReport:
    """:func:`refresh` inside the caller's transaction (e.g. a veneer migration's): every
    tenant in a savepoint of it, nothing committed here. Its locks last until the caller
    commits: meant for a few tenants."""
    lock(conn)
    try:
        return _refresh(conn, settings, tenants, revisions, full, own=False)
    except VeneerLost as exc:
        raise PPPError(
            f"lost the connection to the veneer at {settings.veneer.masked_url('admin')}: {exc}"
        ) from None


def refresh(
    settings: Settings,
    tenants: Sequence[str] | None = None,
    *,
    revisions: Mapping[str, str | None] | None = None,
    full: bool = False,
    follow_changes: bool = False,
    wired_only: bool = False,
) -> RefreshReport:
    """Bring the foreign tables of ``tenants`` (None: every tenant) in step with their shards.

    Reads every tenant's tables on its shard (one connection per shard, shards in parallel)
    and, per table, the signature of its foreign-table definition; compares it with PPP's
    record of what it wired (``ppp.wired_objects``) and re-creates only the foreign tables
    that are new or changed, drops those whose remote table is gone, and creates the
    tenant's enums, domains and composite types first (an enum's new labels are added). A
    tenant already in step costs no DDL. Tenants are changed in transactions of bounded
    locks (:data:`LOCK_BUDGET`), each tenant atomically: a reader sees its old or its new
    foreign tables, never none.

    ``veneer_app`` gets SELECT/INSERT/UPDATE/DELETE; the shard's ``alembic_version`` is left
    out. Each refreshed tenant's revision on its shard is recorded as ``wired_revision``
    (state pending -> active). A tenant whose schema is not on its shard yet is pending; a
    tenant that fails is in ``errors`` with the cause and keeps its old foreign tables, and
    the others are refreshed. Only an unreachable veneer or a missing catalog is a PPPError.

    ``revisions``: tenant -> revision the caller already knows (it just migrated them), so
    their version tables are not read again. ``full``: ignore the record, re-create every
    foreign table (after changing the veneer's wiring by hand). ``follow_changes`` (after
    a migration): read, of a tenant whose shard tracked what its version changes changed
    since the veneer wired it, only those tables; the others are compared in full. A change
    made outside a version change is not seen that way: the default compares every table.
    ``wired_only``: leave out the tenants not wired now (state ``pending``), for
    ``PPP_VENEER_WIRING=on-demand``; a tenant named is wired all the same without it.
    """
    with catalog.admin_connection(settings, begin=False) as conn:
        try:
            with conn.begin():
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": VENEER_LOCK_KEY})
            try:
                return _refresh(
                    conn,
                    settings,
                    tenants,
                    revisions,
                    full,
                    own=True,
                    follow=follow_changes,
                    wired_only=wired_only,
                )
            finally:
                if not (conn.invalidated or conn.closed):
                    with conn.begin():
                        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": VENEER_LOCK_KEY})
        except (VeneerLost, OperationalError) as exc:
            raise PPPError(
                f"lost the connection to the veneer at {settings.veneer.masked_url('admin')}: "
                f"{exc if isinstance(exc, VeneerLost) else first_line(exc)}"
            ) from None


def unwire(conn: Connection, schema: str) -> views.ViewReport:
    """Drop a tenant's foreign tables and types (its veneer schema) and PPP's record of
    them, then rebuild the cross-tenant views without it; its data on the shard stays."""
    _drop_wiring(conn, [schema])
    return views.rebuild(conn)


def _drop_wiring(conn: Connection, schemas: Sequence[str]) -> None:
    """The veneer schemas of ``schemas`` and PPP's record of what it wired there."""
    for schema in schemas:
        ddl(conn, f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    if conn.execute(text("SELECT to_regclass(:t)"), {"t": WIRED}).scalar() is not None:
        conn.execute(
            text(f"DELETE FROM {WIRED} WHERE schema = ANY(CAST(:s AS text[]))"),
            {"s": list(schemas)},
        )


#: States of tenants ``ppp veneer unwire`` takes (not one being created, moved or removed).
_UNWIRABLE = ("pending", *catalog.WIRED_STATES)


def unwire_tenants(settings: Settings, tenants: Sequence[str]) -> list[str]:
    """Drop the foreign tables of ``tenants`` from the veneer (their data stays on their
    shards, the router still reaches them): each goes back to ``pending``, left out of runs'
    refreshes under ``PPP_VENEER_WIRING=on-demand`` until it is named again. A name the
    catalog does not know, or a tenant being created, moved or removed, changes nothing
    (PPPError naming it). Then one transaction per tenant (a tenant's foreign tables take
    hundreds of locks: many at once would not fit the lock table). Returns the tenants that
    were wired."""
    with catalog.admin_connection(settings) as conn:
        found = {t.schema: t for t in catalog.find_tenants(conn, tenants=list(tenants))}
    busy = [s for s, t in found.items() if t.state not in _UNWIRABLE]
    if busy:
        states = ", ".join(f"{s} ({found[s].state})" for s in busy)
        raise PPPError(f"cannot unwire {states}: only pending and active tenants can be")
    for schema in found:
        with catalog.admin_connection(settings) as conn:
            lock(conn)
            now = catalog.lookup_tenant(conn, schema)
            if now is None or now.state not in _UNWIRABLE:
                raise PPPError(f"cannot unwire {schema}: it is {now.state if now else 'gone'}")
            _drop_wiring(conn, [schema])
            catalog.mark_unwired(conn, [schema])
            views.rebuild(conn)
    return [s for s, t in found.items() if t.state in catalog.WIRED_STATES]
