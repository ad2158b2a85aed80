"""The render cache: which revisions cannot be rendered, kept beside env.py keyed by the
revision file's bytes, so that their code does not run again to find it out.

No database: rendering is offline. Each revision of the chain appends a line to a file
named in the environment whenever its code runs, so the tests count executions.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.util import CommandError

from ppp_env.fleet.commands import render_path
from ppp_env.fleet.hooks import Blocker, Where
from ppp_env.fleet.verdicts import CACHE_NAME, VerdictCache, stamp
from tests.conftest import FLEET_SCRIPTS, ROOT

REVISION = '''"""{doc}"""

import os

import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
    with open(os.environ["PPP_TEST_RUNS"], "a") as out:
        out.write("{rev}\\n")
{body}


def downgrade() -> None:
    pass
'''

RENDERABLE = '    op.execute("CREATE TABLE {rev}_t (id int)")'
READS = '    n = op.get_bind().execute(sa.text("SELECT count(*) FROM x")).scalar()'

#: c001 renders, c002 reads, c003 renders, c004 reads, c005 renders.
CHAIN = {"c001": RENDERABLE, "c002": READS, "c003": RENDERABLE, "c004": READS, "c005": RENDERABLE}


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "runs.txt"
    monkeypatch.setenv("PPP_TEST_RUNS", str(path))
    return path


def write(scripts: Path, rev: str, down: str | None, body: str) -> None:
    text = REVISION.format(doc=f"the {rev} revision", rev=rev, down=down, body=body)
    (scripts / "versions" / f"{rev}.py").write_text(text.replace("{rev}", rev))


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    location = tmp_path / "scripts"
    (location / "versions").mkdir(parents=True)
    shutil.copy(FLEET_SCRIPTS / "env.py", location / "env.py")
    down = None
    for rev, body in CHAIN.items():
        write(location, rev, down, body.format(rev=rev))
        down = rev
    return location


def config(scripts: Path) -> Config:
    cfg = Config(stdout=io.StringIO(), output_buffer=io.StringIO())
    cfg.set_main_option("script_location", str(scripts))
    cfg.set_main_option("prepend_sys_path", str(ROOT))
    cfg.set_main_option("path_separator", "os")
    return cfg


def taken(runs: Path) -> list[str]:
    lines = runs.read_text().splitlines() if runs.exists() else []
    runs.write_text("")
    return lines


def blockers(scripts: Path) -> dict[str, str]:
    rendered = render_path(config(scripts))
    return {r.label.split()[1]: r.blocker.reason() for r in rendered.revisions if r.blocker}


def test_every_revision_runs_once_and_the_verdicts_are_kept(scripts: Path, runs: Path) -> None:
    """One render runs each revision once, every blocked one included (rendering goes on
    after it); the next one (a new process would do the same) runs only the renderable ones:
    the blocked ones come from the cache, with the same reasons, file and line."""
    first = blockers(scripts)
    assert sorted(first) == ["c002", "c004"]
    assert "Connection.execute(SELECT count(*) FROM x).scalar(), c002.py line 17" in first["c002"]
    assert taken(runs) == ["c001", "c002", "c003", "c004", "c005"]
    cache = json.loads((scripts / CACHE_NAME).read_text())
    assert cache["stamp"] == stamp(scripts) and len(cache["verdicts"]) == 2
    again = blockers(scripts)
    assert again == first
    assert taken(runs) == ["c001", "c003", "c005"]


def test_a_changed_revision_is_judged_again(scripts: Path, runs: Path) -> None:
    blockers(scripts)
    taken(runs)
    write(scripts, "c002", "c001", RENDERABLE.format(rev="c002"))  # it no longer reads
    assert sorted(blockers(scripts)) == ["c004"]
    assert taken(runs) == ["c001", "c002", "c003", "c005"]


@pytest.mark.parametrize("content", ["{not json", "[]", '{"stamp": {"format": 0}, "verdicts": {}}'])
def test_a_corrupt_or_foreign_cache_is_ignored_and_replaced(
    scripts: Path, runs: Path, content: str
) -> None:
    (scripts / CACHE_NAME).write_text(content)
    assert sorted(blockers(scripts)) == ["c002", "c004"]
    assert taken(runs) == ["c001", "c002", "c003", "c004", "c005"]
    assert len(json.loads((scripts / CACHE_NAME).read_text())["verdicts"]) == 2


def test_an_unwritable_cache_warns_once_and_changes_nothing(
    scripts: Path, runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (scripts / CACHE_NAME).mkdir()  # a folder where the file would go: writes fail
    assert sorted(blockers(scripts)) == ["c002", "c004"]
    assert sorted(blockers(scripts)) == ["c002", "c004"]
    err = capsys.readouterr().err
    assert err.count(f"WARNING: cannot write {scripts / CACHE_NAME}") == 1
    assert taken(runs).count("c002") == 2  # judged again each time, nothing worse
    assert not list(scripts.glob(f"{CACHE_NAME}*.tmp"))


def test_sql_lists_every_blocked_revision_once(scripts: Path, runs: Path) -> None:
    with pytest.raises(CommandError) as err:
        command.upgrade(config(scripts), "base:head", sql=True)
    message = str(err.value)
    assert "cannot render the SQL offline: 2 revision(s) need the database" in message
    assert "\n  revision c002 (the c002 revision): it reads from the database" in message
    assert "\n  revision c004 (the c004 revision): it reads from the database" in message
    assert sorted(taken(runs)) == ["c001", "c002", "c003", "c004", "c005"]


def _writer(path: str, n: int) -> None:
    script_dir = Path(path).parent
    for i in range(25):
        cache = VerdictCache(Path(path), stamp(script_dir))
        revision = script_dir / f"rev_{n}_{i}.py"
        revision.write_text(f"# {n} {i}\n")
        cache.put(str(revision), True, Blocker("reads", "x", Where(str(revision), 3)))
        cache.save()


def test_concurrent_writers_never_corrupt_the_file(tmp_path: Path) -> None:
    """Writes are a rename of a complete file: a reader always sees valid JSON, whoever
    writes at the same time; entries another writer added meanwhile are merged in."""
    path = tmp_path / CACHE_NAME
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_writer, args=(str(path), n)) for n in range(4)]
    for w in workers:
        w.start()
    seen = 0
    while any(w.is_alive() for w in workers):
        if path.exists():
            json.loads(path.read_text())  # never half-written
            seen += 1
    for w in workers:
        w.join()
        assert w.exitcode == 0
    verdicts = json.loads(path.read_text())["verdicts"]
    assert len(verdicts) >= 25  # the last writer's at least; most of the others merged
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
