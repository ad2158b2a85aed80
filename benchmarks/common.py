"""What the benchmark scripts share: their throwaway topology, timing and output.

Importing this module puts the checkout that holds it first on ``sys.path``, so a script
measures the ``ppp_env`` beside it (not an installed one): import it before ``ppp_env``.

- :func:`local_topology`: a veneer and N shards from this machine's PostgreSQL binaries
  (:class:`ppp_env.servers.local.LocalServers`), provisioned, their settings in the
  environment; it prints the ``servers: ...`` line saying what the figures ran on, and stops
  and deletes everything at the end, on error, Ctrl-C and SIGTERM too.
- Timing: :class:`Stopwatch`, :func:`timed`, :func:`median`, :func:`median_ratio`,
  :func:`run_command` (a command, timed, failing loudly).
- Output: :func:`figure` (``<label>: <value> <unit>, <ratio> x <baseline>`` and the aligned
  variants the scripts print), :func:`times`, :func:`every`, :func:`met`, :func:`fail`.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(ROOT))

from ppp_env import db
from ppp_env.servers.local import EXAMPLE_SHARDS, LocalServers, find_bindir
from ppp_env.servers.provision import provision
from ppp_env.settings import Settings, load_settings
from ppp_env.veneer.catalog import (
    admin_connection,
    find_tenants,
    register_tenant,
    unregister_tenant,
)

#: Variables of the caller's environment a benchmark keeps: they tune PPP, not where it
#: connects. Every other ``PPP_*`` and ``ALEMBIC_*`` variable is removed (the topology's own
#: settings replace them); the ones kept are printed on the ``servers:`` line.
PASS_THROUGH = (
    "PPP_PG_BINDIR",
    "PPP_JOBS",
    "PPP_LOCK_TIMEOUT",
    "PPP_MIGRATION_LOCK_TIMEOUT",
    "PPP_MIGRATION_LOCK_TIMEOUT_START",
    "PPP_LOCK_RETRIES",
    "PPP_STATEMENT_TIMEOUT",
    "PPP_CONNECT_TIMEOUT",
    "PPP_FDW_REMOTE_ESTIMATE",
    "PPP_PLACEMENT",
    "PPP_TRACEBACK",
)
#: Server settings the ``servers:`` line reports, as the running veneer has them.
REPORTED = ("fsync", "synchronous_commit", "full_page_writes", "log_statement")
#: Log lines worth showing when a benchmark fails.
PROBLEMS = ("PANIC", "FATAL", "ERROR", "terminated", "server process", "out of memory")


def fail(message: str) -> NoReturn:
    sys.exit(f"benchmark failed: {message}")


class Interrupted(SystemExit):
    """SIGINT or SIGTERM: the topology is stopped and deleted on the way out."""


# -- the topology ----------------------------------------------------------------------------------
def default_workdir() -> Path:
    """Where the throwaway servers live: ``/dev/shm`` (tmpfs) when writable, else the temp
    folder."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm
    return Path(tempfile.gettempdir())


def filesystem(path: Path) -> str:
    """The type of the file system holding ``path`` (``tmpfs``, ``ext4``...), or ``?``."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "?"
    target, best, kind = str(path.resolve()), -1, "?"
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, kind = len(point), parts[2]
    return kind


@dataclass
class Topology:
    """A running throwaway topology: its folder, servers and settings."""

    work: Path
    servers: LocalServers
    settings: Settings
    version: str = ""
    server_settings: dict[str, str] = field(default_factory=dict)
    passed: dict[str, str] = field(default_factory=dict)
    stopping: list[Callable[[], Any]] = field(default_factory=list)

    def on_stop(self, fn: Callable[[], Any]) -> None:
        """Call ``fn`` on the way out, before the servers stop (last registered, first)."""
        self.stopping.append(fn)

    @property
    def shards(self) -> list[str]:
        return list(self.settings.shards)

    def environ(self, **extra: str) -> dict[str, str]:
        """The environment for child processes: the topology's settings (and ``extra``)."""
        return {**os.environ, **extra}

    def describe(self) -> str:
        """The ``servers:`` line: what the figures ran on."""
        conf = ", ".join(f"{k} {v}" for k, v in self.server_settings.items())
        line = (
            f"servers: local PostgreSQL {self.version} ({self.servers.bindir}), veneer + "
            f"{len(self.settings.shards)} shards on 127.0.0.1, {conf}; data in {self.work} "
            f"({filesystem(self.work)})"
        )
        shown = {k: v for k, v in self.passed.items() if k != "PPP_PG_BINDIR"}
        if shown:
            line += "; from the environment: " + ", ".join(f"{k}={v}" for k, v in shown.items())
        return line

    def replace_tenants(self, placed: Mapping[str, str]) -> None:
        """Only these tenants (schema -> shard) in the catalog, in one transaction: the
        example's tenants (and any other) unregistered."""
        with admin_connection(self.settings) as conn:
            for existing in find_tenants(conn):
                unregister_tenant(conn, existing.schema)
            for schema, shard in placed.items():
                register_tenant(conn, schema, shard)


