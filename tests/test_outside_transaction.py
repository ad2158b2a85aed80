"""Revisions outside a transaction (``autocommit_block``, CREATE INDEX CONCURRENTLY) survive a
``kill -9`` of ``alembic upgrade head``: the shard records the tenant inside one, ``ppp status``
and ``ppp doctor`` name it with what exists, a rerun retries it (enough with
``ppp_env.revision_ops``), and ``ppp tenant repair`` fixes what a plain revision left.

The kills are real: ``alembic`` runs in its own process group and gets SIGKILL, at random
moments (a fixed seed, printed) and at two moments made certain: while CREATE INDEX
CONCURRENTLY waits for an old snapshot (its index exists, INVALID) and while the tenant's new
version is being written (the index is built, VALID; a trigger on the version table sleeps).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from click.testing import CliRunner

from ppp_env import db
from ppp_env.cli.main import cli
from ppp_env.lifecycle import doctor
from ppp_env.settings import Settings
from tests.conftest import (
    ROOT,
    Topology,
    drop_schemas,
    register,
    shard_sql,
    states,
    unregister,
)

SEED = 20261206
INDEX = "ix_authors_last"
PER_SHARD = 16

FIRST = '''"""authors, with enough rows that an index takes a moment"""

import sqlalchemy as sa
from alembic import op

revision = "o001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "authors",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("last_name", sa.Text, nullable=False),
    )
    op.execute(
        "INSERT INTO authors (id, last_name) SELECT g, 'name ' || g FROM generate_series(1, 3000) g"
    )


def downgrade() -> None:
    op.drop_table("authors")
'''

SECOND = '''"""an index built concurrently"""

from alembic import op

from ppp_env import revision_ops

revision = "o002"
down_revision = "o001"
branch_labels = None
depends_on = None


def upgrade() -> None:
{body}


def downgrade() -> None:
    revision_ops.drop_index_concurrently("{index}", "authors")
'''

PLAIN = f"""    with op.get_context().autocommit_block():
        op.create_index("{INDEX}", "authors", ["last_name"], postgresql_concurrently=True)"""
SAFE = f"""    revision_ops.create_index_concurrently("{INDEX}", "authors", ["last_name"])"""
NESTED = f"""    with op.get_context().autocommit_block():
        op.execute("SELECT 1")
        revision_ops.create_index_concurrently("{INDEX}", "authors", ["last_name"])"""

ENV = "from ppp_env.fleet.env import run_migrations\n\nrun_migrations()\n"


def project(tmp_path: Path, body: str) -> Path:
    """A tenant chain o001 (a table) -> o002 (its index, concurrently); its alembic.ini."""
    scripts = tmp_path / "scripts"
    (scripts / "versions").mkdir(parents=True)
    (scripts / "env.py").write_text(ENV)
    (scripts / "script.py.mako").write_text((ROOT / "migrations" / "script.py.mako").read_text())
    (scripts / "versions" / "o001_authors.py").write_text(FIRST)
    (scripts / "versions" / "o002_index.py").write_text(SECOND.format(body=body, index=INDEX))
    ini = tmp_path / "alembic.ini"
    ini.write_text(
        f"[alembic]\nscript_location = {scripts}\nprepend_sys_path = {ROOT}\npath_separator = os\n"
    )
    return ini


@contextmanager
def registered(settings: Settings, per_shard: int) -> Iterator[dict[str, str]]:
    """``per_shard`` tenants on every shard, registered, and removed afterwards."""
    tag = uuid.uuid4().hex[:6]
    found = {f"ot_{tag}_{s[:3]}{i:02d}": s for s in settings.shards for i in range(per_shard)}
    register(settings, found)
    try:
        yield found
    finally:
        unregister(settings, found)
        drop_schemas(settings, found)


@pytest.fixture
def tenants(veneer_head: Topology) -> Iterator[dict[str, str]]:
    """48 tenants, 16 per shard."""
    with registered(veneer_head.settings, PER_SHARD) as found:
        yield found


@pytest.fixture
def few(veneer_head: Topology) -> Iterator[dict[str, str]]:
    """One tenant per shard."""
    with registered(veneer_head.settings, 1) as found:
        yield found


# -- running and killing alembic ---------------------------------------------------------------
def alembic(
    ini: Path, tenants: dict[str, str], *x: str, command: str = "upgrade", target: str = "head"
) -> subprocess.Popen:
    """``alembic upgrade head`` of ``tenants`` in its own process group (so a kill takes its
    workers too), output captured."""
    args = [str(Path(sys.executable).parent / "alembic"), "-c", str(ini)]
    for option in ("refresh=false", "output=plain", f"tenant={','.join(sorted(tenants))}", *x):
        args += ["-x", option]
    return subprocess.Popen(
        [*args, command, target],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        cwd=ini.parent,
    )


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=180)
    return proc.returncode, out


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


def wait_for(what: Callable[[], Any], timeout: float = 60, why: str = "") -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = what()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {why}")


def busy(settings: Settings, shard: str, wait_event: str) -> list[int]:
    """Backends of the shard's admin role waiting on ``wait_event``."""
    rows = shard_sql(
        settings,
        shard,
        "SELECT pid FROM pg_stat_activity WHERE wait_event = %s AND usename = current_user "
        "AND pid <> pg_backend_pid()",
        (wait_event,),
    )
    return [r[0] for r in rows or []]


