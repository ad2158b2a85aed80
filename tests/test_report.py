"""Run reports (``ppp migrate --report``, ``alembic -x report=``) and the status report
(``ppp status --html``): one self-contained HTML file, drawn from the run's JSON.

The report of a real run (a tenant made to fail with an HTML error message, one retried
after the lock timeout) holds every tenant, shows the failure as text, loads nothing, and
renders in headless Chromium without a console error; the JSON carries the same facts.
"""

from __future__ import annotations

import html
import json
import re
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.util import CommandError
from click.testing import CliRunner

from ppp_env import db
from ppp_env.cli.main import cli
from ppp_env.errors import PPPError
from ppp_env.fleet.options import RunOptions
from ppp_env.report import rollout_data, run_html, status_html, write_run_report
from tests.conftest import (
    FLEET_SCRIPTS,
    ROOT,
    drop_schemas,
    fleet_config,
    opts,
    register,
    shard_sql,
    states,
    unregister,
)
from tests.report_scenario import CHROMIUM, POISON, blocked, chromium, find_chromium, poison

PREFIX = "ft_report_"


def _ini(folder: Path) -> Path:
    """An alembic.ini with the test chain (tests/scripts/fleet) and the project's veneer."""
    ini = folder / "alembic.ini"
    ini.write_text(
        "".join(
            f"[{section}]\nscript_location = {location}\nprepend_sys_path = {ROOT}\n"
            "path_separator = os\n\n"
            for section, location in (
                ("alembic", FLEET_SCRIPTS),
                ("veneer", ROOT / "veneer_migrations"),
            )
        )
    )
    return ini


class Run:
    """The run every test here looks at: its tenants, exit code, JSON and report."""

    def __init__(self, tenants: dict[str, str], bad: str, slow: str, result: Any, page: Path):
        self.tenants, self.bad, self.slow, self.page = tenants, bad, slow, page
        self.exit_code, self.stderr = result.exit_code, result.stderr
        self.data: dict[str, Any] = json.loads(result.stdout)
        self.html = page.read_text(encoding="utf-8")
        self.by_name = {t["tenant"]: t for t in self.data["tenants"]}


@pytest.fixture(scope="module")
def run(veneer_head, tmp_path_factory) -> Iterator[Run]:
    """Two tenants per shard at f001; ``ppp migrate --report --json`` to head, while one
    tenant fails (its f003 raises markup) and another's table is held by an application
    transaction until its migration has hit the lock timeout once."""
    settings = veneer_head.settings
    tenants = {f"{PREFIX}{shard[:3]}{i}": shard for shard in settings.shards for i in range(2)}
    register(settings, tenants)
    try:
        names = sorted(tenants)
        command.upgrade(fleet_config(**opts(tenants=names)), "f001")
        bad = next(t for t in names if tenants[t] == "initech")
        slow = next(t for t in names if tenants[t] == "cyberdyne")
        poison(settings, tenants[bad], bad)
        folder = tmp_path_factory.mktemp("report")
        page = folder / "run.html"
        args = ["migrate", "-c", str(_ini(folder)), "--tenant", ",".join(names), "--json"]
        args += ["--report", str(page), "--lock-timeout", "0.3", "--retries", "10"]
        with blocked(settings, tenants[slow], slow) as released:
            result = CliRunner().invoke(cli, args)
        assert released.is_set()
        yield Run(tenants, bad, slow, result, page)
    finally:
        unregister(settings, tenants)
        drop_schemas(settings, tenants)


def test_the_run_fails_as_before_and_its_json_has_the_timeline(run: Run) -> None:
    assert run.exit_code == 1  # the failed tenant, not the report
    assert f"initech/{run.bad}: " in run.stderr and "cannot write" not in run.stderr
    data = run.data
    assert data["ok"] is False and data["revision"] == "head (f003)"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", data["started"])
    assert set(run.by_name) == set(run.tenants)
    bad, slow = run.by_name[run.bad], run.by_name[run.slow]
    assert bad["status"] == "failed" and POISON in bad["error"]
    assert slow["status"] == "migrated" and slow["attempts"] == 2
    [wait] = slow["waits"]
    assert wait["attempt"] == 1 and "application 'test-reader'" in wait["blocker"]
    assert wait["waited"] >= 0.3 and wait["at"] + wait["waited"] <= slow["start"]
    assert set(data["shard_spans"]) == {"bluth_co", "cyberdyne", "initech"}
    for t in data["tenants"]:
        begun, ended = data["shard_spans"][t["shard"]]
        assert begun <= t["start"] <= t["start"] + t["seconds"] <= ended
        assert t["waits"] == [] or t["tenant"] == run.slow
    assert data["online"][0]["revision"].startswith("revision f003")


