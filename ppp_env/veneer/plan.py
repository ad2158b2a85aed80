"""What a refresh changes in a tenant's veneer schema.

The veneer schema as it is (:class:`LiveSchema`, with PPP's record of what it wired,
:data:`WIRED`) is compared with the tenant on its shard (:func:`diff`): what to drop, create
or alter, nothing when the signatures match; :func:`finish` turns that into statements once
the shard's column lists are read. :class:`RefreshReport` is what a whole refresh did.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ppp_env.identifiers import quote_ident, quote_literal
from ppp_env.settings import Settings
from ppp_env.veneer import catalog, views
from ppp_env.veneer.remote import OTHER_TYPES, RemoteTenant, RemoteType, Tracking
from ppp_env.veneer.wiring import ddl

#: PPP's record of what it wired, in the veneer's catalog schema (admin-only, created by the
#: first refresh): per tenant schema, every foreign table and type PPP created there, the
#: signature of the definition it was created from, and the object's oid (an object dropped
#: or replaced by hand has another oid, or none, and is wired again); for a table, the oid
#: of the shard's table it stands for (so a refresh that follows the shard's changes knows a
#: renamed or dropped table).
WIRED = "ppp.wired_objects"
#: Locks one refresh transaction may take, estimated. PostgreSQL's lock table has
#: max_locks_per_transaction (64) x max_connections slots for the whole server, shared by
#: every session: a refresh batches tenants into transactions that stay under this.
LOCK_BUDGET = 1000
#: Locks taken per foreign table created; per foreign table or type dropped (it also locks
#: its row and array types, plus one per column default: counted from the new definition,
#: or :data:`_LOCKS_GONE` for a table gone from the shard); per tenant (schema, catalog rows).
_LOCKS_CREATE, _LOCKS_DROP, _LOCKS_GONE, _LOCKS_TENANT = 1, 3, 6, 4


def create_locks(server_version: tuple[int | str, ...] | None) -> int:
    """Locks one CREATE FOREIGN TABLE takes on the veneer's PostgreSQL: 1 on 15; 2 on 17
    (measured: it also locks an object the new table depends on). 16 is counted as 17, an
    over-estimate at worst, which only makes batches smaller."""
    major = server_version[0] if server_version else 0
    return _LOCKS_CREATE + (1 if isinstance(major, int) and major >= 16 else 0)


#: Privileges ``veneer_app`` gets on every foreign table.
_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"
#: The wired record's kinds.
TABLE, TYPE = "table", "type"

_CREATE_WIRED = f"""
CREATE TABLE IF NOT EXISTS {WIRED} (
    schema      text NOT NULL,
    name        text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('{TABLE}', '{TYPE}')),
    signature   text NOT NULL,
    local_oid   oid NOT NULL,
    wired_at    timestamptz NOT NULL DEFAULT now(),
    remote_oid  oid,
    PRIMARY KEY (schema, name)
)
"""
#: The shard table's oid (NULL: a type, or a record written before PPP kept it).
_ADD_REMOTE_OID = f"ALTER TABLE {WIRED} ADD COLUMN IF NOT EXISTS remote_oid oid"


@dataclass
class RefreshReport:
    """What a refresh did: tenants wired, pending (no schema on the shard yet), failed."""

    refreshed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    #: The revision recorded for each refreshed tenant (None: no alembic_version yet).
    revisions: dict[str, str | None] = field(default_factory=dict)
    seconds: float = 0.0
    #: Refreshed tenants that needed no DDL (their foreign tables were already in step).
    unchanged: list[str] = field(default_factory=list)
    #: Foreign tables created (new or changed on the shard) and dropped (changed or gone).
    tables_created: int = 0
    tables_dropped: int = 0
    #: Types created, altered (an enum's new labels) or dropped.
    types_changed: int = 0
    #: The cross-tenant views rebuilt at the end (:mod:`ppp_env.veneer.views`), and why
    #: they could not be (None: rebuilt, or nothing opted in).
    cross_tenant: views.ViewReport = field(default_factory=views.ViewReport)
    views_error: str | None = None
    #: Table signatures read on the shards (phase 1).
    tables_read: int = 0
    #: Tenants whose tables were read partially: only those their version changes changed
    #: since the veneer wired them (``follow_changes``).
    followed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class LiveSchema:
    """A tenant's veneer schema as it is now, and PPP's record of what it wired there."""

    exists: bool = False
    tables: dict[str, int] = field(default_factory=dict)  # foreign table -> oid
    types: dict[str, tuple[int, str]] = field(default_factory=dict)  # type -> (oid, typtype)
    wired: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # -> kind, sig, oid
    #: Wired table -> the oid of its table on the shard (None: not recorded).
    remote: dict[str, int | None] = field(default_factory=dict)


def ensure_wired(conn: Connection, settings: Settings) -> None:
    """Create PPP's record of the wiring if missing, closed to ``veneer_app``; an older
    record gains the remote oid column."""
    exists, current = conn.execute(
        text(
            "SELECT to_regclass(:t) IS NOT NULL, EXISTS (SELECT 1 FROM pg_attribute "
            "WHERE attrelid = to_regclass(:t) AND attname = 'remote_oid' AND NOT attisdropped)"
        ),
        {"t": WIRED},
    ).one()
    if current:
        return
    if exists:
        ddl(conn, _ADD_REMOTE_OID)
        return
    ddl(conn, _CREATE_WIRED)
    ddl(conn, f"REVOKE ALL ON {WIRED} FROM PUBLIC, {quote_ident(settings.veneer.app_role)}")


#: The types a veneer schema holds that a refresh compares (not arrays, not row types).
_TYPE_FILTER = """t.typtype IN ('e', 'd', 'c', 'r', 'b') AND (t.typrelid = 0 OR rc.relkind = 'c')
    AND NOT (t.typcategory = 'A' AND t.typelem <> 0)"""
_LIVE_COLUMNS = "schema, name, kind, signature, local_oid::bigint, remote_oid::bigint"
#: PPP's record, for tenants read partially: their types, the tables of given names, and
#: the tables whose shard oid is among the changed ones (one pass over the tenants' rows).
_LIVE_PARTIAL = f"""
SELECT {_LIVE_COLUMNS} FROM {WIRED} w
WHERE w.schema = ANY(%(schemas)s) AND (w.kind = '{TYPE}'
    OR (w.schema, w.name) IN (SELECT * FROM unnest(%(named_schemas)s::text[], %(names)s::text[]))
    OR (w.schema, w.remote_oid) IN (SELECT * FROM unnest(%(oid_schemas)s::text[], %(oids)s::oid[])))
