"""Shared migrations (`alembic -n shared ...`, `ppp migrate`'s shared step) on real servers.

The test-only chain tests/scripts/shared_example creates schema shared_t, table
shared_t.users (read-only for the app role) and the trigger function shared_t.touch() on
every shard; tests/scripts/shared_tenant holds one tenant revision whose table has a foreign
key to shared_t.users and a trigger calling shared_t.touch(). Every test leaves the shards
as it found them: no shared_t, no shared version rows.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import psycopg2
import pytest
from alembic import command
from alembic.config import Config
from alembic.util import CommandError
from click.testing import CliRunner

from ppp_env import db
from ppp_env.cli.main import cli
from ppp_env.errors import PPPError
from ppp_env.shared.env import LOCK_KEY, RESULT_KEY, SharedOptions, current_shard
from tests.conftest import ROOT, drop_schemas, register, shard_sql, states, unregister

SHARED_SCRIPTS = ROOT / "tests" / "scripts" / "shared_example"
TENANT_SCRIPTS = ROOT / "tests" / "scripts" / "shared_tenant"


def write_ini(path: Path, *, shared: bool = True) -> Path:
    """An alembic.ini in tmp_path: test tenant chain, the repository's veneer, test shared."""
    sections = {
        "alembic": TENANT_SCRIPTS,
        "veneer": ROOT / "veneer_migrations",
        **({"shared": SHARED_SCRIPTS} if shared else {}),
    }
    path.write_text(
        "".join(
            f"[{name}]\nscript_location = {where}\nprepend_sys_path = {ROOT}\n"
            "path_separator = os\n\n"
            for name, where in sections.items()
        )
    )
    return path


@pytest.fixture
def ini(tmp_path) -> Path:
    return write_ini(tmp_path / "alembic.ini")


def shared_cfg(ini: Path, x: list[str] | None = None, **attributes) -> Config:
    cfg = Config(str(ini), ini_section="shared", stdout=io.StringIO())
    cfg.output_buffer = io.StringIO()
    if x is not None:
        cfg.cmd_opts = SimpleNamespace(x=x)  # what `alembic -x ...` passes
    cfg.attributes.update(attributes)
    return cfg


def out(cfg: Config) -> list[str]:
    return cfg.stdout.getvalue().splitlines()


def shared_state(settings, shard: str) -> tuple[list[str], bool]:
    """(revisions in ppp.shared_version, whether schema shared_t exists) on one shard."""
    with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("SELECT to_regnamespace('shared_t') IS NOT NULL")
        schema = cur.fetchone()[0]
        cur.execute("SELECT to_regclass('ppp.shared_version') IS NOT NULL")
        if not cur.fetchone()[0]:
            return [], schema
        cur.execute("SELECT version_num FROM ppp.shared_version ORDER BY 1")
        return [r[0] for r in cur.fetchall()], schema


def clean(settings) -> None:
    for shard in settings.shards:
        shard_sql(
            settings,
            shard,
            "DROP SCHEMA IF EXISTS shared_t CASCADE; DROP TABLE IF EXISTS ppp.shared_version",
        )


@pytest.fixture
def shards(veneer_head):
    """The session's shards, without shared objects before and after the test."""
    settings = veneer_head.settings
    for shard in settings.shards:
        assert shared_state(settings, shard) == ([], False), (
            f"shard {shard} has shared objects left by another test"
        )
    yield settings
    clean(settings)


