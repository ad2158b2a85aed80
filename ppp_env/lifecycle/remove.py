"""Remove a tenant created at runtime: unwire it from the veneer and mark it ``removed``.

Its data stays on its shard unless ``drop_data`` is given; ``archive`` first writes a
``pg_dump -n <schema>`` (custom format) and verifies it with ``pg_restore --list`` (the
tenant's schema listed) before anything is dropped, both run where
:mod:`ppp_env.servers.clients` says (in the server's container, or local binaries at least as
new as the server). The password reaches pg_dump through ``PGPASSWORD``, never its command
line. A tenant of an onboarding revision is taken back with ``ppp veneer downgrade --tenant``
instead (its file says it exists).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppp_env import db
from ppp_env.errors import PPPError
from ppp_env.identifiers import quote_ident, validate_tenant
from ppp_env.servers.clients import Client, for_instance, tail
from ppp_env.settings import Instance, Settings
from ppp_env.veneer import catalog


@dataclass
class RemoveResult:
    schema: str
    shard: str
    #: The tenant's schema was dropped on its shard (and its catalog row deleted).
    dropped: bool = False
    archive: Path | None = None
    archive_bytes: int = 0
    seconds: float = 0.0


def archive_schema(inst: Instance, schema: str, path: Path, *, connect_timeout: int = 5) -> int:
    """``pg_dump -Fc -n schema`` of ``inst`` into ``path``, verified; its size in bytes."""
    validate_tenant(schema)
    path = Path(path)
    if path.exists():
        raise PPPError(f"{path} already exists: the archive never overwrites a file")
    client = for_instance(inst, connect_timeout=connect_timeout)
    _dump(client, schema, path)
    _verify(client, schema, path)
    return path.stat().st_size


def _dump(client: Client, schema: str, path: Path) -> None:
    """pg_dump's output streamed into a new file (never one that exists); no file when it
    fails."""
    try:
        out = open(path, "xb")  # noqa: SIM115 (closed below, also when pg_dump fails)
    except FileExistsError:
        raise PPPError(f"{path} already exists: the archive never overwrites a file") from None
    with out:
        dump = client.start(
            "pg_dump", "--format=custom", "--no-owner", f"--schema={quote_ident(schema)}",
            stdout=out,
        )  # fmt: skip
        _out, err = dump.communicate()
    if dump.returncode != 0:
        path.unlink(missing_ok=True)
        raise PPPError(f"pg_dump of {schema!r} ({client.where}) failed: {tail(err)}")


def _verify(client: Client, schema: str, path: Path) -> None:
    """``pg_restore --list`` of the archive (read on stdin): the schema is in it."""
    with open(path, "rb") as archive:
        listing = client.start("pg_restore", "--list", stdin=archive, connect=False)
        out, err = listing.communicate()
    if listing.returncode != 0 or f"SCHEMA - {schema} " not in out.decode(errors="replace"):
        why = tail(err) if listing.returncode != 0 else "the schema is not in its table of contents"
        raise PPPError(
            f"the archive {path} of {schema!r} could not be verified ({why}): nothing was dropped"
        )


def remove_tenant(
    settings: Settings,
    schema: str,
    *,
    drop_data: bool = False,
    archive: str | Path | None = None,
) -> RemoveResult:
    """Unwire ``schema`` and mark it removed; with ``drop_data`` drop its schema on its shard
    and forget it (``archive``: a verified dump first). PPPError, nothing changed, for an
    unknown tenant, an onboarding revision's tenant or an unreachable shard."""
    started = time.perf_counter()
    validate_tenant(schema)
    found = _removable(settings, schema, drop_data or archive is not None)
    inst = settings.shard(found.shard)
    result = RemoveResult(schema, found.shard)
    # Reach the shard before changing anything.
    with db.connection(
        inst, "admin", autocommit=True, connect_timeout=settings.connect_timeout
    ) as shard_conn:
        cur = shard_conn.cursor()
        cur.execute("SELECT to_regnamespace(%s) IS NOT NULL", (schema,))
        exists = bool(cur.fetchone()[0])
        if archive is not None:
            if not exists:
                raise PPPError(f"tenant {schema!r} has no schema on {found.shard!r} to archive")
            result.archive = Path(archive)
            result.archive_bytes = archive_schema(
                inst, schema, result.archive, connect_timeout=settings.connect_timeout
            )
        from ppp_env.veneer import unwire

        with catalog.admin_connection(settings) as conn:
            unwire(conn, schema)
            catalog.set_state(conn, schema, "removed")
        if drop_data:
            _drop_data(settings, cur, schema)
            result.dropped = True
    result.seconds = time.perf_counter() - started
    return result


def _removable(settings: Settings, schema: str, more: bool) -> catalog.Tenant:
    """The tenant, if it may be removed (a runtime tenant, not moving, not removed already
    unless there is more to do: ``more``, or its veneer schema is back)."""
    with catalog.admin_connection(settings) as conn:
        catalog.require_lifecycle(conn)
        found = catalog.lookup_tenant(conn, schema)
        if found is None:
            raise PPPError(f"unknown tenant {schema!r}: not in the catalog (see `ppp tenant list`)")
        origin = catalog.origins(conn, [schema])[schema]
        moving = [m for m in catalog.list_moves(conn) if m.schema == schema]
        wired = bool(
            conn.exec_driver_sql(
                "SELECT to_regnamespace(%(s)s) IS NOT NULL", {"s": schema}
            ).scalar()
        )
    if origin != "runtime":
        raise PPPError(
            f"tenant {schema!r} has an onboarding revision: take it back with `ppp veneer "
            f"downgrade --tenant {schema}` and delete its revision file"
        )
    if moving or found.state == "moving":
        raise PPPError(f"tenant {schema!r} is being moved: finish or cancel the move first")
    if found.state == "removed" and not more and not wired:
        raise PPPError(f"tenant {schema!r} is already removed (its data is on {found.shard!r})")
    return found


def _drop_data(settings: Settings, cur: Any, schema: str) -> None:
    """The tenant's schema gone from its shard (and its version index), then from the
    catalog."""
    cur.execute("BEGIN")
    cur.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    cur.execute("SELECT to_regclass('ppp.tenant_versions') IS NOT NULL")
    if cur.fetchone()[0]:  # the shard's version index forgets it too
        cur.execute("DELETE FROM ppp.tenant_versions WHERE schema_name = %s", (schema,))
    cur.execute("COMMIT")
    with catalog.admin_connection(settings) as conn:
        conn.exec_driver_sql(
            "DELETE FROM ppp.tenants WHERE schema = %(s)s AND state = 'removed'", {"s": schema}
        )