"""


class PartialRead(NamedTuple):
    """What the veneer's side of a tenant read partially needs (see :func:`read_live`)."""

    #: Its tables as the shard has them now (names), and the shard oids changed.
    tables: Collection[str]
    oids: Collection[int]
    #: Its types on the shard (names).
    types: Collection[str]


def read_live(
    conn: Connection,
    schemas: Sequence[str],
    partial: Mapping[str, PartialRead] | None = None,
) -> dict[str, LiveSchema]:
    """The veneer schemas of ``schemas``: foreign tables, types, PPP's record of them. Plain
    queries (compared here, not joined in SQL: a join with the record, which a refresh has
    just filled and nothing has analyzed, can get a plan quadratic in its size).

    ``partial``: tenants read partially: only the rows their diff looks at are read, by
    name or oid through the catalogs' indexes (the foreign tables and records of those
    table names and of the recorded tables with those shard oids; their types and records
    of types, by name)."""
    partial = partial or {}
    live = {s: LiveSchema() for s in schemas}
    whole = [s for s in schemas if s not in partial]
    raw: Any = conn.connection.driver_connection
    with raw.cursor() as cur:
        cur.execute("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (list(schemas),))
        for (schema,) in cur.fetchall():
            live[schema].exists = True
        rows: list[Any] = []
        if whole:
            rows += _read_whole(cur, live, whole)
        if partial:
            rows += _read_partial(cur, live, partial)
        for schema, name, kind, sig, oid, remote in rows:
            live[schema].wired[name] = (kind, sig, oid)
            if kind == TABLE:
                live[schema].remote[name] = remote
    return live


def _read_whole(cur: Any, live: Mapping[str, LiveSchema], schemas: Sequence[str]) -> list[Any]:
    """Every foreign table and type of these veneer schemas; returns their records."""
    args = {"schemas": list(schemas)}
    cur.execute(
        "SELECT n.nspname, c.relname, c.oid::bigint FROM pg_namespace n "
        "JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind = 'f' "
        "WHERE n.nspname = ANY(%(schemas)s)",
        args,
    )
    for schema, table, oid in cur.fetchall():
        live[schema].tables[table] = oid
    cur.execute(
        "SELECT n.nspname, t.typname, t.oid::bigint, t.typtype FROM pg_type t "
        "JOIN pg_namespace n ON n.oid = t.typnamespace "
        "LEFT JOIN pg_class rc ON rc.oid = t.typrelid "
        f"WHERE n.nspname = ANY(%(schemas)s) AND {_TYPE_FILTER}",
        args,
    )
    for schema, name, oid, kind in cur.fetchall():
        live[schema].types[name] = (oid, kind)
    cur.execute(f"SELECT {_LIVE_COLUMNS} FROM {WIRED} WHERE schema = ANY(%(schemas)s)", args)
    return list(cur.fetchall())


def _read_partial(
    cur: Any, live: Mapping[str, LiveSchema], partial: Mapping[str, PartialRead]
) -> list[Any]:
    """Records of the tenants read partially (see :func:`read_live`), and their foreign
    tables and types of those names; returns the records."""
    named = [(s, n) for s, r in partial.items() for n in r.tables]
    by_oid = [(s, o) for s, r in partial.items() for o in r.oids]
    cur.execute(
        _LIVE_PARTIAL,
        {
            "schemas": list(partial),
            "named_schemas": [x[0] for x in named],
            "names": [x[1] for x in named],
            "oid_schemas": [x[0] for x in by_oid],
            "oids": [x[1] for x in by_oid],
        },
    )
    rows = cur.fetchall()
    tables = set(named) | {(r[0], r[1]) for r in rows if r[2] == TABLE}
    cur.execute(
        "SELECT x.s, c.relname, c.oid::bigint "
        "FROM unnest(%(schemas)s::text[], %(names)s::text[]) AS x(s, n) "
        "JOIN pg_namespace n ON n.nspname = x.s "
        "JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = x.n AND c.relkind = 'f'",
        {"schemas": [t[0] for t in tables], "names": [t[1] for t in tables]},
    )
    for schema, table, oid in cur.fetchall():
        live[schema].tables[table] = oid
    types = {(s, n) for s, r in partial.items() for n in r.types}
    types |= {(r[0], r[1]) for r in rows if r[2] == TYPE}
    cur.execute(
        "SELECT x.s, t.typname, t.oid::bigint, t.typtype "
        "FROM unnest(%(schemas)s::text[], %(names)s::text[]) AS x(s, n) "
        "JOIN pg_namespace n ON n.nspname = x.s "
        "JOIN pg_type t ON t.typnamespace = n.oid AND t.typname = x.n "
        f"LEFT JOIN pg_class rc ON rc.oid = t.typrelid WHERE {_TYPE_FILTER}",
        {"schemas": [t[0] for t in types], "names": [t[1] for t in types]},
    )
    for schema, name, oid, kind in cur.fetchall():
        live[schema].types[name] = (oid, kind)
    return list(rows)


def read_labels(
    conn: Connection, wanted: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], list[str]]:
    """The labels of these enums in the veneer, in order."""
    if not wanted:
        return {}
    rows = conn.execute(
        text(
            "SELECT n.nspname, t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder) "
            "FROM unnest(CAST(:s AS text[]), CAST(:n AS text[])) AS w(schema, name) "
            "JOIN pg_namespace n ON n.nspname = w.schema "
            "JOIN pg_type t ON t.typnamespace = n.oid AND t.typname = w.name "
            "JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY n.nspname, t.typname"
        ),
        {"s": [s for s, _n in wanted], "n": [n for _s, n in wanted]},
    ).all()
    return {(r[0], r[1]): list(r[2]) for r in rows}