def quiet_logs(settings: Settings) -> None:
    """Statement logging off on every server (it would dominate point lookups)."""
    for inst in settings.instances:
        with db.connection(inst, "superuser", autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("SET log_statement = 'none'")
            cur.execute("ALTER SYSTEM SET log_statement = 'none'")
            cur.execute("SELECT pg_reload_conf()")


def _read_server(settings: Settings, log_statement: str) -> tuple[str, dict[str, str]]:
    """The veneer's version and :data:`REPORTED` settings, once a reload has reached it."""
    deadline = time.monotonic() + 5
    while True:
        with db.connection(settings.veneer, "superuser", autocommit=True) as conn:
            cur = conn.cursor()
            cur.execute("SELECT current_setting('server_version')")
            version = str(cur.fetchone()[0]).split()[0]
            cur.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (list(REPORTED),)
            )
            found = dict(cur.fetchall())
        conf = {k: found[k] for k in REPORTED if k in found}
        if conf.get("log_statement") == log_statement or time.monotonic() > deadline:
            return version, conf
        time.sleep(0.05)


def show_server_logs(servers: LocalServers) -> None:
    """What the servers said (errors, crashes), before they are deleted."""
    for name in servers.instances():
        try:
            lines = servers.log_file(name).read_text(errors="replace").splitlines()
        except OSError:
            continue
        problems = [x for x in lines if any(w in x for w in PROBLEMS)]
        if problems:
            print(f"--- {name}: last log lines", *problems[-15:], sep="\n", file=sys.stderr)


def _interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(f"benchmark interrupted by signal {signum}")