def test_the_report_shows_what_the_json_says(run: Run) -> None:
    page, data = run.html, run.data
    for t in data["tenants"]:  # every tenant, its status and its hover text
        assert f"{t['shard']}/{t['tenant']}: {t['status']}" in page
    assert html.escape(run.by_name[run.bad]["error"]) in page  # the failure, as text
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#x27;owned&#x27;)" in page
    wait = run.by_name[run.slow]["waits"][0]
    assert "attempt 1 hit the lock timeout" in page and html.escape(wait["blocker"]) in page
    assert "<h1>PPP upgrade to head (f003): FAILED" in page
    for label, value in data["counts"].items():
        assert f"<dt>{label.replace('_', ' ')}</dt><dd>{value}</dd>" in page
    assert f"<dt>lock retries</dt><dd>{data['retries']}</dd>" in page
    assert html.escape(data["online"][0]["reason"]) in page
    assert page.count('<svg class="timeline"') == 3
    assert 'id="stages"' not in page  # no stages in this run: no section


def test_the_report_loads_nothing(run: Run) -> None:
    assert "http://" not in run.html and "https://" not in run.html
    assert not re.search(r"<(link|img|iframe|object|embed)\b|\ssrc=|@import|url\(", run.html)
    assert "default-src 'none'" in run.html  # and the browser refuses any load


@pytest.fixture
def browser() -> str:
    """A headless Chromium, or the test is skipped (before the run is made)."""
    binary = find_chromium()
    if binary is None:
        pytest.skip(
            "no headless Chromium: none of PPP_TEST_CHROMIUM or "
            f"{', '.join(CHROMIUM)} found (apt-get install chromium-headless-shell)"
        )
    return binary