def _enum_additions(
    schema: str, name: str, old: Sequence[str], new: Sequence[str]
) -> list[str] | None:
    """``ALTER TYPE ... ADD VALUE`` statements turning enum ``old`` into ``new``, or None when
    ``new`` is not ``old`` with labels added (a label renamed, removed or moved)."""
    if len(set(new)) != len(new):
        return None
    rest = iter(new)
    if not all(any(label == x for x in rest) for label in old):
        return None
    target = f"{quote_ident(schema)}.{quote_ident(name)}"
    present = set(old)
    out = []
    for i, label in enumerate(new):
        if label in present:
            continue
        if i > 0:
            where = f" AFTER {quote_literal(new[i - 1])}"
        elif old:
            where = f" BEFORE {quote_literal(old[0])}"
        else:
            where = ""
        out.append(f"ALTER TYPE {target} ADD VALUE {quote_literal(label)}{where}")
        present.add(label)
    return out


def _in_order(types: Sequence[RemoteType]) -> list[RemoteType]:
    """Types ordered so that each comes after the types it is built from."""
    pending = {t.name: t for t in types}
    out: list[RemoteType] = []
    while pending:
        ready = [t for t in pending.values() if not any(d in pending for d in t.depends)]
        for t in ready or list(pending.values()):  # a cycle: let PostgreSQL name it
            out.append(t)
            del pending[t.name]
    return out