def test_upgrade_reaches_every_shard_then_rerun_current_downgrade(ini, shards):
    settings = shards
    cfg = shared_cfg(ini)
    command.upgrade(cfg, "head")
    assert out(cfg) == [f"{s}: (base) -> sx02" for s in settings.shards]
    for shard, inst in settings.shards.items():
        assert shared_state(settings, shard) == (["sx02"], True)
        # The admin role owns the shared objects; the app role reads users but cannot write
        # them, and cannot see the version table.
        owner = shard_sql(
            settings,
            shard,
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'shared_t'",
        )
        assert owner == [(inst.admin_role,)]
        assert shard_sql(settings, shard, "SELECT count(*) FROM shared_t.users", role="app") == [
            (2,)
        ]
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            shard_sql(settings, shard, "DELETE FROM shared_t.users", role="app")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            shard_sql(settings, shard, "SELECT * FROM ppp.shared_version", role="app")
        # The trigger function works whatever the caller's search_path.
        touched = shard_sql(
            settings,
            shard,
            "SET search_path = pg_catalog; UPDATE shared_t.users SET name = name WHERE id = 1 "
            "RETURNING updated_at IS NOT NULL",
        )
        assert touched == [(True,)]

    rerun = shared_cfg(ini)
    command.upgrade(rerun, "head")
    assert out(rerun) == [f"{s}: sx02, nothing to do" for s in settings.shards]
    assert {s.status for s in rerun.attributes[RESULT_KEY].shards} == {"current"}

    current = shared_cfg(ini)
    command.current(current)
    assert out(current) == [f"{s} sx02 (head)" for s in settings.shards]

    command.downgrade(shared_cfg(ini, x=["shard=cyberdyne"]), "sx01")
    current = shared_cfg(ini)
    command.current(current)
    assert out(current) == ["bluth_co sx02 (head)", "cyberdyne sx01", "initech sx02 (head)"]
    fn = "SELECT to_regprocedure('shared_t.touch()') IS NOT NULL"
    assert shard_sql(settings, "cyberdyne", fn) == [(False,)]
    assert shard_sql(settings, "initech", fn) == [(True,)]

    command.downgrade(shared_cfg(ini), "base")
    current = shared_cfg(ini)
    command.current(current)
    assert out(current) == [f"{s} (base)" for s in settings.shards]
    for shard in settings.shards:
        assert shared_state(settings, shard) == ([], False)


def test_stamp_and_history(ini, shards):
    settings = shards
    command.stamp(shared_cfg(ini, x=["shard=initech"]), "sx01")
    assert shared_state(settings, "initech") == (["sx01"], False)  # stamped, nothing created
    assert shared_state(settings, "bluth_co") == ([], False)
    cfg = shared_cfg(ini)
    command.history(cfg)
    assert [line.split(",")[0] for line in out(cfg)] == ["sx01 -> sx02 (head)", "<base> -> sx01"]
    cfg = shared_cfg(ini, x=["shard=initech"])
    command.history(cfg, indicate_current=True)
    assert out(cfg)[1].startswith("<base> -> sx01 (current), schema shared_t")
    command.stamp(shared_cfg(ini, x=["shard=initech"]), "base")
    assert shared_state(settings, "initech") == ([], False)


def test_current_shard_outside_a_run_is_an_error():
    with pytest.raises(PPPError, match=r"only available while PPP runs shared migrations"):
        current_shard()


def test_unreachable_shard_is_named_and_the_others_migrate(ini, shards, topology):
    settings = shards
    broken = topology.settings_for(topology.variant(PPP_SHARD_INITECH_PORT="1"))
    cfg = shared_cfg(ini, **{"ppp.settings": broken})
    with pytest.raises(CommandError) as err:
        command.upgrade(cfg, "head")
    message = str(err.value)
    assert message.startswith("shared upgrade failed on 1 of 3 shard(s)")
    assert (
        "shard initech: cannot connect to shard 'initech' at "
        "postgresql+psycopg2://initech_admin:***@127.0.0.1:1/initech" in message
    )
    assert settings.shard("initech").admin_password not in message
    assert out(cfg) == ["bluth_co: (base) -> sx02", "cyberdyne: (base) -> sx02", "initech: failed"]
    assert shared_state(settings, "bluth_co") == (["sx02"], True)
    assert shared_state(settings, "cyberdyne") == (["sx02"], True)
    assert shared_state(settings, "initech") == ([], False)

    current = shared_cfg(ini, **{"ppp.settings": broken})
    with pytest.raises(CommandError, match="shard initech: cannot connect"):
        command.current(current)
    assert out(current)[-1] == "initech (unreachable)"

    # A rerun with the shard back does what is left.
    command.upgrade(shared_cfg(ini), "head")
    assert shared_state(settings, "initech") == (["sx02"], True)


