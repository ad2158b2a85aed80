"""`ppp migrate`, `ppp status`, `ppp demo`: in-process, exit codes and output."""

from __future__ import annotations

import json

from alembic import command
from click.testing import CliRunner

from ppp_env.cli.main import cli
from tests.conftest import ROOT, fleet_config, opts

INI = str(ROOT / "alembic.ini")
EXAMPLE = ("bluth_co", "cyberdyne", "initech")


def run(*args: str):
    result = CliRunner().invoke(cli, list(args))
    return result


def test_migrate_json_then_status_and_demo(veneer_head):
    result = run("migrate", "-c", INI, "--json", "--tenant", ",".join(EXAMPLE))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert {t["tenant"] for t in report["tenants"]} == set(EXAMPLE)
    assert {t["after"] for t in report["tenants"]} == {"0002"}

    result = run("status", "-c", INI, "--json", "--tenant", ",".join(EXAMPLE))
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["heads"] == ["0002"]
    assert [(t["tenant"], t["migrations"], t["veneer"]) for t in status["tenants"]] == [
        (name, "head", "in step") for name in EXAMPLE
    ]

    result = run("demo")
    assert result.exit_code == 0, result.output
    assert result.output.count("Hemingway") == 3
    assert (
        "veneer=> SELECT * FROM \"bluth_co\".authors WHERE first_name = 'Ernest';" in result.output
    )


def test_migrate_plain_output_is_quiet_and_idempotent(veneer_head):
    # The first run brings the example tenants to head (whatever ran before this test) ...
    first = run("migrate", "-c", INI, "--tenant", ",".join(EXAMPLE))
    assert first.exit_code == 0, first.output
    # ... the second has nothing to do, and says so in a few plain lines.
    result = run("migrate", "-c", INI, "--tenant", ",".join(EXAMPLE))
    assert result.exit_code == 0, result.output
    assert "upgrade: 0 migrated, 3 already current, 0 failed" in result.output
    assert "migrate: 0 migrated, 3 already current, 0 failed" in result.output
    lines = result.output.splitlines()
    steps = [line.split(":")[0] for line in lines if line[:2] in ("1/", "2/", "3/", "4/")]
    assert steps == ["1/4 veneer", "2/4 shared", "3/4 tenants", "4/4 veneer refresh"]
    # The repository's shared chain is empty: every shard is at (base), nothing to do.
    for shard in ("bluth_co", "cyberdyne", "initech"):
        assert f"shared {shard}: (base), nothing to do" in lines
    assert "Traceback" not in result.output


def test_migrate_and_status_without_a_shared_section(veneer_head, tmp_path):
    """An alembic.ini from before shared migrations: the step is skipped with a note."""
    ini = tmp_path / "alembic.ini"
    ini.write_text(
        "".join(
            f"[{section}]\nscript_location = {ROOT / folder}\nprepend_sys_path = {ROOT}\n"
            "path_separator = os\n\n"
            for section, folder in (("alembic", "migrations"), ("veneer", "veneer_migrations"))
        )
    )
    result = run("migrate", "-c", str(ini), "--tenant", ",".join(EXAMPLE))
    assert result.exit_code == 0, result.output
    assert f"2/4 shared: no [shared] section in {ini}: shared migrations skipped" in result.output
    result = run("migrate", "-c", str(ini), "--tenant", ",".join(EXAMPLE), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["shared"] == {
        "skipped": f"no [shared] section in {ini}: shared migrations skipped",
        "ok": True,
        "shards": [],
        "blocked": [],
    }
    result = run("status", "-c", str(ini), "--tenant", ",".join(EXAMPLE), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["shared"] is None


def test_status_shows_a_stale_veneer_and_migrate_refreshes_it(fleet, tmp_path):
    tenant = sorted(fleet)[0]
    command.upgrade(fleet_config(**opts(tenants=[tenant], refresh=False)), "f001")
    cfg_dir = fleet_config().get_main_option("script_location")
    ini = tmp_path / "fleet.ini"  # never in the source tree
    ini.write_text(
        f"[alembic]\nscript_location = {cfg_dir}\nprepend_sys_path = {ROOT}\n"
        "path_separator = os\n\n[veneer]\n"
        f"script_location = {ROOT / 'veneer_migrations'}\nprepend_sys_path = {ROOT}\n"
        "path_separator = os\n"
    )
    result = run("status", "-c", str(ini), "--tenant", tenant)
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if tenant in x)
    assert "behind" in line and "stale" in line
    result = run("migrate", "-c", str(ini), "--tenant", tenant)
    assert result.exit_code == 0, result.output
    result = run("status", "-c", str(ini), "--tenant", tenant, "--json")
    (row,) = json.loads(result.stdout)["tenants"]
    assert (row["revision"], row["migrations"], row["veneer"]) == ("f003", "head", "in step")


def test_migrate_bad_input_is_one_error_line(veneer_head):
    result = run("migrate", "-c", INI, "--tenant", "no_such_tenant")
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        "Error: unknown tenant no_such_tenant: not in the catalog (see `ppp tenant list`; "
        "add one with `ppp tenant add`)"
    )
    result = run("migrate", "-c", INI, "--shard", "atlantis")
    assert result.exit_code == 1
    assert result.output.startswith("Error: unknown shard 'atlantis'")  # before anything ran
    result = run("migrate", "-c", "/nonexistent/alembic.ini")
    assert result.exit_code == 1
    assert "Error: no Alembic configuration at /nonexistent/alembic.ini" in result.output


def test_migrate_lock_timeout_and_retries_reach_the_run(fleet, settings, tmp_path):
    from ppp_env import db

    command.upgrade(fleet_config(**opts(tenants=sorted(fleet), refresh=False)), "f001")
    victim = sorted(fleet)[0]
    ini = tmp_path / "fleet.ini"
    ini.write_text(
        f"[alembic]\nscript_location = {fleet_config().get_main_option('script_location')}\n"
        f"prepend_sys_path = {ROOT}\npath_separator = os\n\n[veneer]\n"
        f"script_location = {ROOT / 'veneer_migrations'}\nprepend_sys_path = {ROOT}\n"
        "path_separator = os\n"
    )
    reader = db.connect(settings.shard(fleet[victim]), "app", application_name="test-reader")
    try:
        reader.cursor().execute(f"SELECT 1 FROM {victim}.items")
        result = run(
            "migrate", "-c", str(ini), "--tenant", ",".join(sorted(fleet)), "--json",
            "--lock-timeout", "0.2", "--retries", "1",
        )  # fmt: skip
    finally:
        reader.close()
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    (locked,) = [t for t in report["tenants"] if t["status"] == "locked"]
    assert (locked["tenant"], locked["attempts"]) == (victim, 2)
    assert "lock_timeout 0.2 s" in locked["error"] and "test-reader" in locked["error"]
    assert report["retries"] == 1
    bad = run("migrate", "-c", str(ini), "--lock-timeout", "soon")
    assert bad.exit_code == 2 and "'soon' is not a valid float range" in bad.output