@dataclass
class Plan:
    """What one tenant's refresh does in the veneer."""

    tenant: catalog.Tenant
    revision: str | None
    create_schema: bool = False
    drop_tables: list[str] = field(default_factory=list)
    drop_types: list[str] = field(default_factory=list)
    create_types: list[RemoteType] = field(default_factory=list)
    alter: list[str] = field(default_factory=list)
    #: (table, signature) to create from the shard's column list of that signature.
    create_tables: list[tuple[str, str]] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)
    #: Wired records to write: (name, kind, signature, remote oid); and names whose record
    #: goes.
    record: list[tuple[str, str, str, int | None]] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)
    #: Estimated locks (see :data:`LOCK_BUDGET`).
    locks: int = _LOCKS_TENANT
    #: Remote types this tenant's tables may need that the veneer cannot create.
    others: dict[str, str] = field(default_factory=dict)
    #: Read partially, but its types must be made again (and so all its foreign tables) or
    #: its veneer schema is missing: it needs every table's signature (a full read), and
    #: this plan is not to be used.
    needs_full: bool = False
    #: The tenant's change tracking row on its shard, as phase 1 read it.
    tracking: Tracking | None = None

    @property
    def schema(self) -> str:
        return self.tenant.schema

    @property
    def tables_created(self) -> int:
        return len(self.create_tables)

    @property
    def tables_dropped(self) -> int:
        return len(self.drop_tables)

    @property
    def types_changed(self) -> int:
        return (
            len(self.create_types)
            + len(self.drop_types)
            + len({a.split(" ADD VALUE")[0] for a in self.alter})
        )

    @property
    def changes(self) -> bool:
        return bool(self.statements or self.record or self.forget)


def diff(
    tenant: catalog.Tenant,
    remote: RemoteTenant,
    live: LiveSchema,
    labels: Mapping[tuple[str, str], list[str]],
    full: bool,
    nextval: bool = False,
) -> Plan:
    """Compare a tenant's tables and types on its shard (their signatures) with its veneer
    schema and PPP's record: what to drop, create or alter (nothing when all match)."""
    plan = Plan(tenant, remote.revision, create_schema=not live.exists)
    plan.others = {
        n: OTHER_TYPES.get(t.kind, t.kind) for n, t in remote.types.items() if not t.creatable
    }
    keep, rebuild = _diff_types(plan, remote, live, labels, full)
    plan.tracking = remote.tracking
    if remote.changed is not None and (rebuild or not live.exists):
        plan.needs_full = True
        return plan
    keep |= _diff_tables(plan, remote, live, full, rebuild, nextval)
    written = {r[0] for r in plan.record}
    plan.forget = [n for n in live.wired if n not in keep and n not in written]
    return plan


def _intact(live: LiveSchema, full: bool, name: str, kind: str, sig: str, oid: int | None) -> bool:
    """The object is as PPP wired it from this signature (never, with ``full``)."""
    return not full and oid is not None and live.wired.get(name) == (kind, sig, oid)


def _diff_types(
    plan: Plan,
    remote: RemoteTenant,
    live: LiveSchema,
    labels: Mapping[tuple[str, str], list[str]],
    full: bool,
) -> tuple[set[str], bool]:
    """The tenant's types: kept when in step; an enum that only gained labels gets them; any
    other change (or a type PPP did not record) means dropping and re-creating the tenant's
    types, and so its foreign tables, which use them. Returns the names kept, and whether
    everything is rebuilt."""
    schema = plan.schema
    wanted_types = {n: t for n, t in remote.types.items() if t.creatable}
    keep: set[str] = set()
    rebuild = False
    for name, ty in wanted_types.items():
        have = live.types.get(name)
        if have is None:
            plan.create_types.append(ty)
        elif _intact(live, full, name, TYPE, ty.signature, have[0]):
            keep.add(name)
        else:
            old = labels.get((schema, name))
            adds = None
            if ty.kind == "e" and have[1] == "e" and old is not None and name in live.wired:
                adds = _enum_additions(schema, name, old, ty.labels)
            if adds is None:
                rebuild = True
            else:
                plan.alter.extend(adds)
                plan.record.append((name, TYPE, ty.signature, None))
                keep.add(name)
    ours = {n for n, (kind, _s, _o) in live.wired.items() if kind == TYPE}
    if rebuild:
        plan.drop_types = [n for n in live.types if n in wanted_types or n in ours]
        plan.create_types = list(wanted_types.values())
        plan.alter, plan.record, keep = [], [], set()
    else:
        plan.drop_types = [n for n in live.types if n in ours and n not in wanted_types]
    plan.create_types = _in_order(plan.create_types)
    plan.record.extend((ty.name, TYPE, ty.signature, None) for ty in plan.create_types)
    return keep, rebuild