def test_the_alembic_command_line_fails_non_zero_naming_the_shard(ini, shards, tmp_path):
    settings = shards
    alembic = Path(sys.executable).parent / "alembic"
    env = dict(os.environ, PPP_SHARD_CYBERDYNE_PORT="1")
    proc = subprocess.run(
        [str(alembic), "-c", str(ini), "-n", "shared", "upgrade", "head"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert settings.shard("cyberdyne").admin_password not in proc.stderr + proc.stdout
    # Alembic prints its FAILED line on stdout, after the per-shard lines.
    lines = proc.stdout.splitlines()
    assert lines[:3] == ["bluth_co: (base) -> sx02", "cyberdyne: failed", "initech: (base) -> sx02"]
    assert lines[3] == (
        "FAILED: shared upgrade failed on 1 of 3 shard(s) (the others are done; a rerun does "
        "what is left):"
    )
    assert lines[4].startswith(
        "shard cyberdyne: cannot connect to shard 'cyberdyne' at "
        "postgresql+psycopg2://cyberdyne_admin:***@127.0.0.1:1/cyberdyne: "
    )
    assert shared_state(settings, "cyberdyne") == ([], False)


def test_sql_renders_each_shard_and_touches_nothing(ini, shards, tmp_path):
    settings = shards
    cfg = shared_cfg(ini)
    command.upgrade(cfg, "head", sql=True)
    sql = cfg.output_buffer.getvalue()
    chunks = sql.split("-- PPP: shard ")[1:]
    assert [c.splitlines()[0] for c in chunks] == list(settings.shards)
    for shard, chunk in zip(settings.shards, chunks, strict=True):
        app = settings.shard(shard).app_role
        assert chunk.count("BEGIN;") == 1 and chunk.count("COMMIT;") == 1
        assert "CREATE SCHEMA IF NOT EXISTS ppp;" in chunk
        assert "CREATE TABLE ppp.shared_version" in chunk
        assert "SET LOCAL search_path TO public;" in chunk
        assert "CREATE SCHEMA shared_t;" in chunk
        assert f'GRANT USAGE ON SCHEMA shared_t TO "{app}";' in chunk  # current_shard()
        assert "CREATE FUNCTION shared_t.touch()" in chunk
        assert "INSERT INTO ppp.shared_version (version_num) VALUES ('sx01')" in chunk
    for shard in settings.shards:
        assert shared_state(settings, shard) == ([], False)

    target = tmp_path / "out"
    cfg = shared_cfg(ini, x=[f"sql_dir={target}", "shard=initech,bluth_co"])
    command.upgrade(cfg, "sx01:sx02", sql=True)
    assert sorted(p.name for p in target.iterdir()) == ["bluth_co.sql", "initech.sql"]
    text = (target / "initech.sql").read_text()
    assert text.startswith("-- PPP: shard initech\n")
    assert "CREATE FUNCTION shared_t.touch()" in text and "CREATE SCHEMA shared_t" not in text
    assert "UPDATE ppp.shared_version SET version_num='sx02'" in text
    assert cfg.output_buffer.getvalue() == ""


@pytest.mark.parametrize(
    ("x", "error"),
    [
        (["shard=bluth_co,atlantis"], "unknown shard 'atlantis'; PPP_SHARDS lists: "),
        (["shard="], "-x shard= needs at least one name"),
        (["tenant=acme"], "unknown -x option 'tenant' for shared migrations"),
        (["env=Bad Name"], "PPP_ENV='Bad Name' is not valid"),
    ],
)
def test_bad_input_is_a_clear_error_that_changes_nothing(ini, shards, x, error):
    settings = shards
    version_table = "SELECT to_regclass('ppp.shared_version')"
    # An empty version table may exist already (another test's run left it at base): the
    # point is that this command creates or changes nothing.
    before = {shard: shard_sql(settings, shard, version_table) for shard in settings.shards}
    with pytest.raises(CommandError) as err:
        command.upgrade(shared_cfg(ini, x=x), "head")
    assert str(err.value).startswith(error)
    for shard in settings.shards:
        assert shared_state(settings, shard) == ([], False)
        assert shard_sql(settings, shard, version_table) == before[shard]


# -- ppp migrate --------------------------------------------------------------------------------
@pytest.fixture
def tenants(shards, request):
    """One test tenant per shard (prefix sh_), registered for the test, removed afterwards."""
    settings = shards
    tag = request.node.name.replace("test_", "")[:12]
    names = {f"sh_{tag}_{shard[:3]}": shard for shard in settings.shards}
    register(settings, names)
    yield names
    unregister(settings, names)
    drop_schemas(settings, names)


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_ppp_migrate_runs_shared_before_tenants(ini, tenants, settings):
    names = ",".join(sorted(tenants))
    result = run("migrate", "-c", str(ini), "--tenant", names)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    steps = [line.split(":")[0] for line in lines if line[:2] in ("1/", "2/", "3/", "4/")]
    assert steps == ["1/4 veneer", "2/4 shared", "3/4 tenants", "4/4 veneer refresh"]
    for shard in settings.shards:
        assert f"shared {shard}: (base) -> sx02" in lines
    # The tenant revision's foreign key to shared_t.users exists: the shared step ran first.
    for tenant, shard in tenants.items():
        assert states(settings, shard, [tenant])[tenant].revision == "st01"
        fk = shard_sql(
            settings,
            shard,
            "SELECT confrelid::regclass::text FROM pg_constraint WHERE contype = 'f' "
            "AND conrelid = to_regclass(%s)",
            (f"{tenant}.posts",),
        )
        assert fk == [("shared_t.users",)]
    # Through the veneer, as the application: the foreign key and the shared trigger work
    # on the shard (run as the tenant table's owner; the app role needs no REFERENCES).
    tenant = sorted(tenants)[0]
    with db.connection(settings.veneer, "app") as conn, conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO {tenant}.posts (id, author_id, title) VALUES (1, 1, 'Fiesta') "
            "RETURNING updated_at IS NOT NULL"
        )
        assert cur.fetchone() == (True,)
        conn.commit()
        with pytest.raises(psycopg2.Error, match="foreign key"):
            cur.execute(f"INSERT INTO {tenant}.posts (id, author_id, title) VALUES (2, 99, 'x')")
        conn.rollback()

    result = run("migrate", "-c", str(ini), "--tenant", names, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["shared"] == {
        "skipped": None,
        "ok": True,
        "shards": [
            {"shard": s, "before": "sx02", "after": "sx02", "error": None} for s in settings.shards
        ],
        "blocked": [],
    }
    assert {t["status"] for t in report["tenants"]} == {"current"}

    result = run("status", "-c", str(ini), "--tenant", names, "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["shared"] == {
        "heads": ["sx02"],
        "shards": [{"shard": s, "revision": "sx02", "migrations": "head"} for s in settings.shards],
    }
    result = run("status", "-c", str(ini), "--tenant", names)
    assert result.exit_code == 0, result.output
    assert "shared (head: sx02)" in result.output
    assert "tenants (head: st01)" in result.output
    # The tenants go first: their tables reference shared_t.users.
    drop_schemas(settings, tenants)


def test_shared_failure_on_a_shard_stops_its_tenants_only(ini, tenants, settings):
    # A schema in the way: the shared chain's CREATE SCHEMA fails on initech alone.
    shard_sql(settings, "initech", "CREATE SCHEMA shared_t")
    names = ",".join(sorted(tenants))
    result = run("migrate", "-c", str(ini), "--tenant", names, "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    failed = {s["shard"]: s for s in report["shared"]["shards"]}
    assert failed["initech"]["error"] == 'schema "shared_t" already exists'
    assert failed["initech"]["after"] is None
    assert failed["bluth_co"]["after"] == "sx02" and failed["bluth_co"]["error"] is None
    assert report["shared"]["blocked"] == ["initech"]
    by_tenant = {t["tenant"]: t for t in report["tenants"]}
    for tenant, shard in tenants.items():
        if shard == "initech":
            assert by_tenant[tenant]["status"] == "not_run"
            assert by_tenant[tenant]["error"] == "shared migrations failed"
            assert states(settings, shard, [tenant])[tenant].exists is False
        else:
            assert by_tenant[tenant]["status"] == "migrated"
            assert states(settings, shard, [tenant])[tenant].revision == "st01"
    assert "Error: shared upgrade failed on 1 of 3 shard(s)" in result.stderr
    assert 'shard initech: schema "shared_t" already exists' in result.stderr
    assert "shard initech: its 1 tenant(s) were not migrated" in result.stderr
    assert shared_state(settings, "initech") == ([], True)  # rolled back: no version row

    # Fixed, a rerun does what is left.
    shard_sql(settings, "initech", "DROP SCHEMA shared_t")
    result = run("migrate", "-c", str(ini), "--tenant", names)
    assert result.exit_code == 0, result.output
    assert "shared initech: (base) -> sx02" in result.output
    assert "shared bluth_co: sx02, nothing to do" in result.output
    assert "migrate: 1 migrated, 2 already current, 0 failed" in result.output
    drop_schemas(settings, tenants)


def test_shared_options_from_x():
    base = SharedOptions(quiet=True)
    opts = SharedOptions.from_x({"shard": " a, b ", "env": "staging"}, base)
    assert (opts.shards, opts.quiet, base.shards) == (["a", "b"], True, None)


def test_a_shard_another_run_holds_is_reported_and_the_others_migrate(ini, shards, topology):
    settings = shards
    quick = topology.settings_for(topology.variant(PPP_LOCK_TIMEOUT="0.2"))
    with db.connection(settings.shard("bluth_co"), "admin") as holder:
        holder.cursor().execute("SELECT pg_advisory_xact_lock(%s, %s)", LOCK_KEY)
        cfg = shared_cfg(ini, **{"ppp.settings": quick})
        with pytest.raises(CommandError, match="shard bluth_co: canceling statement due to lock"):
            command.upgrade(cfg, "head")
        holder.rollback()
    assert shared_state(settings, "bluth_co") == ([], False)
    assert shared_state(settings, "initech") == (["sx02"], True)


def test_env_selects_the_settings_file(ini, shards, topology, tmp_path):
    """`-x env=NAME` reads .env.NAME of the project folder, as the veneer environment does."""
    project = tmp_path / "project"
    project.mkdir()
    (project / ".env.alt").write_text(
        "".join(f"{k}={v}\n" for k, v in topology.environ.items() if k.startswith("PPP_"))
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPP_")}
    env["PPP_PROJECT_DIR"] = str(project)
    alembic = str(Path(sys.executable).parent / "alembic")

    def run_alembic(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [alembic, "-c", str(ini), "-n", "shared", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )

    proc = run_alembic("-x", "env=alt", "current")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [f"{s} (base)" for s in shards.shards]
    proc = run_alembic("current")  # no .env in the project folder, nothing in the environment
    assert proc.returncode != 0
    assert "FAILED: PPP_SHARDS is not set" in proc.stdout


def test_ppp_migrate_narrowed_runs_shared_on_those_shards_only(ini, tenants, settings):
    mine = sorted(tenants)
    on_cyberdyne = [t for t in mine if tenants[t] == "cyberdyne"]
    # --tenant: the shared step runs on the shards of those tenants.
    result = run("migrate", "-c", str(ini), "--tenant", ",".join(on_cyberdyne), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [s["shard"] for s in report["shared"]["shards"]] == ["cyberdyne"]
    assert [(t["tenant"], t["status"]) for t in report["tenants"]] == [
        (on_cyberdyne[0], "migrated")
    ]
    assert shared_state(settings, "bluth_co") == ([], False)
    # --shard with --tenant: the selected shard only (the example tenants stay out of it).
    result = run(
        "migrate", "-c", str(ini), "--shard", "initech", "--tenant", ",".join(mine), "--json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [s["shard"] for s in report["shared"]["shards"]] == ["initech"]
    assert {t["shard"] for t in report["tenants"]} == {"initech"}
    assert shared_state(settings, "bluth_co") == ([], False)
    drop_schemas(settings, tenants)


def test_operations_migrate_is_the_library_call_behind_ppp_migrate(ini, tenants, settings):
    from ppp_env.operations import MigrateOptions, migrate

    heard: list[tuple[str, str]] = []
    result = migrate(
        settings,
        ini,
        MigrateOptions(tenants=sorted(tenants), output="quiet"),
        say=lambda step, detail: heard.append((step, detail)),
    )
    assert result.ok, result.failure_message()
    assert [step for step, _ in heard] == [
        "1/4 veneer",
        "2/4 shared",
        *(f"shared {s}" for s in settings.shards),
        "3/4 tenants",
        "4/4 veneer refresh",
    ]
    assert [(s.shard, s.before, s.after) for s in result.shared.shards] == [
        (s, None, "sx02") for s in settings.shards
    ]
    assert sorted(t.tenant for t in result.tenants.tenants if t.status == "migrated") == sorted(
        tenants
    )
    assert sorted(result.tenants.refreshed) == sorted(tenants)
    drop_schemas(settings, tenants)
