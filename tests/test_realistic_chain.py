"""A realistic chain over 30 tenants on 3 shards, end to end, at default server settings.

The chain (tests/scripts/realistic, see tests/realistic.py) has the shapes a real
application's has: 56 tables per tenant, an enum type that gains a label, foreign keys and
triggers into a shard-wide shared schema, a branch and a merge, revisions that read the
database (a query, an ORM Session.query, the Inspector), renderable data migrations, a
column added and one dropped, a table renamed. After every step the veneer must match the
shards exactly and work as veneer_app. Two revisions append a line to a file on every run of
their code: one that runs online (once per tenant, plus at most once while PPP learns that
it cannot be rendered) and one that is rendered (at most once per run).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.util import CommandError
from click.testing import CliRunner

from ppp_env.settings import Settings
from tests import realistic as rc


@pytest.fixture
def realistic_fleet(veneer_head, tmp_path) -> Iterator[tuple[Path, dict[str, str]]]:
    """30 tenants (10 per shard) registered for the realistic chain; afterwards the tenants,
    their schemas and the shared chain are gone from every shard and the veneer."""
    settings: Settings = veneer_head.settings
    ini = rc.write_ini(tmp_path)
    tenants = rc.tenant_names(settings)
    rc.cleanup(settings, ini, tenants)  # leftovers of an interrupted run
    try:
        rc.register(settings, tenants)
        yield ini, tenants
    finally:
        rc.cleanup(settings, ini, tenants)


def assert_at(settings: Settings, tenants: dict[str, str], revision: str | None) -> None:
    found = {t: st.revision for t, st in rc.states(settings, tenants).items()}
    assert found == dict.fromkeys(tenants, revision)


def assert_veneer(settings: Settings, tenants: dict[str, str], probe: int) -> None:
    rc.check_veneer_matches_shards(settings, tenants)
    rc.check_through_veneer(settings, tenants, probe)


class Effects:
    """The lines rc16 and rc18 appended since the last :meth:`take`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def take(self) -> list[str]:
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        self.path.write_text("")
        return lines


def assert_ran_once(effects: Effects, tenants: dict[str, str], rendered_before: bool) -> None:
    """rc16 (online) ran once per tenant, and at most once to find out it cannot be rendered
    (never when an earlier run found it); rc18 (rendered) at most once in all."""
    lines = effects.take()
    online = sorted(line for line in lines if line.startswith("rc16 ") and "ppp_" not in line)
    assert online == sorted(f"rc16 {t}" for t in tenants)
    probing = [line for line in lines if line.startswith("rc16 ppp_")]
    assert len(probing) <= (0 if rendered_before else 1), probing
    assert lines.count("rc18") <= 1, lines
    assert len(lines) == len(online) + len(probing) + lines.count("rc18")


def line_of(ini: Path, revision_file: str, needle: str) -> str:
    path = ini.parent / "tenant" / "versions" / revision_file
    number = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if needle in text)
    return f"{revision_file} line {number}"


#: Each revision that cannot be rendered, what it calls and the text of that line.
UNRENDERABLE = {
    "rc10": (
        "Connection.execute(SELECT count(*) FROM accounts).scalar()",
        "rc10_account_count.py",
        ".scalar()",
    ),
    "rc11": ("Inspector.get_table_names()", "rc11_label_search_indexes.py", "get_table_names()"),
    "rc16": ("Query.count() -> Connection.connect()", "rc16_session_query.py", ".count()"),
    "rc17": ("Inspector.get_columns()", "rc17_inspector_columns.py", "get_columns("),
}


def assert_lists_every_unrenderable_revision(ini: Path, message: str) -> None:
    assert "cannot render the SQL offline: 4 revision(s) need the database" in message
    for revision, (call, file, needle) in UNRENDERABLE.items():
        where = line_of(ini, file, needle)
        assert f"revision {revision} (" in message, revision
        assert f"it reads from the database ({call}, {where})" in message, (revision, message)