def gone(settings: Settings, shard: str, pids: list[int]) -> None:
    """Wait until the killed run's backends have ended (the server noticed its client)."""
    wait_for(
        lambda: (
            not shard_sql(
                settings, shard, "SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
            )
        ),
        why=f"backends {pids} to end",
    )


# -- what the shards hold -------------------------------------------------------------------------
def revision(settings: Settings, shard: str, tenant: str) -> str | None:
    return states(settings, shard, [tenant])[tenant].revision


def indexes(settings: Settings, shard: str, tenant: str) -> list[tuple[str, bool]]:
    """Every index of the tenant's authors table but its primary key: (name, valid)."""
    return shard_sql(
        settings,
        shard,
        "SELECT c.relname::text, i.indisvalid FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = to_regclass(%s) AND NOT i.indisprimary",
        (f'"{tenant}".authors',),
    )


def records(settings: Settings, tenants: dict[str, str]) -> dict[str, tuple[Any, ...]]:
    found: dict[str, tuple[Any, ...]] = {}
    for shard in set(tenants.values()):
        if shard_sql(settings, shard, "SELECT to_regclass('ppp.tenant_outside')") == [(None,)]:
            continue  # no run has made it on this shard yet (--sql makes nothing)
        rows = shard_sql(
            settings,
            shard,
            "SELECT schema_name, revision, heads, indexes FROM ppp.tenant_outside "
            "WHERE schema_name = ANY(%s)",
            ([t for t, s in tenants.items() if s == shard],),
        )
        found.update({r[0]: r[1:] for r in rows or []})
    return found


