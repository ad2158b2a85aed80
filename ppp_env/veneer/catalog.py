"""The tenant catalog: schema ``ppp`` in the veneer, the one source of truth for placement.

The veneer's base revision creates it; ``alembic -n veneer upgrade head`` keeps it locked
down so that only ``veneer_admin`` can read or change it (``veneer_app`` gets no privilege on
schema ``ppp``, although the default privileges would otherwise grant it DML there).

``ppp.shards``  one row per shard (= one postgres_fdw foreign server of the same name):
                name, host, port, dbname (how the veneer's server reaches it),
                created_at, updated_at.
``ppp.tenants`` one row per tenant: schema, shard, state, wired_revision (the tenant's
                revision on its shard when its foreign tables were last imported, as
                ``ppp_env.fleet.TenantState.revision`` spells it; NULL: none),
                created_at, updated_at, wired_at.

Tenant states: ``provisioning`` (created at runtime by ``ppp tenant create``, not usable
yet: the same call completes it), ``pending`` (registered; not wired yet because its schema
does not exist on its shard), ``active`` (wired), ``moving`` (``ppp tenant move`` under way,
see ``ppp.moves``), ``removing`` and ``removed`` (unwired by ``ppp tenant remove``; its data
stays on its shard unless dropped).

Since the lifecycle revision (``8ddbcb8a92cf``) each tenant also has an ``origin``:
``revision`` (an onboarding revision registers it) or ``runtime`` (created at runtime, no
revision file). One never claims the other's tenant. ``ppp.moves`` records moves under way;
``ppp.placement()`` gives the application's role every tenant's shard and state without any
privilege on the catalog's tables, and channel ``ppp_placement`` is notified with a tenant's
schema whenever its row is added, deleted, or changes shard or state.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from ppp_env.db import engine, first_line
from ppp_env.errors import PPPError
from ppp_env.identifiers import quote_ident, validate_identifier, validate_tenant
from ppp_env.settings import Settings

CATALOG_SCHEMA = "ppp"
TENANT_STATES = ("provisioning", "pending", "active", "moving", "removing", "removed")
#: States of tenants whose foreign tables the veneer has (``pending``: not wired yet, or
#: unwired by ``ppp veneer unwire``).
WIRED_STATES = ("active", "moving")
ORIGINS = ("revision", "runtime")
#: The veneer revision that adds origins, moves and ``ppp.placement()``.
LIFECYCLE_REVISION = "8ddbcb8a92cf"
#: The veneer revision that adds tenant tags and ``ppp.rollouts``.
RELEASE_REVISION = "b41e7d2a9c53"
PLACEMENT_CHANNEL = "ppp_placement"
MISSING = "the catalog does not exist yet: run `alembic -n veneer upgrade head`"


@dataclass(frozen=True)
class Tenant:
    """One tenant: its schema, the shard it lives on, and how far its wiring is."""

    schema: str
    shard: str
    state: str
    wired_revision: str | None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    wired_at: datetime | None = None
    #: Its tags (``ppp tenant tag``): string keys and values; empty before the release
    #: revision (``b41e7d2a9c53``).
    tags: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Shard:
    """A shard as the catalog records it: how the veneer's foreign server reaches it."""

    name: str
    host: str
    port: int
    dbname: str


#: PPP's own sessions in the veneer keep PostgreSQL's planner defaults: the veneer database's
#: settings for queries through it (``wiring.DATABASE_SETTINGS``: nested loops and JIT off)
#: slowed the refresh's catalog queries.
ADMIN_SESSION = "SET enable_nestloop = on; SET jit = on"


@contextmanager
def admin_connection(settings: Settings, *, begin: bool = True) -> Iterator[Connection]:
    """A SQLAlchemy connection to the veneer as ``veneer_admin``; with ``begin``, inside one
    transaction that commits when the block ends without an exception."""
    eng = engine(
        settings.veneer, "admin", connect_timeout=settings.connect_timeout, poolclass=NullPool
    )
    try:
        try:
            conn = eng.connect()
        except OperationalError as exc:
            raise PPPError(
                f"cannot connect to the veneer at {settings.veneer.masked_url('admin')}: "
                f"{first_line(exc)}"
            ) from None
        with conn:
            conn.exec_driver_sql(ADMIN_SESSION)
            conn.commit()
            if begin:
                with conn.begin():
                    yield conn
            else:
                yield conn
    finally:
        eng.dispose()