@contextmanager
def local_topology(
    workdir: Path | None = None,
    *,
    prefix: str = "ppp-bench-",
    shards: int | Sequence[str] = EXAMPLE_SHARDS,
    statement_logging: bool = True,
) -> Iterator[Topology]:
    """A veneer and shards (names, or a number of them) from this machine's binaries.

    The servers live in a new folder ``<workdir>/<prefix>XXXX`` (default
    :func:`default_workdir`), with ``LocalServers``' settings (``fsync=off``,
    ``log_statement=all``; ``statement_logging=False`` turns statement logging off), are
    provisioned, and their settings replace the caller's in ``os.environ``
    (``PPP_PROJECT_DIR`` = the folder; see :data:`PASS_THROUGH`). Prints the ``servers:``
    line. On the way out, also on error, Ctrl-C or SIGTERM (both raise :class:`Interrupted`
    meanwhile): a failure shows the servers' error lines, then the servers are stopped and
    their folder deleted, and the caller's environment and signal handlers come back.
    """
    names = list(shards) if not isinstance(shards, int) else _shard_names(shards)
    bindir = find_bindir()
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=workdir or default_workdir()))
    work.chmod(0o755)
    servers = LocalServers(work / "servers", bindir)
    top: Topology | None = None
    saved_env = dict(os.environ)
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for sig in saved_signals:  # also when started in the background (SIGINT ignored there)
        signal.signal(sig, _interrupted)
    try:
        values = servers.up(["veneer", *names])
        kept = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PPP_", "ALEMBIC_")) or k in PASS_THROUGH
        }
        os.environ.clear()
        os.environ.update({**kept, **values, "PPP_PROJECT_DIR": str(work)})
        settings = load_settings()
        provision(settings)
        if not statement_logging:
            quiet_logs(settings)
        top = Topology(
            work, servers, settings, passed={k: v for k, v in kept.items() if k in PASS_THROUGH}
        )
        top.version, top.server_settings = _read_server(
            settings, "all" if statement_logging else "none"
        )
        print(top.describe(), flush=True)
        yield top
    except BaseException as exc:
        if not isinstance(exc, (KeyboardInterrupt, GeneratorExit, Interrupted)) and not (
            isinstance(exc, SystemExit) and exc.code in (None, 0)
        ):
            show_server_logs(servers)
        raise
    finally:
        print("stopping and deleting the benchmark's servers", file=sys.stderr, flush=True)
        for sig in saved_signals:  # let the cleanup finish
            signal.signal(sig, signal.SIG_IGN)
        for fn in reversed(top.stopping if top else []):
            try:
                fn()
            except Exception as error:  # the servers stop all the same
                print(f"on_stop {fn!r} failed: {error!r}", file=sys.stderr)
        try:
            servers.down(purge=True)
            if servers.instances():  # interrupted while one was starting: it came up after
                time.sleep(2)
                servers.down(purge=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            os.environ.clear()
            os.environ.update(saved_env)
            for sig, handler in saved_signals.items():
                signal.signal(sig, handler)


def _shard_names(n: int) -> list[str]:
    if n <= len(EXAMPLE_SHARDS):
        return list(EXAMPLE_SHARDS[:n])
    return [f"shard_{i:02d}" for i in range(1, n + 1)]


def round_robin(names: Iterable[str], shards: Sequence[str]) -> dict[str, str]:
    """Tenant -> shard, the tenants dealt over the shards in turn."""
    return {name: shards[i % len(shards)] for i, name in enumerate(names)}


def group_by_shard(placed: Mapping[str, str], shards: Sequence[str]) -> dict[str, list[str]]:
    """Shard -> its tenants, every shard of ``shards`` present (in that order)."""
    out: dict[str, list[str]] = {s: [] for s in shards}
    for schema, shard in placed.items():
        out[shard].append(schema)
    return out


#: An alembic.ini with the tenant chain (``[alembic]``) and the veneer (``[veneer]``).
TENANT_AND_VENEER_INI = """\
[alembic]
script_location = {tenant_chain}
prepend_sys_path = {root}

[veneer]
script_location = {veneer}
prepend_sys_path = {root}
"""


def write_ini(path: Path, tenant_chain: Path, veneer: Path) -> Path:
    path.write_text(
        TENANT_AND_VENEER_INI.format(tenant_chain=tenant_chain, veneer=veneer, root=ROOT)
    )
    return path


def veneer_catalog_only(dest: Path) -> Path:
    """A copy of veneer_migrations without the example's tenant revisions (the
    repository's own folder is never touched)."""
    shutil.copytree(ROOT / "veneer_migrations", dest, ignore=shutil.ignore_patterns("__pycache__"))
    for path in (dest / "versions").glob("t*_*.py"):
        path.unlink()  # the example's tenants take no part
    return dest


# -- timing ----------------------------------------------------------------------------------------
class Stopwatch:
    """``with Stopwatch() as sw: ...``; then ``sw.seconds`` (wall time, perf_counter)."""

    def __init__(self) -> None:
        self.started = 0.0
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes."""
    with Stopwatch() as sw:
        fn()
    return sw.seconds


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def per_run_ratios(values: Sequence[float], bases: Sequence[float]) -> list[float]:
    """Each run's ``value / base`` (both measured in the same run)."""
    return [x / y for x, y in zip(values, bases, strict=True)]


def median_ratio(values: Sequence[float], bases: Sequence[float]) -> float:
    """The median of the per-run ratios: on a noisy machine the ratio of two medians can
    pair a quiet run of one figure with a busy run of its baseline."""
    return statistics.median(per_run_ratios(values, bases))


def run_command(
    cmd: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = ROOT,
    timeout: float | None = None,
) -> tuple[float, str]:
    """Run a command (from the project folder by default): its wall time and stdout.
    Fail loudly, with the end of its output."""
    started = time.perf_counter()
    try:
        res = subprocess.run(
            list(cmd),
            env=None if env is None else dict(env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        fail(f"command did not finish in {timeout:g} s: {' '.join(cmd)}")
    took = time.perf_counter() - started
    if res.returncode != 0:
        fail(f"command failed: {' '.join(cmd)}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return took, res.stdout


# -- output ----------------------------------------------------------------------------------------
def times(ratio: float, base: str = "", digits: int = 2, width: int = 0) -> str:
    """``<ratio> x <base>`` (``<ratio> x`` without a base); the number right-aligned in
    ``width`` characters."""
    text = f"{ratio:{width}.{digits}f} x"
    return f"{text} {base}" if base else text


def figure(
    label: str,
    value: str,
    ratio: str = "",
    *,
    sep: str = ": ",
    gap: str = ", ",
    value_width: int = 0,
    ratio_width: int = 0,
) -> str:
    """A figure beside its baseline: ``<label><sep><value><gap><ratio>``, e.g.
    ``router: 4908 tps, 0.765 ms p50, 1.09 x direct``. ``value`` and ``ratio`` are
    right-aligned in their widths (for columns); without a ratio nor its width the line ends
    after the value."""
    line = label + sep + value.rjust(value_width)
    if ratio or ratio_width:
        line += gap + ratio.rjust(ratio_width)
    return line


def every(values: Iterable[float], digits: int = 2) -> str:
    """Every run's figure: ``0.68, 0.67, 0.65``."""
    return ", ".join(f"{x:.{digits}f}" for x in values)


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"
