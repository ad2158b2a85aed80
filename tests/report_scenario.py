"""A run worth a report, for tests/test_report.py and benchmarks/report_screenshot.py: one
tenant made to fail (with an error message that is HTML), one blocked by an application
transaction until its migration has hit the lock timeout, so it is retried; and the
headless Chromium that renders the report."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ppp_env import db
from ppp_env.settings import Settings

#: What the failing tenant's migration raises: markup, which a report must show as text.
POISON = "<script>alert('owned')</script> & <b>not bold</b>"
#: Chromium binaries looked for, in order (PPP_TEST_CHROMIUM first). Debian's package
#: chromium-headless-shell installs /usr/bin/chromium-headless-shell.
CHROMIUM = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def poison(settings: Settings, shard: str, tenant: str) -> None:
    """Make ``tenant``'s revision f003 (``UPDATE items ...``) fail with :data:`POISON`."""
    message = POISON.replace("'", "''")
    with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
        conn.cursor().execute(
            f"INSERT INTO \"{tenant}\".items (name) VALUES ('one');\n"
            f'CREATE FUNCTION "{tenant}".refuse() RETURNS trigger LANGUAGE plpgsql AS '
            f"$$ BEGIN RAISE EXCEPTION '{message}'; END $$;\n"
            f'CREATE TRIGGER refuse BEFORE UPDATE ON "{tenant}".items '
            f'FOR EACH ROW EXECUTE FUNCTION "{tenant}".refuse();'
        )


def _lock_waits(settings: Settings, shard: str) -> int:
    with db.connection(settings.shard(shard), "admin", autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ppp' "
            "AND wait_event_type = 'Lock'"
        )
        return int(cur.fetchone()[0])


@contextmanager
def blocked(settings: Settings, shard: str, tenant: str, timeouts: int = 1) -> Iterator[Any]:
    """An application transaction that read ``tenant``'s table and stays open until PPP's
    migration has waited for it and given up ``timeouts`` times (then it ends: the retry
    gets its locks). Yields the event set when it ended; bounded to 60 s."""
    reader = db.connect(settings.shard(shard), "app", application_name="test-reader")
    reader.cursor().execute(f'SELECT count(*) FROM "{tenant}".items')
    released = threading.Event()

    def release() -> None:
        deadline = time.monotonic() + 60
        for _ in range(timeouts):
            while time.monotonic() < deadline and not _lock_waits(settings, shard):
                time.sleep(0.02)
            while time.monotonic() < deadline and _lock_waits(settings, shard):
                time.sleep(0.02)
        reader.rollback()
        released.set()

    helper = threading.Thread(target=release, daemon=True)
    helper.start()
    try:
        yield released
    finally:
        helper.join()
        reader.close()


# -- the browser ------------------------------------------------------------------------------
def find_chromium() -> str | None:
    """A headless Chromium: PPP_TEST_CHROMIUM, else the first of :data:`CHROMIUM` on PATH."""
    named = os.environ.get("PPP_TEST_CHROMIUM")
    if named:
        return shutil.which(named)
    return next((found for name in CHROMIUM if (found := shutil.which(name))), None)


def chromium(binary: str, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on the file ``page`` (its own profile, no network needed)."""
    with tempfile.TemporaryDirectory(prefix="ppp-chromium-") as profile:
        command = [
            binary,
            "--headless",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *(["--no-sandbox"] if os.geteuid() == 0 else []),
            *args,
            page.resolve().as_uri(),
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def screenshot(binary: str, page: Path, png: Path, size: str = "1400,1000") -> None:
    done = chromium(binary, page, f"--screenshot={png.resolve()}", f"--window-size={size}")
    if not png.exists():
        raise RuntimeError(f"{binary} wrote no screenshot: {done.stderr[-2000:]}")