def catalog_exists(conn: Connection) -> bool:
    return bool(conn.execute(text("SELECT to_regclass('ppp.tenants') IS NOT NULL")).scalar())


def require_catalog(conn: Connection) -> None:
    if not catalog_exists(conn):
        raise PPPError(MISSING)


def _names(values: Sequence[str] | None, what: str) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        raise TypeError(f"{what} must be a sequence of names, not a string")
    return list(dict.fromkeys(values))


def plural(names: Sequence[str]) -> str:
    shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    return shown


def find_tenants(
    conn: Connection,
    *,
    shards: Sequence[str] | None = None,
    tenants: Sequence[str] | None = None,
    timestamps: bool = True,
) -> list[Tenant]:
    """The catalog's tenants, ordered by shard then schema, in one query.

    ``shards`` and ``tenants`` narrow the result (None: no filter); a name the catalog does
    not know is a PPPError naming it. ``timestamps=False`` leaves ``created_at``,
    ``updated_at`` and ``wired_at`` None: a fleet run does not need them, and parsing them
    was a third of reading 100,000 tenants.
    """
    require_catalog(conn)
    want_shards = _names(shards, "shards")
    want_tenants = _names(tenants, "tenants")
    # One row per shard with no matching tenant, one per matching tenant: the shards come
    # along so that unknown shard names are found by the same query.
    # The tags column, or NULL before the release revision added it (read directly: a whole
    # row's to_jsonb per tenant cost 4 x the rest of the query at 20,000 tenants).
    # Empty tags come as NULL: no JSON to decode for the many tenants without tags.
    tags = (
        "CASE WHEN t.tags = '{}'::jsonb THEN NULL ELSE t.tags END"
        if _has_tenants_column(conn, "tags")
        else "NULL::jsonb"
    )
    rows = conn.execute(
        text(
            "SELECT s.name AS shard_name, t.schema, t.state, t.wired_revision, "
            + ("t.created_at, t.updated_at, t.wired_at, " if timestamps else "NULL, NULL, NULL, ")
            + f"{tags} AS tags "
            "FROM ppp.shards s LEFT JOIN ppp.tenants t ON t.shard = s.name "
            "AND (CAST(:tenants AS text[]) IS NULL OR t.schema = ANY(CAST(:tenants AS text[]))) "
            'ORDER BY s.name COLLATE "C", t.schema COLLATE "C"'
        ),
        {"tenants": want_tenants},
    ).all()
    known_shards = {r.shard_name for r in rows}
    if want_shards is not None:
        unknown = [s for s in want_shards if s not in known_shards]
        if unknown:
            raise PPPError(
                f"unknown shard{'s' if len(unknown) > 1 else ''} {plural(unknown)}: the catalog "
                f"has {plural(sorted(known_shards)) or '(none)'}"
            )
    found = [  # positional: a third faster than by keyword for 100,000 tenants
        Tenant(r[1], r[0], r[2], r[3], r[4], r[5], r[6], r[7] or {})
        for r in rows
        if r[1] is not None
    ]
    if want_tenants is not None:
        have = {t.schema for t in found}
        unknown = [t for t in want_tenants if t not in have]
        if unknown:
            raise PPPError(
                f"unknown tenant{'s' if len(unknown) > 1 else ''} {plural(unknown)}: not in the "
                "catalog (see `ppp tenant list`; add one with `ppp tenant add`)"
            )
    if want_shards is not None:
        selected = set(want_shards)
        found = [t for t in found if t.shard in selected]
    return found


def in_service(tenants: Sequence[Tenant]) -> list[Tenant]:
    """The tenants PPP migrates and wires: all but those ``ppp tenant remove`` retired."""
    return [t for t in tenants if t.state != "removed"]