def test_the_report_renders_in_chromium_without_console_errors(
    browser: str, run: Run, tmp_path
) -> None:
    probed = tmp_path / "probed.html"
    probed.write_text(run.html.replace("<head>", f"<head><script>{PROBE}</script>", 1))
    done = chromium(browser, probed, "--enable-logging=stderr", "--v=0", "--dump-dom")
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    found = re.search(r'<pre id="ppp-probe">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stdout[-2000:] + done.stderr[-2000:]
    probe = json.loads(html.unescape(found.group(1)))
    assert probe == {"errors": [], "filters": 1, "sorted": True, "shown": 0}


#: Injected before the page's own script: records errors and console messages, then (on
#: load) sorts every table both ways and filters the tenants' table, and writes what it saw
#: into the page, which Chromium's --dump-dom prints.
PROBE = """
(function () {
  var seen = [];
  window.addEventListener("error", function (e) { seen.push("error: " + e.message); });
  document.addEventListener("securitypolicyviolation", function (e) {
    seen.push("blocked: " + e.blockedURI);
  });
  ["error", "warn"].forEach(function (level) {
    var original = console[level];
    console[level] = function () {
      seen.push(level + ": " + Array.prototype.join.call(arguments, " "));
      return original.apply(console, arguments);
    };
  });
  window.addEventListener("load", function () {
    var result = {errors: seen, filters: document.querySelectorAll("input.filter").length};
    var table = document.querySelector("#tenants table");
    var th = table.tHead.rows[0].cells[1];
    th.click();
    var first = table.tBodies[0].rows[0].cells[1].textContent;
    th.click();
    var last = table.tBodies[0].rows[0].cells[1].textContent;
    result.sorted = first < last;
    document.querySelectorAll("table.sortable th").forEach(function (h) { h.click(); });
    var box = document.querySelector("#tenants input.filter");
    box.value = "no-such-tenant";
    box.dispatchEvent(new Event("input"));
    result.shown = table.querySelectorAll("tbody tr:not([hidden])").length;
    var out = document.createElement("pre");
    out.id = "ppp-probe";
    out.textContent = JSON.stringify(result);
    document.body.appendChild(out);
  });
}());
"""


def test_the_status_report_shows_every_tenant_and_the_one_behind(run: Run, tmp_path) -> None:
    page = tmp_path / "status.html"
    names = ",".join(sorted(run.tenants))
    args = ["status", "-c", str(_ini(tmp_path)), "--tenant", names, "--json", "--html", str(page)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["errors"] == {}
    text = page.read_text(encoding="utf-8")
    for row in data["tenants"]:
        assert f"<td>{row['tenant']}</td>" in text
    behind = [r["tenant"] for r in data["tenants"] if r["migrations"] == "behind"]
    assert behind == [run.bad]
    attention = text.split('id="attention"')[1].split("</section>")[0]
    assert run.bad in attention and run.slow not in attention
    assert "PPP status: 5 of 6 tenant(s) at head (f003)" in text
    assert "http://" not in text and "https://" not in text


@pytest.mark.parametrize("where", ["no/such/folder/r.html", "."])
def test_a_report_that_cannot_be_written_fails_first_and_changes_nothing(
    run: Run, settings, tmp_path, where: str
) -> None:
    target = tmp_path / where
    tenant = run.bad
    before = states(settings, run.tenants[tenant], [tenant])[tenant].revision
    ini = str(_ini(tmp_path))
    for args in (
        ["migrate", "-c", ini, "--tenant", tenant, "--report", str(target)],
        ["status", "-c", ini, "--tenant", tenant, "--html", str(target)],
    ):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, result.output
        why = "it is a folder" if where == "." else f"folder {target.parent} does not exist"
        assert result.stderr == f"Error: cannot write the report to {target}: {why}\n"
        assert result.stdout == ""  # nothing ran: not even the veneer step
    assert states(settings, run.tenants[tenant], [tenant])[tenant].revision == before


def test_alembic_x_report_writes_the_report_of_the_run(fleet, settings, tmp_path) -> None:
    page = tmp_path / "alembic.html"
    cfg = fleet_config(**opts(tenants=sorted(fleet)))
    cfg.cmd_opts = Namespace(x=[f"report={page}"])
    command.upgrade(cfg, "f002")
    result = cfg.attributes["ppp.result"]
    assert result.revision == "f002" and result.ok
    text = page.read_text(encoding="utf-8")
    assert "<h1>PPP upgrade to f002: done" in text
    for tenant in fleet:
        assert f"/{tenant}: migrated" in text
    # A path that cannot be written: Alembic's FAILED before anything runs.
    cfg = fleet_config(**opts(tenants=sorted(fleet)))
    cfg.cmd_opts = Namespace(x=[f"report={tmp_path / 'none' / 'r.html'}"])
    with pytest.raises(CommandError, match=r"cannot write the report to .*: folder .* does not"):
        command.upgrade(cfg, "head")
    assert "ppp.result" not in cfg.attributes
    for tenant, shard in fleet.items():
        assert states(settings, shard, [tenant])[tenant].revision == "f002"
    with pytest.raises(PPPError, match="-x report= needs a file name"):
        RunOptions.from_x({"report": " "})


def test_a_tenant_that_stays_locked_has_every_wait_in_its_json_and_report(fleet, settings):
    command.upgrade(fleet_config(**opts(tenants=sorted(fleet))), "f001")
    victim = sorted(t for t, s in fleet.items() if s == "bluth_co")[0]
    reader = db.connect(settings.shard("bluth_co"), "app", application_name="test-reader")
    try:
        reader.cursor().execute(f'SELECT count(*) FROM "{victim}".items')
        cfg = fleet_config(**opts(tenants=sorted(fleet), lock_timeout=0.2, retries=1))
        with pytest.raises(CommandError):
            command.upgrade(cfg, "head")
    finally:
        reader.close()
    data = cfg.attributes["ppp.result"].to_json()
    locked = next(t for t in data["tenants"] if t["tenant"] == victim)
    assert locked["status"] == "locked" and locked["attempts"] == 2
    assert [w["attempt"] for w in locked["waits"]] == [1, 2]
    assert all("application 'test-reader'" in w["blocker"] for w in locked["waits"])
    assert locked["waits"][1]["at"] == locked["start"]  # its last attempt is the one it gave up
    page = run_html(data)
    assert '<rect class="bar locked"' in page and f"bluth_co/{victim}: locked" in page
    assert page.count("hit the lock timeout") == 2


def test_a_rollouts_report_has_its_stages_on_one_timeline(veneer_head, settings, tmp_path):
    """Two stages (the first goes on after a failure), the second with two workers per
    shard: the report has the stages' table, both stages on one time axis, every tenant."""
    names = {f"ft_rollrep_{shard[:3]}{i}": shard for shard in settings.shards for i in range(2)}
    register(settings, names)
    ordered = sorted(names)
    bad = ordered[0]
    shard_sql(settings, names[bad], f'CREATE SCHEMA "{bad}"; CREATE TABLE "{bad}".authors (x int)')
    rollout = tmp_path / "rollout.toml"
    rollout.write_text(
        f'[[stage]]\nname = "canary"\ntenants = {json.dumps(ordered[:2])}\n'
        'on_error = "continue"\n'
        f'[[stage]]\nname = "rest"\ntenants = {json.dumps(ordered[2:])}\nparallel = 2\n'
    )
    page = tmp_path / "rollout.html"
    args = ["migrate", "-c", str(ROOT / "alembic.ini"), "--rollout", str(rollout), "--json"]
    try:
        result = CliRunner().invoke(cli, [*args, "--report", str(page)])
    finally:
        unregister(settings, names)
        drop_schemas(settings, names)
    assert result.exit_code == 1, result.output  # the rollout's own outcome: a failed tenant
    assert "cannot write" not in result.stderr, result.output
    assert result.stdout.startswith("{"), result.output
    data = rollout_data(json.loads(result.stdout))
    assert [m["name"] for m in data["stage_marks"]] == ["canary", "rest"]
    assert data["stage_marks"][0]["at"] == 0 < data["stage_marks"][1]["at"]
    assert {t["tenant"]: t["stage"] for t in data["tenants"]} == {
        t: "canary" if t in ordered[:2] else "rest" for t in names
    }
    text = page.read_text(encoding="utf-8")
    assert text == run_html(data)  # the report is that data, drawn
    stages = text.split('id="stages"')[1].split("</section>")[0]
    assert "<td>canary</td>" in stages and "<td>rest</td>" in stages
    assert text.count('<line class="stage"') == 2 * 3  # each stage marked on each shard
    for tenant in names:
        assert f"/{tenant}: " in text
    assert f"/{bad}: failed" in text and "already exists" in text


# -- the pages on their own (no database) -------------------------------------------------------
def _tenant(shard: str, name: str, status: str = "migrated", **kw: Any) -> dict[str, Any]:
    base = {"shard": shard, "tenant": name, "status": status, "before": "a", "after": "b"}
    return {**base, "error": None, "seconds": 0.05, "attempts": 1, "start": 0.1, "waits": [], **kw}


def test_stages_have_a_section_only_when_the_run_had_stages() -> None:
    data = {"command": "upgrade", "ok": True, "tenants": [_tenant("s1", "t1")]}
    assert 'id="stages"' not in run_html(data)
    stages = [
        {"name": "canary <1%>", "status": "done", "tenants": 1, "failed": 0, "seconds": 1.5},
        {"name": "rest", "status": "failed", "tenants": 9, "failed": 2, "started": None},
    ]
    page = run_html({**data, "stages": stages})
    section_ = page.split('id="stages"')[1].split("</section>")[0]
    assert "<td>canary &lt;1%&gt;</td>" in section_ and "1.50 s" in section_
    assert '<span class="badge failed">failed</span>' in section_


def test_many_tenants_share_a_row_and_the_ones_to_look_at_keep_theirs() -> None:
    tenants = [_tenant("s1", f"t{i:02d}", start=i * 0.1) for i in range(40)]
    tenants[7] = _tenant("s1", "t07", "failed", start=0.7, error="boom <x>")
    waits = [{"attempt": 1, "at": 0.75, "waited": 0.3, "blocker": "blocked by pid 1"}]
    tenants[9] = _tenant("s1", "t09", start=1.2, attempts=2, waits=waits)
    page = run_html({"command": "upgrade", "ok": False, "tenants": tenants})
    timeline = page.split('id="timeline"')[1].split("</section>")[0]
    labels = re.findall(r'<text class="label"[^>]*><title>([^<]*)</title>', timeline)
    assert labels == ["all 40 tenants", "t07", "t09"]
    # the legend's, then the tenant's in the shared row and in its own
    assert timeline.count('class="wait"') == 3 and timeline.count('class="retry"') == 3
    assert "boom &lt;x&gt;" in timeline


def test_with_several_workers_per_shard_each_lane_has_its_row() -> None:
    tenants = [_tenant("s1", f"t{i:02d}", start=(i // 2) * 0.1, lane=i % 2) for i in range(40)]
    page = run_html({"command": "upgrade", "ok": True, "tenants": tenants})
    labels = re.findall(r'<text class="label"[^>]*><title>([^<]*)</title>', page)
    assert labels == ["lane 1: 20 tenants", "lane 2: 20 tenants"]


def test_the_status_report_names_unreachable_shards_and_escapes_their_errors() -> None:
    rows = [
        {"shard": "s1", "tenant": "t1", "revision": "b", "migrations": "head", "veneer": "stale"},
        {
            "shard": "s2",
            "tenant": "t2",
            "revision": None,
            "migrations": "unreachable",
            "veneer": "unknown",
        },
    ]
    page = status_html({"heads": ["b"], "tenants": rows, "errors": {"s2": "down <here>"}})
    assert "down &lt;here&gt;" in page and "<here>" not in page
    attention = page.split('id="attention"')[1].split("</section>")[0]
    assert "<td>t1</td>" in attention and "<td>t2</td>" in attention
    assert "<dt>unreachable</dt><dd>1</dd>" in page and "<dt>veneer stale</dt><dd>1</dd>" in page


def test_write_run_report_refuses_a_folder(tmp_path) -> None:
    with pytest.raises(PPPError, match=f"cannot write the report to {tmp_path}: it is a folder"):
        write_run_report(tmp_path, {"tenants": []})
