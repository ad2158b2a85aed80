"""Tenant tags and staged rollouts (`ppp tenant tag`, `ppp migrate --rollout FILE`,
`ppp rollout status|resume|abort`) on the session topology."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ppp_env.cli.main import cli
from ppp_env.errors import PPPError
from ppp_env.rollout import store
from ppp_env.rollout.spec import StageSpec, load_rollout, parse_duration, resolve
from ppp_env.veneer import catalog
from ppp_env.veneer.catalog import Tenant, admin_connection
from tests.conftest import ROOT, drop_schemas, register, shard_sql, states, unregister

INI = str(ROOT / "alembic.ini")


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture
def tenants(veneer_head):
    """Two tenants per shard, tagged by tier (one internal per shard), no open rollout."""
    settings = veneer_head.settings
    names = {f"ro_{shard[:3]}{i}": shard for shard in settings.shards for i in range(2)}
    register(settings, names)
    with admin_connection(settings) as conn:
        for name in names:
            tier = "internal" if name.endswith("0") else "paid"
            catalog.set_tags(conn, name, {"tier": tier})
    yield names
    _forget_open_rollout(settings)
    unregister(settings, names)
    drop_schemas(settings, names)


def _forget_open_rollout(settings) -> None:
    with admin_connection(settings) as conn:
        conn.execute(catalog.text("DELETE FROM ppp.rollouts WHERE state IN ('running', 'halted')"))


def _rollouts(settings) -> int:
    with admin_connection(settings) as conn:
        return conn.execute(catalog.text("SELECT count(*) FROM ppp.rollouts")).scalar_one()


def _revision(settings, tenant: str, shard: str) -> str | None:
    return states(settings, shard, [tenant])[tenant].revision


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rollout.toml"
    path.write_text(text)
    return path


# -- tags -----------------------------------------------------------------------------------------
def test_tag_set_remove_and_list(tenants, settings):
    name = sorted(tenants)[0]
    result = run("tenant", "tag", name, "region=eu", "tier=gold")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"tenant {name}: region=eu tier=gold"
    result = run("tenant", "tag", name, "--remove", "region")
    assert result.exit_code == 0, result.output
    listed = json.loads(run("tenant", "list", name, "--json").stdout)
    assert listed[0]["tags"] == {"tier": "gold"}
    plain = run("tenant", "list", *sorted(tenants)).output
    assert "tags" in plain and "tier=gold" in plain


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["Bad=1"], "Error: bad tag key 'Bad'"),
        (["tier"], "Error: bad tag 'tier': expected key=value"),
        (["tier="], "Error: bad value for tag 'tier'"),
        ([], "Error: nothing to do"),
        (["tier=x", "--remove", "tier"], "Error: tag 'tier' is both set and removed"),
    ],
)
def test_bad_tags_change_nothing(tenants, args, error):
    name = sorted(tenants)[0]
    before = json.loads(run("tenant", "list", name, "--json").stdout)[0]["tags"]
    result = run("tenant", "tag", name, *args)
    assert result.exit_code == 1
    assert result.output.splitlines()[-1].startswith(error), result.output
    assert json.loads(run("tenant", "list", name, "--json").stdout)[0]["tags"] == before


def test_tag_unknown_tenant(veneer_head):
    result = run("tenant", "tag", "no_such_tenant", "tier=x")
    assert result.exit_code == 1
    assert "Error: unknown tenant 'no_such_tenant'" in result.output


def test_onboarding_revision_and_create_carry_tags(veneer_head, settings, tmp_path):
    from alembic.script import ScriptDirectory

    from ppp_env.lifecycle import create_tenant, remove_tenant
    from ppp_env.veneer.env import Onboarding, veneer_config
    from ppp_env.veneer.onboarding import write_tenant_revision

    # The revision `ppp tenant add --tag` writes names its tags ...
    versions = tmp_path / "veneer_migrations"
    shutil.copytree(ROOT / "veneer_migrations", versions, ignore=shutil.ignore_patterns("t*_*"))
    cfg = veneer_config(settings)
    cfg.set_main_option("script_location", str(versions))
    script = ScriptDirectory.from_config(cfg)
    path = write_tenant_revision(script, "ro_onb", "initech", "b41e7d2a9c53", tags={"tier": "x"})
    body = path.read_text()
    assert "TAGS = {'tier': 'x'}" in body and "onboard(TENANT, SHARD, tags=TAGS)" in body
    # ... and the veneer run that registers it gives it those tags.
    try:
        with admin_connection(settings) as conn:
            onboarding = Onboarding(pending=[("ro_onb", "initech")], tags={"ro_onb": {"tier": "x"}})
            onboarding.flush(conn)
            assert catalog.lookup_tenant(conn, "ro_onb").tags == {"tier": "x"}
        made = create_tenant(settings, "ro_made", "cyberdyne", INI, tags={"plan": "trial"})
        assert made.shard == "cyberdyne"
        with admin_connection(settings) as conn:
            assert catalog.lookup_tenant(conn, "ro_made").tags == {"plan": "trial"}
        with pytest.raises(PPPError, match="bad tag key"):
            create_tenant(settings, "ro_bad", "cyberdyne", INI, tags={"Bad": "1"})
        with admin_connection(settings) as conn:
            assert catalog.lookup_tenant(conn, "ro_bad") is None
    finally:
        unregister(settings, ["ro_onb"])
        with admin_connection(settings) as conn:
            made_tenant = catalog.lookup_tenant(conn, "ro_made")
        if made_tenant is not None:
            remove_tenant(settings, "ro_made", drop_data=True)


# -- the rollout file -----------------------------------------------------------------------------
def _t(name: str, shard: str = "s1", **tags: str) -> Tenant:
    return Tenant(name, shard, "active", None, tags=tags)


def test_resolution_first_stage_wins_percent_is_stable():
    fleet = [_t(f"t{i:02}", tier="internal" if i < 3 else "paid") for i in range(40)]
    stages = [
        StageSpec("canary", tenants=("t05", "t01")),
        StageSpec("internal", tags={"tier": "internal"}),
        StageSpec("one", percent=5),
        StageSpec("rest"),
    ]
    resolved = resolve(stages, fleet)
    assert resolved.tenants[0] == ["t05", "t01"]
    assert resolved.tenants[1] == ["t00", "t02"]
    assert len(resolved.tenants[2]) == 2  # 5 % of 40
    assert resolved.tenants[2] == resolve(stages, list(reversed(fleet))).tenants[2]
    assert sum(map(len, resolved.tenants)) == 40
    assert resolved.notes == [
        "stage 'internal': 1 of its tenant(s) (t01) belong to an earlier stage ('canary') and "
        "run there"
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[[stage]]\nname = "a"\ntenants = ["x"]\nfoo = 1\n', "stage 'a': unknown key 'foo'"),
        ('title = "x"\n[[stage]]\nname = "a"\n', "unknown key 'title'"),
        ("", "no stages"),
        ('[[stage]]\nname = "a"\n[[stage]]\nname = "b"\n', "stage 'a' selects no tenants"),
        ('[[stage]]\nname = "a"\npercent = 0\n', "percent must be above 0"),
        ('[[stage]]\nname = "a"\ntenants = ["x"]\ntags = {t = "y"}\n', "not tenants and tags"),
        ('[[stage]]\nname = "a"\non_error = "skip"\n', 'on_error must be "halt" or "continue"'),
        ('[[stage]]\nname = "a"\npause_after = "soon"\n', "pause_after: expected a duration"),
        ('[[stage]]\nname = "a"\non_error = "continue"\nmax_failures = 2\n', "max_failures needs"),
        ("[[stage]\n", "not valid TOML"),
    ],
)
def test_bad_rollout_files(tmp_path, text, error):
    with pytest.raises(PPPError, match=error.replace("(", r"\(").replace("[", r"\[")):
        load_rollout(write(tmp_path, text))


def test_durations():
    assert parse_duration("30s", "x") == 30
    assert parse_duration("1h30m", "x") == 5400
    assert parse_duration(2.5, "x") == 2.5
    with pytest.raises(PPPError, match="out of range"):
        parse_duration("8000000", "x")


# -- rollouts against the topology ---------------------------------------------------------------
def test_rollout_in_stages_with_check_and_status(tenants, settings, tmp_path):
    first = sorted(tenants)[1]
    path = write(
        tmp_path,
        f'[[stage]]\nname = "canary"\ntenants = ["{first}"]\n'
        'check = "SELECT count(*) = 0 FROM authors WHERE last_name IS NULL"\n'
        '[[stage]]\nname = "internal"\ntags = { tier = "internal" }\npause_after = "0.2s"\n'
        'check_command = "test -s \\"$PPP_ROLLOUT_TENANTS_FILE\\" && '
        'test \\"$PPP_ROLLOUT_STAGE\\" = internal"\n'
        '[[stage]]\nname = "rest"\nmax_failures = 2\nparallel = 2\n',
    )
    result = run("migrate", "-c", INI, "--rollout", str(path), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["canary"]["tenants"] == [first]
    assert sorted(stages["internal"]["tenants"]) == sorted(t for t in tenants if t.endswith("0"))
    assert set(stages["rest"]["tenants"]) >= {t for t in tenants if t.endswith("1")} - {first}
    assert [s["status"] for s in report["stages"]] == ["passed", "passed", "passed"]
    assert stages["canary"]["check"] == "passed" and stages["internal"]["check"] == "passed"
    assert report["rollout"]["state"] == "done"
    for name, shard in tenants.items():
        assert _revision(settings, name, shard) == "0002"
    status = json.loads(run("rollout", "status", "--json").stdout)
    assert status["running"] is False
    assert status["rollout"]["state"] == "done"
    plain = run("rollout", "status").output
    assert "done" in plain and "canary" in plain


def test_rollout_halts_names_the_stage_and_resumes_after_a_fix(tenants, settings, tmp_path):
    names = sorted(tenants)
    bad = names[2]
    # A table the first revision creates is already there: that tenant's migration fails.
    shard_sql(
        settings, tenants[bad], f'CREATE SCHEMA "{bad}"; CREATE TABLE "{bad}".authors (x int)'
    )
    late = [t for t in names if t not in (names[0], bad)]
    path = write(
        tmp_path,
        f'[[stage]]\nname = "canary"\ntenants = ["{names[0]}", "{bad}"]\n'
        f'[[stage]]\nname = "rest"\ntenants = {json.dumps(late)}\n',
    )
    result = run("migrate", "-c", INI, "--rollout", str(path))
    assert result.exit_code == 1
    err = result.output[result.output.index("Error: ") :]
    assert err.startswith("Error: rollout #")
    assert "halted at stage 'canary': 1 tenant(s) failed (the stage halts at 1)" in err
    assert f"  {bad}: failed: " in err and "already exists" in err
    assert "`ppp rollout resume`" in err
    for t in late:  # the later stage never ran
        assert _revision(settings, t, tenants[t]) is None
    status = json.loads(run("rollout", "status", "--json").stdout)["rollout"]
    assert (status["state"], status["stage"]) == ("halted", "canary")
    failed = status["stages"][0]["failed"]
    assert failed[bad].startswith("failed: ")
    # The other canary tenant ran, or was not started once the stage halted (timing).
    assert all(why.startswith("not run") for t, why in failed.items() if t != bad)
    # A second rollout is refused while this one is open; a plain run goes on, and says so.
    again = run("migrate", "-c", INI, "--rollout", str(path))
    assert again.exit_code == 1 and "is halted at stage 'canary'" in again.output
    plain = run("migrate", "-c", INI, "--tenant", names[0])
    assert plain.exit_code == 0, plain.output
    assert "note: rollout #" in plain.stderr and "this run did not wait for it" in plain.stderr
    shard_sql(settings, tenants[bad], f'DROP TABLE "{bad}".authors')
    page = tmp_path / "resume.html"
    resumed = run("rollout", "resume", "-c", INI, "--report", str(page))
    assert resumed.exit_code == 0, resumed.output
    assert "canary" in page.read_text() and "rest" in page.read_text()
    for t, shard in tenants.items():
        if t in late or t in (names[0], bad):
            assert _revision(settings, t, shard) == "0002"
    assert json.loads(run("rollout", "status", "--json").stdout)["rollout"]["state"] == "done"


def test_failed_check_halts_then_abort(tenants, settings, tmp_path):
    names = sorted(tenants)
    path = write(
        tmp_path,
        f'[[stage]]\nname = "canary"\ntenants = ["{names[0]}"]\n'
        'check = "SELECT count(*) > 1000 FROM authors"\n'
        f'[[stage]]\nname = "rest"\ntenants = ["{names[1]}"]\n',
    )
    result = run("migrate", "-c", INI, "--rollout", str(path))
    assert result.exit_code == 1
    assert (
        f"halted at stage 'canary': check failed: 1 tenant(s) failed the check: "
        f"{names[0]}: returned False"
    ) in result.output
    assert _revision(settings, names[1], tenants[names[1]]) is None
    aborted = run("rollout", "abort")
    assert aborted.exit_code == 0, aborted.output
    assert "aborted at stage 'canary'" in aborted.output
    assert (
        run("rollout", "abort").output.strip()
        == "Error: no rollout to abort: none is running or halted"
    )
    assert run("rollout", "resume", "-c", INI).exit_code == 1


def test_bad_rollouts_change_nothing(tenants, settings, tmp_path):
    before = _rollouts(settings)
    cases = {
        '[[stage]]\nname = "a"\ntenants = ["nobody_here"]\n': "Error: stage 'a': unknown tenant",
        '[[stage]]\nname = "a"\ntags = { tierr = "x" }\n': "Error: stage 'a': unknown tag 'tierr'",
        '[[stage]]\nname = "a"\ntags = { tier = "nope" }\n': "Error: stage 'a' selects no tenant",
    }
    for text, error in cases.items():
        result = run("migrate", "-c", INI, "--rollout", str(write(tmp_path, text)))
        assert result.exit_code == 1
        assert result.output.splitlines()[-1].startswith(error), result.output
    result = run("migrate", "-c", INI, "--rollout", str(tmp_path / "none.toml"))
    assert result.exit_code == 1 and "cannot read the rollout file" in result.output
    result = run("migrate", "-c", INI, "--rollout", str(write(tmp_path, "")), "--tenant", "x")
    assert result.exit_code == 1 and "drop --tenant and --shard" in result.output
    assert _rollouts(settings) == before
    for t, shard in tenants.items():
        assert _revision(settings, t, shard) is None


def test_resume_refused_after_the_chain_changed(tenants, settings, tmp_path):
    names = sorted(tenants)
    shard_sql(
        settings,
        tenants[names[0]],
        f'CREATE SCHEMA "{names[0]}"; CREATE TABLE "{names[0]}".authors (x int)',
    )
    path = write(tmp_path, f'[[stage]]\nname = "only"\ntenants = ["{names[0]}", "{names[1]}"]\n')
    assert run("migrate", "-c", INI, "--rollout", str(path)).exit_code == 1
    # The same project with one more tenant revision.
    project = tmp_path / "project"
    shutil.copytree(
        ROOT / "migrations", project / "migrations", ignore=shutil.ignore_patterns("__pycache__")
    )
    (project / "migrations" / "versions" / "0003_more.py").write_text(
        'revision = "0003"\ndown_revision = "0002"\nbranch_labels = None\ndepends_on = None\n\n\n'
        "def upgrade():\n    pass\n\n\ndef downgrade():\n    pass\n"
    )
    ini = Path(INI).read_text().replace("%(here)s/migrations", str(project / "migrations"))
    changed = tmp_path / "alembic.ini"
    changed.write_text(ini.replace("%(here)s", str(ROOT)))
    result = run("rollout", "resume", "-c", str(changed))
    assert result.exit_code == 1
    assert (
        "started with the tenant chain at 0002; it is now at 0003: resume refused" in result.output
    )
    assert store.ROLLOUT_LOCK  # the lock was released: status reads it as not running
    assert json.loads(run("rollout", "status", "--json").stdout)["running"] is False


def test_release_revision_downgrade_refused_with_tags(tenants, settings):
    from ppp_env.veneer import env as veneer_env

    before = veneer_env.current_versions(settings)
    with pytest.raises(PPPError, match=r"6 tagged tenant\(s\) and 0 open rollout\(s\)"):
        veneer_env.downgrade(settings, f"{catalog.RELEASE_REVISION}@-1")
    assert veneer_env.current_versions(settings) == before