def list_tenants(
    settings: Settings,
    *,
    shards: Sequence[str] | None = None,
    tenants: Sequence[str] | None = None,
    timestamps: bool = True,
) -> list[Tenant]:
    """The catalog's tenants (ordered by shard, then schema), optionally narrowed."""
    with admin_connection(settings) as conn:
        return find_tenants(conn, shards=shards, tenants=tenants, timestamps=timestamps)


def lookup_tenant(conn: Connection, schema: str) -> Tenant | None:
    """One tenant by schema name, or None."""
    require_catalog(conn)
    r = conn.execute(
        text(
            "SELECT schema, shard, state, wired_revision, created_at, updated_at, wired_at, "
            "coalesce(to_jsonb(t) -> 'tags', '{}') FROM ppp.tenants t WHERE schema = :s"
        ),
        {"s": schema},
    ).first()
    return None if r is None else Tenant(*r)


def list_shards(conn: Connection) -> list[Shard]:
    require_catalog(conn)
    rows = conn.execute(
        text('SELECT name, host, port, dbname FROM ppp.shards ORDER BY name COLLATE "C"')
    ).all()
    return [Shard(r.name, r.host, r.port, r.dbname) for r in rows]


def register_tenant(conn: Connection, schema: str, shard: str) -> bool:
    """Put a tenant in the catalog (state ``pending``); True if it was not there before.

    Safe to call again for a tenant already on the same shard; a tenant on another shard or
    a shard the catalog does not know is a PPPError. The caller commits.
    """
    validate_tenant(schema)
    validate_identifier(shard, "shard name")
    require_catalog(conn)
    row = conn.execute(
        text(
            "SELECT (SELECT shard FROM ppp.tenants WHERE schema = :schema) AS current, "
            "EXISTS (SELECT 1 FROM ppp.shards WHERE name = :shard) AS shard_known"
        ),
        {"schema": schema, "shard": shard},
    ).one()
    if row.current is not None:
        if row.current != shard:
            raise PPPError(
                f"tenant {schema!r} is already in the catalog on shard {row.current!r}, "
                f"not {shard!r}"
            )
        return False
    if not row.shard_known:
        known = [s.name for s in list_shards(conn)]
        raise PPPError(
            f"unknown shard {shard!r}: the catalog has {plural(known) or '(none)'}; add it "
            "to PPP_SHARDS and run `alembic -n veneer upgrade head`"
        )
    inserted = conn.execute(
        text(
            "INSERT INTO ppp.tenants (schema, shard) VALUES (:schema, :shard) "
            "ON CONFLICT (schema) DO NOTHING RETURNING schema"
        ),
        {"schema": schema, "shard": shard},
    ).first()
    if inserted is None:  # registered concurrently: fine if on the same shard
        current = conn.execute(
            text("SELECT shard FROM ppp.tenants WHERE schema = :schema"), {"schema": schema}
        ).scalar_one()
        if current != shard:
            raise PPPError(
                f"tenant {schema!r} is already in the catalog on shard {current!r}, not {shard!r}"
            )
        return False
    return True


def unregister_tenant(conn: Connection, schema: str) -> bool:
    """Remove a tenant from the catalog and its foreign tables from the veneer.

    Never touches the tenant's data on its shard. True if the tenant was registered. The
    caller commits.
    """
    validate_tenant(schema)
    require_catalog(conn)
    gone = conn.execute(
        text("DELETE FROM ppp.tenants WHERE schema = :schema RETURNING schema"), {"schema": schema}
    ).first()
    if gone is None:
        return False
    # The veneer schema named after the tenant holds only its foreign tables (PPP's wiring).
    conn.exec_driver_sql(
        f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE",
        execution_options={"no_parameters": True},
    )
    return True


def mark_wired(conn: Connection, revisions: dict[str, str | None]) -> None:
    """Record that these tenants were just wired at these revisions (one statement)."""
    if not revisions:
        return
    conn.execute(
        text(
            "UPDATE ppp.tenants t SET wired_revision = w.revision, wired_at = now(), "
            "updated_at = now(), state = CASE WHEN t.state = 'pending' THEN 'active' "
            "ELSE t.state END "
            "FROM unnest(CAST(:schemas AS text[]), CAST(:revisions AS text[])) "
            "AS w(schema, revision) WHERE t.schema = w.schema"
        ),
        {"schemas": list(revisions), "revisions": list(revisions.values())},
    )