def _diff_tables(
    plan: Plan, remote: RemoteTenant, live: LiveSchema, full: bool, rebuild: bool, nextval: bool
) -> set[str]:
    """The tenant's foreign tables: re-created when their signature changed (or the types
    are rebuilt), dropped when gone from the shard. Returns the names kept.

    Read partially (``remote.changed``), the shard's side is only the relations changed
    since the veneer wired the tenant: a wired table whose shard oid is among them and that
    has no table of its name any more was renamed or dropped; every other one is kept."""
    keep: set[str] = set()
    for name, sig in remote.tables.items():
        # The server is part of the definition, and so is whether sequence defaults call
        # ppp_remote.nextval (the veneer gained or lost it: every table is made again).
        signature = f"{sig}@{plan.tenant.shard}{'+nextval' if nextval else ''}"
        have_table = live.tables.get(name)
        oid = remote.oids.get(name)
        if not rebuild and _intact(live, full, name, TABLE, signature, have_table):
            keep.add(name)
            if live.remote.get(name) != oid:  # recorded before, or the shard made it anew
                plan.record.append((name, TABLE, signature, oid))
            continue
        if have_table is not None:
            plan.drop_tables.append(name)
        plan.create_tables.append((name, sig))
        plan.record.append((name, TABLE, signature, oid))
    if remote.changed is None:
        gone = [n for n in live.tables if n not in remote.tables]
    else:
        left = {n for n, o in live.remote.items() if n not in remote.tables}
        moved = {n for n in left if live.remote[n] in remote.changed}
        gone = [n for n in live.tables if n in moved]
        keep |= left - moved
    plan.drop_tables.extend(gone)
    plan.locks += _LOCKS_GONE * len(gone) + _LOCKS_DROP * plan.types_changed
    return keep


def finish(
    plan: Plan, definitions: Mapping[str, str], app: str, locks_per_create: int = _LOCKS_CREATE
) -> None:
    """The plan's statements, with the column lists read from the shard (KeyError: one is
    missing because its table changed while the refresh read it)."""
    schema = plan.schema
    q = quote_ident(schema)
    out = plan.statements
    if plan.create_schema:
        out += [f"CREATE SCHEMA {q}", f"GRANT USAGE ON SCHEMA {q} TO {app}"]
    if plan.drop_tables:
        out.append(f"DROP FOREIGN TABLE {_names(schema, sorted(plan.drop_tables))}")
    if plan.drop_types:
        out.append(f"DROP TYPE {_names(schema, sorted(plan.drop_types))}")
    for ty in plan.create_types:
        verb = "DOMAIN" if ty.kind == "d" else "TYPE"
        out.append(f"CREATE {verb} {q}.{quote_ident(ty.name)} AS {ty.body}")
    out.extend(plan.alter)
    server = quote_ident(plan.tenant.shard)
    dropped = set(plan.drop_tables)
    for name, sig in plan.create_tables:
        cols = definitions[sig]
        out.append(
            f"CREATE FOREIGN TABLE {q}.{quote_ident(name)} ({cols}) SERVER {server} "
            f"OPTIONS (schema_name {quote_literal(schema)}, table_name {quote_literal(name)})"
        )
        plan.locks += locks_per_create
        if name in dropped:  # its row and array types, and one lock per default
            plan.locks += _LOCKS_DROP + cols.count(" DEFAULT ") + cols.count(" GENERATED ")
    if plan.create_tables:
        names = _names(schema, [n for n, _s in plan.create_tables])
        out.append(f"GRANT {_PRIVILEGES} ON {names} TO {app}")


def _names(schema: str, names: Sequence[str]) -> str:
    q = quote_ident(schema)
    return ", ".join(f"{q}.{quote_ident(n)}" for n in names)