def ppp(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def named(ini: Path, settings: Settings, tenants: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The tenants ``ppp status --json`` and ``ppp doctor`` name as interrupted (they agree)."""
    out = ppp("status", "-c", str(ini), "--tenant", ",".join(sorted(tenants)), "--json")
    status = {
        r["tenant"]: r["outside"]
        for r in json.loads(out.output)["tenants"]
        if r["outside"] and not r["outside"]["running"]
    }
    plain = ppp("status", "-c", str(ini), "--tenant", ",".join(sorted(tenants))).output
    for tenant in status:
        assert f"interrupted {tenants[tenant]}/{tenant}: interrupted inside revision o002" in plain
        assert f"`ppp tenant repair {tenant}`" in plain
    report = doctor(settings, ini, tenants=sorted(tenants))
    found = {
        f.schema: f.detail for f in report.findings if f.kind == "interrupted_outside_transaction"
    }
    assert set(found) == set(status), (found, status)
    for tenant, detail in found.items():
        assert "revision o002 (an index built concurrently)" in detail
        assert f"`ppp tenant repair {tenant}`" in detail
    return status


# -- the two kills made certain ------------------------------------------------------------------
def kill_in_index_build(settings: Settings, ini: Path, tenants: dict[str, str]) -> str:
    """Kill the run while CREATE INDEX CONCURRENTLY waits for an old snapshot on the first
    shard: its index exists, INVALID. Returns that tenant."""
    shard = next(iter(settings.shards))
    mine = {t: s for t, s in tenants.items() if s == shard}
    holder = db.connect(settings.shard(shard), "admin", autocommit=True)
    try:
        cur = holder.cursor()
        cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")  # holds a snapshot
        proc = alembic(ini, mine, "lock_timeout=120")
        try:
            pids = wait_for(lambda: busy(settings, shard, "virtualxid"), why="CIC to wait")
        finally:
            kill(proc)
        gone(settings, shard, pids)
    finally:
        holder.close()
    invalid = [t for t, s in mine.items() if (INDEX, False) in indexes(settings, s, t)]
    assert len(invalid) == 1, invalid
    return invalid[0]


def kill_in_version_write(settings: Settings, ini: Path, tenants: dict[str, str]) -> str:
    """Kill the run while the new version of a tenant of the second shard is being written
    (a trigger sleeps): its index is built, VALID, its version still o001. Returns it."""
    shard = list(settings.shards)[1]
    tenant = next(t for t, s in tenants.items() if s == shard)
    code, out = finish(alembic(ini, {tenant: shard}, target="o001"))
    assert code == 0, out
    shard_sql(
        settings,
        shard,
        f'CREATE FUNCTION "{tenant}".slow() RETURNS trigger LANGUAGE plpgsql AS '
        "$$BEGIN PERFORM pg_sleep(120); RETURN NEW; END$$;"
        f'CREATE TRIGGER slow BEFORE UPDATE ON "{tenant}".alembic_version '
        f'FOR EACH ROW EXECUTE FUNCTION "{tenant}".slow()',
    )
    try:
        proc = alembic(ini, {tenant: shard})
        try:
            pids = wait_for(lambda: busy(settings, shard, "PgSleep"), why="the version write")
        finally:
            kill(proc)
        gone(settings, shard, pids)
    finally:
        shard_sql(settings, shard, f'DROP FUNCTION "{tenant}".slow() CASCADE')
    assert revision(settings, shard, tenant) == "o001"
    assert indexes(settings, shard, tenant) == [(INDEX, True)]
    return tenant


def kill_at_random(settings: Settings, ini: Path, tenants: dict[str, str], kills: int = 3) -> None:
    """Start ``alembic upgrade head`` and SIGKILL it at a random moment after its work began,
    ``kills`` times, with one worker per shard and with two. Before a round, when most
    tenants are at head, those go back to o001 so that every run has work."""
    rng = random.Random(SEED)
    print(f"random kills: seed {SEED}")
    shards = set(tenants.values())
    for i in range(kills):
        done = {t: s for t, s in tenants.items() if revision(settings, s, t) == "o002"}
        if len(done) > len(tenants) // 2:
            code, out = finish(alembic(ini, done, command="downgrade", target="o001"))
            assert code == 0, out
        proc = alembic(ini, tenants, f"jobs_per_shard={1 + i % 2}")  # one worker, then two
        wait_for(lambda: any(running(settings, s) for s in shards), why="the run to begin")
        after = rng.uniform(0.0, 2.0)
        time.sleep(after)
        kill(proc)
        at = [revision(settings, s, t) for t, s in tenants.items()]
        print(f"killed {after:.2f} s in: {at.count('o002')} at o002, {at.count('o001')} at o001")
        for shard in shards:  # the killed run's backends end
            wait_for(lambda shard=shard: not running(settings, shard), why="the killed run to end")


def running(settings: Settings, shard: str) -> list[int]:
    """Backends of PPP's admin role that are not idle (a killed run's, until they notice)."""
    rows = shard_sql(
        settings,
        shard,
        "SELECT pid FROM pg_stat_activity WHERE usename = current_user "
        "AND pid <> pg_backend_pid() AND state <> 'idle'",
    )
    return [r[0] for r in rows or []]


def no_dead_end(settings: Settings, tenants: dict[str, str], shown: dict[str, Any]) -> None:
    """Every tenant left behind head with an index of o002 is named, with that index."""
    for tenant, shard in tenants.items():
        built = indexes(settings, shard, tenant)
        if revision(settings, shard, tenant) == "o001" and built:
            assert tenant in shown, (tenant, built)
            states = {i["name"]: i["state"] for i in shown[tenant]["indexes"]}
            assert states[INDEX] == ("valid" if built[0][1] else "INVALID")


def all_at_head(settings: Settings, tenants: dict[str, str]) -> None:
    for tenant, shard in tenants.items():
        assert revision(settings, shard, tenant) == "o002", tenant
        assert indexes(settings, shard, tenant) == [(INDEX, True)], tenant
    assert records(settings, tenants) == {}


# -- the tests -------------------------------------------------------------------------------------
def test_safe_index_survives_kills(veneer_head: Topology, tenants, tmp_path: Path) -> None:
    settings = veneer_head.settings
    ini = project(tmp_path, SAFE)
    invalid = kill_in_index_build(settings, ini, tenants)
    valid = kill_in_version_write(settings, ini, tenants)
    shown = named(ini, settings, tenants)
    assert {invalid, valid} <= set(shown)
    assert shown[invalid]["indexes"] == [{"name": INDEX, "state": "INVALID"}]
    assert shown[valid]["indexes"] == [{"name": INDEX, "state": "valid"}]
    kill_at_random(settings, ini, tenants)
    shown = named(ini, settings, tenants)
    print(f"interrupted after the random kills: {sorted(shown)}")
    no_dead_end(settings, tenants, shown)

    code, out = finish(alembic(ini, tenants))
    assert code == 0, out
    for tenant in shown:
        assert f"interrupted {tenants[tenant]}/{tenant}: interrupted inside revision o002" in out
    all_at_head(settings, tenants)
    assert named(ini, settings, tenants) == {}


def test_plain_index_needs_repair(veneer_head: Topology, tenants, tmp_path: Path) -> None:
    settings = veneer_head.settings
    ini = project(tmp_path, PLAIN)
    invalid = kill_in_index_build(settings, ini, tenants)
    valid = kill_in_version_write(settings, ini, tenants)
    kill_at_random(settings, ini, tenants)
    shown = named(ini, settings, tenants)
    print(f"interrupted after the random kills: {sorted(shown)}")
    assert {invalid, valid} <= set(shown)
    no_dead_end(settings, tenants, shown)

    code, out = finish(alembic(ini, tenants))
    assert code != 0
    for tenant in (invalid, valid):
        assert f"{tenants[tenant]}/{tenant}: revision o002 (an index built concurrently): " in out
        assert "DuplicateTable" in out
        assert f"ppp.tenant_outside on shard {tenants[tenant]}" in out
        assert f"`ppp tenant repair {tenant}`" in out

    refused_changes_nothing(settings, tenants, invalid, valid)
    for tenant, outside in named(ini, settings, tenants).items():
        states = {i["name"]: i["state"] for i in outside["indexes"]}
        choice = "--stamp" if states.get(INDEX) == "valid" else "--retry"
        out = ppp("tenant", "repair", tenant, choice)
        assert out.exit_code == 0, out.output
        if choice == "--retry" and states.get(INDEX) == "INVALID":
            assert f"dropped INVALID index {INDEX}; record cleared" in out.output
    assert revision(settings, tenants[valid], valid) == "o002"
    assert indexes(settings, tenants[invalid], invalid) == []

    code, out = finish(alembic(ini, tenants))
    assert code == 0, out
    all_at_head(settings, tenants)
    assert named(ini, settings, tenants) == {}


def refused_changes_nothing(
    settings: Settings, tenants: dict[str, str], invalid: str, valid: str
) -> None:
    """Bad input to repair: one clear line, exit code 1, nothing changed."""
    before = (records(settings, tenants), [indexes(settings, s, t) for t, s in tenants.items()])
    at_head = next(t for t, s in tenants.items() if revision(settings, s, t) == "o002")
    cases = [
        (["nobody_here"], "Error: unknown tenant 'nobody_here': not in the catalog"),
        ([at_head, "--retry"], f"Error: nothing to repair for tenant '{at_head}'"),
        ([invalid, "--stamp", "--retry"], "Error: choose one of --stamp and --retry"),
        ([invalid], "Error: nothing changed: choose --stamp"),
        ([invalid, "--stamp"], f"Error: cannot stamp {invalid}: index {INDEX} is INVALID"),
        ([valid, "--retry"], f"Error: cannot retry {valid}: index {INDEX} is VALID"),
    ]
    for args, line in cases:
        out = ppp("tenant", "repair", *args)
        assert out.exit_code == 1, out.output
        assert line in out.output, out.output
    out = ppp("tenant", "repair", invalid)
    assert "interrupted inside revision o002 (an index built concurrently)" in out.output
    assert f"index {INDEX} (INVALID)" in out.output
    after = (records(settings, tenants), [indexes(settings, s, t) for t, s in tenants.items()])
    assert after == before


# -- the safe operations on their own ------------------------------------------------------------
def upgrade(ini: Path, tenants: dict[str, str], target: str = "head") -> tuple[int, str]:
    return finish(alembic(ini, tenants, target=target))


def oid(settings: Settings, shard: str, tenant: str) -> int:
    rows = shard_sql(settings, shard, "SELECT to_regclass(%s)::oid", (f'"{tenant}".{INDEX}',))
    return rows[0][0]


@pytest.mark.parametrize("body", [SAFE, NESTED], ids=["alone", "inside_a_block"])
def test_safe_create_keeps_a_valid_index_and_rebuilds_an_invalid_one(
    veneer_head: Topology, few: dict[str, str], tmp_path: Path, body: str
) -> None:
    settings = veneer_head.settings
    ini = project(tmp_path, body)
    code, out = upgrade(ini, few, "o001")
    assert code == 0, out
    (keep, keep_shard), (rebuild, rebuild_shard), (fresh, _) = few.items()
    shard_sql(settings, keep_shard, f'CREATE INDEX {INDEX} ON "{keep}".authors (last_name)')
    kept = oid(settings, keep_shard, keep)
    # A unique build over a duplicate fails and leaves its index INVALID (as a kill does).
    shard_sql(settings, rebuild_shard, f"INSERT INTO \"{rebuild}\".authors VALUES (0, 'name 1')")
    with pytest.raises(Exception, match="could not create unique index"):
        shard_sql(
            settings,
            rebuild_shard,
            f'CREATE UNIQUE INDEX CONCURRENTLY {INDEX} ON "{rebuild}".authors (last_name)',
        )
    assert indexes(settings, rebuild_shard, rebuild) == [(INDEX, False)]
    invalid = oid(settings, rebuild_shard, rebuild)

    code, out = upgrade(ini, few)
    assert code == 0, out
    all_at_head(settings, few)
    assert oid(settings, keep_shard, keep) == kept
    assert oid(settings, rebuild_shard, rebuild) != invalid
    assert fresh not in out  # nothing was interrupted


def test_safe_create_refuses_a_name_taken_by_another_table(
    veneer_head: Topology, few: dict[str, str], tmp_path: Path
) -> None:
    settings = veneer_head.settings
    ini = project(tmp_path, SAFE)
    tenant, shard = next(iter(few.items()))
    code, out = upgrade(ini, {tenant: shard}, "o001")
    assert code == 0, out
    shard_sql(
        settings,
        shard,
        f'CREATE TABLE "{tenant}".other (n int); CREATE INDEX {INDEX} ON "{tenant}".other (n)',
    )
    code, out = upgrade(ini, {tenant: shard})
    assert code != 0
    assert (
        f"cannot create index {INDEX} on authors: an index of that name exists on table other"
    ) in out
    assert revision(settings, shard, tenant) == "o001"
    assert indexes(settings, shard, tenant) == []


def test_sql_output_runs_outside_the_transaction(
    veneer_head: Topology, few: dict[str, str], tmp_path: Path
) -> None:
    """``--sql`` leaves the tenant's transaction around the block (its search_path kept) and
    renders the plain statements; run statement by statement, as psql does, it migrates."""
    settings = veneer_head.settings
    ini = project(tmp_path, SAFE)
    tenant, shard = next(iter(few.items()))
    binary = str(Path(sys.executable).parent / "alembic")
    args = [binary, "-c", str(ini), "-x", f"tenant={tenant}"]
    done = subprocess.run(
        [*args, "upgrade", "base:head", "--sql"], capture_output=True, text=True, check=True
    )
    sql = done.stdout
    assert (
        "SELECT set_config('search_path', current_setting('search_path'), false);\n\n"
        f"COMMIT;\n\nCREATE INDEX CONCURRENTLY {INDEX} ON authors (last_name);\n\nBEGIN;"
    ) in sql
    with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
        cur = conn.cursor()
        for chunk in sql.split(";\n"):
            statement = "\n".join(x for x in chunk.splitlines() if not x.startswith("--"))
            if statement.strip():
                cur.execute(statement)
    all_at_head(settings, {tenant: shard})
    down = subprocess.run(
        [*args, "downgrade", "head:o001", "--sql"], capture_output=True, text=True, check=True
    )
    assert f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX};" in down.stdout


def test_the_app_role_cannot_read_or_write_the_record(
    veneer_head: Topology, few: dict[str, str], tmp_path: Path
) -> None:
    settings = veneer_head.settings
    tenant, shard = next(iter(few.items()))
    code, out = upgrade(project(tmp_path, SAFE), {tenant: shard})
    assert code == 0, out
    for sql in ("SELECT * FROM ppp.tenant_outside", "DELETE FROM ppp.tenant_outside"):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            shard_sql(settings, shard, sql, role="app")


def test_a_revision_running_now_is_not_interrupted(
    veneer_head: Topology, few: dict[str, str], tmp_path: Path
) -> None:
    """A record whose session is alive is a revision running now: status says so, doctor has
    no finding, repair refuses; once the session is gone it is interrupted. A record whose
    tenant left the heads it started from is over: nobody names it."""
    settings = veneer_head.settings
    ini = project(tmp_path, SAFE)
    tenant, shard = next(iter(few.items()))
    code, out = upgrade(ini, {tenant: shard}, "o001")
    assert code == 0, out
    session = db.connect(settings.shard(shard), "admin", autocommit=True)
    try:
        session.cursor().execute(
            "INSERT INTO ppp.tenant_outside (schema_name, revision, label, heads, heads_after, "
            "pid, backend_start, application_name) SELECT %s, 'o002', "
            "'revision o002 (an index built concurrently)', '{o001}', '{o002}', pid, "
            "backend_start, 'by hand' FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            (tenant,),
        )
        out = ppp("status", "-c", str(ini), "--tenant", tenant, "--json")
        outside = json.loads(out.output)["tenants"][0]["outside"]
        assert outside["running"] is True and outside["application_name"] == "by hand"
        plain = ppp("status", "-c", str(ini), "--tenant", tenant).output
        assert f"outside {shard}/{tenant}: running revision o002" in plain
        report = doctor(settings, ini, tenants=[tenant])
        assert "interrupted_outside_transaction" not in {f.kind for f in report.findings}
        out = ppp("tenant", "repair", tenant, "--retry")
        assert out.exit_code == 1
        assert "wait for it to finish" in out.output
    finally:
        session.close()
    wait_for(lambda: named(ini, settings, {tenant: shard}), why="the session to end")
    moved = "UPDATE ppp.tenant_outside SET heads = %s WHERE schema_name = %s"
    shard_sql(settings, shard, moved, (["other"], tenant))
    assert named(ini, settings, {tenant: shard}) == {}
    shard_sql(settings, shard, moved, (["o001"], tenant))
    out = ppp("tenant", "repair", tenant, "--retry")
    assert out.exit_code == 0, out.output
    assert "record cleared: the next `alembic upgrade` runs revision o002" in out.output
    assert records(settings, {tenant: shard}) == {}