def mark_unwired(conn: Connection, schemas: Sequence[str]) -> None:
    """Record that these tenants have no foreign tables any more: ``pending``, no revision."""
    conn.execute(
        text(
            "UPDATE ppp.tenants SET wired_revision = NULL, wired_at = NULL, updated_at = now(), "
            "state = 'pending' WHERE schema = ANY(CAST(:s AS text[]))"
        ),
        {"s": list(schemas)},
    )


def upsert_shard(conn: Connection, name: str, host: str, port: int, dbname: str) -> None:
    conn.execute(
        text(
            "INSERT INTO ppp.shards (name, host, port, dbname) VALUES (:n, :h, :p, :d) "
            "ON CONFLICT (name) DO UPDATE SET host = excluded.host, port = excluded.port, "
            "dbname = excluded.dbname, updated_at = now() "
            "WHERE (ppp.shards.host, ppp.shards.port, ppp.shards.dbname) "
            "IS DISTINCT FROM (excluded.host, excluded.port, excluded.dbname)"
        ),
        {"n": name, "h": host, "p": port, "d": dbname},
    )


def delete_shard(conn: Connection, name: str) -> None:
    conn.execute(text("DELETE FROM ppp.shards WHERE name = :n"), {"n": name})


def tenants_on(conn: Connection, shards: Sequence[str]) -> dict[str, list[str]]:
    """The tenants placed on each of ``shards`` (shards without tenants are left out)."""
    rows = conn.execute(
        text(
            "SELECT shard, schema FROM ppp.tenants WHERE shard = ANY(CAST(:s AS text[])) "
            'ORDER BY shard COLLATE "C", schema COLLATE "C"'
        ),
        {"s": list(shards)},
    ).all()
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r.shard, []).append(r.schema)
    return out


# -- lifecycle (origins, moves) --------------------------------------------------------------------
def _has_tenants_column(conn: Connection, column: str) -> bool:
    return bool(
        conn.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = "
                "to_regclass('ppp.tenants') AND attname = :column AND NOT attisdropped)"
            ),
            {"column": column},
        ).scalar()
    )


def has_lifecycle(conn: Connection) -> bool:
    """Whether the catalog has the lifecycle revision's pieces (origins, ``ppp.moves``)."""
    return _has_tenants_column(conn, "origin")


def require_lifecycle(conn: Connection) -> None:
    require_catalog(conn)
    if not has_lifecycle(conn):
        raise PPPError(
            "the catalog predates the tenant lifecycle (revision "
            f"{LIFECYCLE_REVISION}): run `alembic -n veneer upgrade head`"
        )


def origins(conn: Connection, schemas: Sequence[str]) -> dict[str, str]:
    """The origin of each of ``schemas`` that the catalog has (``revision`` for every tenant
    of a catalog without the lifecycle revision)."""
    if not schemas:
        return {}
    column = "origin" if has_lifecycle(conn) else "'revision'"
    rows = conn.execute(
        text(
            f"SELECT schema, {column} AS origin FROM ppp.tenants "
            "WHERE schema = ANY(CAST(:s AS text[]))"
        ),
        {"s": list(schemas)},
    ).all()
    return {r.schema: r.origin for r in rows}


def runtime_tenants(conn: Connection, schemas: Sequence[str]) -> list[str]:
    """Those of ``schemas`` that were created at runtime (no onboarding revision may claim
    them), sorted."""
    return sorted(s for s, o in origins(conn, schemas).items() if o == "runtime")


def set_state(conn: Connection, schema: str, state: str, *, expect: Sequence[str] = ()) -> bool:
    """Set a tenant's state (``expect``: only from one of these); True if a row changed.
    The caller commits."""
    if state not in TENANT_STATES:
        raise ValueError(f"unknown tenant state {state!r}")
    row = conn.execute(
        text(
            "UPDATE ppp.tenants SET state = :state, updated_at = now() WHERE schema = :s "
            "AND (cardinality(CAST(:expect AS text[])) = 0 "
            "OR state = ANY(CAST(:expect AS text[]))) "
            "RETURNING schema"
        ),
        {"state": state, "s": schema, "expect": list(expect)},
    ).first()
    return row is not None