def test_realistic_chain_end_to_end(realistic_fleet, settings, tmp_path, monkeypatch):
    ini, tenants = realistic_fleet
    names = sorted(tenants)
    effects = Effects(tmp_path / "effects.txt")
    monkeypatch.setenv(rc.EFFECTS_VARIABLE, str(effects.path))

    # 0. --sql names every revision it cannot render, in one run, and changes nothing.
    with pytest.raises(CommandError) as err:
        command.upgrade(rc.tenant_config(ini, names), "base:head", sql=True)
    assert_lists_every_unrenderable_revision(ini, str(err.value))
    assert all(not st.exists for st in rc.states(settings, tenants).values())
    effects.take()

    # 1. ppp migrate: veneer, shared chain on every shard, 30 tenants from base, refresh.
    from ppp_env.cli.main import cli

    result = CliRunner().invoke(cli, ["migrate", "-c", str(ini), "--tenant", ",".join(names)])
    assert result.exit_code == 0, result.output
    assert_at(settings, tenants, rc.HEAD)
    assert_ran_once(effects, tenants, rendered_before=True)  # --sql found rc16 already
    for revision, (call, file, needle) in UNRENDERABLE.items():
        where = line_of(ini, file, needle)
        assert f"ran online: revision {revision} (" in result.output
        assert f"it reads from the database ({call}, {where})" in result.output
    tables = rc.shard_tables(settings, tenants)
    assert all(len(t) >= 50 for t in tables.values()), {k: len(v) for k, v in tables.items()}
    assert_veneer(settings, tenants, probe=101)

    # 2. Six revisions back (a table renamed back, a column restored, one removed...).
    command.downgrade(rc.tenant_config(ini, names), rc.STEPS_BACK)
    assert_at(settings, tenants, rc.BACK)
    tables = rc.shard_tables(settings, tenants)
    assert all("notes_7" in t and "memos" not in t for t in tables.values())
    assert_veneer(settings, tenants, probe=102)

    # 3. Forward again (each revision's code once per tenant or once in all, as before);
    # then all the way down and up.
    effects.take()
    command.upgrade(rc.tenant_config(ini, names), "head")
    assert_at(settings, tenants, rc.HEAD)
    assert_ran_once(effects, tenants, rendered_before=True)
    assert_veneer(settings, tenants, probe=103)

    command.downgrade(rc.tenant_config(ini, names), "base")
    assert_at(settings, tenants, None)
    for shard, schemas in rc.by_shard(tenants).items():
        leftovers = rc.shard_rows(
            settings,
            shard,
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'S') "
            "AND c.relname <> 'alembic_version' UNION ALL "
            "SELECT n.nspname, t.typname FROM pg_type t JOIN pg_namespace n "
            "ON n.oid = t.typnamespace WHERE n.nspname = ANY(%s) AND t.typtype = 'e'",
            (schemas, schemas),
        )
        assert leftovers == [], f"{shard}: downgrade to base left {leftovers}"
    rc.check_veneer_matches_shards(settings, tenants)  # no foreign tables left either

    command.upgrade(rc.tenant_config(ini, names), "head")
    assert_at(settings, tenants, rc.HEAD)
    assert_veneer(settings, tenants, probe=104)

    # 4. The revisions that read the database saw the tenant as SQLAlchemy's default schema.
    for tenant, shard in sorted(tenants.items()):
        log = rc.shard_rows(
            settings,
            shard,
            f'SELECT revision, default_schema, detail FROM "{tenant}".migration_log ORDER BY 1',
        )
        assert log == [
            ("rc10", tenant, "accounts=3"),
            ("rc11", tenant, ",".join(rc.CATALOG_TABLES)),
            ("rc16", tenant, "moods=3"),
        ], tenant
        kv = rc.shard_rows(
            settings,
            shard,
            f'SELECT key, value FROM "{tenant}".settings_kv ORDER BY key',
        )
        assert kv == [("account_count", "3"), ("currency", "EUR"), ("theme", "dark")], tenant
        indexes = rc.shard_rows(
            settings,
            shard,
            "SELECT count(*) FROM pg_indexes WHERE schemaname = %s "
            "AND indexname LIKE 'ix\\_catalog\\_%%\\_label\\_lower'",
            (tenant,),
        )
        assert indexes == [(10,)], tenant


def test_sql_lists_every_unrenderable_revision_and_fails(realistic_fleet, settings):
    """`alembic upgrade head --sql` on the command line: every revision it cannot render,
    why and where, in one run; Alembic's FAILED and exit code 255; nothing written."""
    ini, tenants = realistic_fleet
    exe = Path(sys.executable).parent / "alembic"
    done = subprocess.run(
        [
            str(exe),
            "-c",
            str(ini),
            "-x",
            f"tenant={sorted(tenants)[0]}",
            "upgrade",
            "head",
            "--sql",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 255, done.stdout + done.stderr
    assert done.stdout.startswith("FAILED: cannot render the SQL offline"), done.stdout
    assert_lists_every_unrenderable_revision(ini, done.stdout)
    assert "CREATE TABLE" not in done.stdout + done.stderr  # no SQL before the failure
    assert all(not st.exists for st in rc.states(settings, tenants).values())