@dataclass(frozen=True)
class Move:
    """A move under way (a row of ``ppp.moves``)."""

    schema: str
    source: str
    target: str
    mode: str
    step: str
    error: str | None
    started_at: datetime
    updated_at: datetime


def list_moves(conn: Connection) -> list[Move]:
    """The moves under way, by schema (none before the lifecycle revision)."""
    if not has_lifecycle(conn):
        return []
    rows = conn.execute(
        text(
            "SELECT schema, source, target, mode, step, error, started_at, updated_at "
            'FROM ppp.moves ORDER BY schema COLLATE "C"'
        )
    ).all()
    return [Move(*r) for r in rows]


# -- tags -----------------------------------------------------------------------------------------
TAG_KEY = re.compile(r"[a-z][a-z0-9_.-]{0,62}\Z")
TAG_VALUE_MAX = 200


def validate_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """``tags`` checked: keys are lower-case names (letters, digits, ``_ . -``, at most 63),
    values non-empty printable strings of at most 200 characters; a PPPError names the first
    bad one."""
    out: dict[str, str] = {}
    for key, value in tags.items():
        if not isinstance(key, str) or not TAG_KEY.match(key):
            raise PPPError(
                f"bad tag key {key!r}: a lower-case name (a-z first, then a-z, 0-9, _ . -; "
                "at most 63 characters)"
            )
        if not isinstance(value, str) or not value or len(value) > TAG_VALUE_MAX:
            raise PPPError(
                f"bad value for tag {key!r}: a non-empty string of at most {TAG_VALUE_MAX} "
                "characters"
            )
        if not value.isprintable():
            raise PPPError(f"bad value for tag {key!r}: control characters are not allowed")
        out[key] = value
    return out


def parse_tags(pairs: Sequence[str]) -> dict[str, str]:
    """``key=value`` arguments (``ppp tenant tag``, ``--tag``) as validated tags."""
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise PPPError(f"bad tag {pair!r}: expected key=value")
        tags[key.strip()] = value.strip()
    return validate_tags(tags)


def has_release(conn: Connection) -> bool:
    """Whether the catalog has the release revision's pieces (tags, ``ppp.rollouts``)."""
    return _has_tenants_column(conn, "tags")


def require_release(conn: Connection) -> None:
    require_lifecycle(conn)
    if not has_release(conn):
        raise PPPError(
            "the catalog predates tenant tags and rollouts (revision "
            f"{RELEASE_REVISION}): run `alembic -n veneer upgrade head`"
        )


def merge_tags(conn: Connection, tags: Mapping[str, Mapping[str, str]]) -> None:
    """Add these tags to these tenants (schema -> tags) in one statement. The caller
    commits."""
    tags = {schema: validate_tags(t) for schema, t in tags.items() if t}
    if not tags:
        return
    require_release(conn)
    conn.execute(
        text(
            "UPDATE ppp.tenants t SET tags = t.tags || n.value, updated_at = now() "
            "FROM jsonb_each(CAST(:tags AS jsonb)) AS n WHERE t.schema = n.key"
        ),
        {"tags": json.dumps(tags)},
    )


def set_tags(
    conn: Connection, schema: str, add: Mapping[str, str], remove: Sequence[str] = ()
) -> dict[str, str]:
    """Add (or replace) and remove tags of one tenant in one statement; its tags after.
    The caller commits."""
    require_release(conn)
    row = conn.execute(
        text(
            "UPDATE ppp.tenants SET tags = (tags - CAST(:remove AS text[])) || "
            "CAST(:add AS jsonb), updated_at = now() WHERE schema = :s RETURNING tags"
        ),
        {"s": schema, "add": json.dumps(validate_tags(add)), "remove": list(remove)},
    ).first()
    if row is None:
        raise PPPError(f"unknown tenant {schema!r}: not in the catalog (see `ppp tenant list`)")
    return dict(row.tags)
