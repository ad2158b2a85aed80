"""Throwaway local PostgreSQL servers, one per instance, from this machine's binaries.

This is what ``ppp local up|down|status`` runs and what the test suite's topology fixture
uses. Each instance gets its own cluster (initdb), bound to 127.0.0.1 on a free port, with
``log_statement=all`` and ``scram-sha-256`` for TCP (postgres_fdw's non-superuser user
mappings need a server that asks for a password). initdb and pg_ctl refuse to run as
root, so as root every server command runs as the ``postgres`` OS user.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import dotenv

from ppp_env.errors import PPPError
from ppp_env.servers.provision import scram_verifier
from ppp_env.settings import Instance, env_prefix

EXAMPLE_SHARDS = ("bluth_co", "cyberdyne", "initech")
SERVER_USER = "postgres"

_CONF = """\
# Written by PPP (ppp_env/local.py): a throwaway server for development and tests.
listen_addresses = '127.0.0.1'
unix_socket_directories = '{socket_dir}'
port = {port}
log_statement = 'all'
log_line_prefix = '%m [%p] %q%u@%d '
log_min_messages = warning
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
# Logical replication: `ppp tenant move --mode online` publishes a tenant's tables.
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
"""


@dataclass(frozen=True)
class ServerStatus:
    name: str
    port: int | None
    running: bool
    pid: int | None
    data_dir: Path
    log_file: Path


#: Where distributions put versioned server binaries (Debian/Ubuntu, then RHEL/Fedora PGDG).
BINDIR_PATTERNS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin")


def folder_version(path: str | Path) -> tuple[int, ...]:
    """The major (and minor) version a distribution's folder is named after, (0,) if none:
    ``/usr/lib/postgresql/17/bin`` -> (17,)."""
    m = re.search(r"(?:/postgresql/|/pgsql-)(\d+)(?:\.(\d+))?/bin", str(path))
    return tuple(int(x) for x in m.groups() if x) if m else (0,)


def pg_config_bindir(pg_config: str) -> Path | None:
    """What ``pg_config --bindir`` answers (None when it fails)."""
    try:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return None
    return Path(out) if out else None


def find_bindir(
    environ: Mapping[str, str] | None = None, patterns: Sequence[str] = BINDIR_PATTERNS
) -> Path:
    """Where initdb and pg_ctl live: PPP_PG_BINDIR, ``pg_config --bindir``, a versioned
    distribution folder (newest first), or PATH."""
    env = os.environ if environ is None else environ
    tried: list[str] = []
    candidates: list[tuple[str, Path]] = []
    if env.get("PPP_PG_BINDIR"):
        candidates.append(("PPP_PG_BINDIR", Path(env["PPP_PG_BINDIR"])))
    pg_config = shutil.which("pg_config", path=env.get("PATH", os.defpath))
    if pg_config:
        bindir = pg_config_bindir(pg_config)
        if bindir is not None:
            candidates.append(("pg_config --bindir", bindir))
        else:
            tried.append(f"{pg_config} --bindir (failed)")
    else:
        tried.append("pg_config on PATH (not found)")
    for pattern in patterns:
        found = sorted(glob.glob(pattern), key=folder_version, reverse=True)
        if not found:
            tried.append(f"{pattern} (nothing there)")
        candidates.extend((pattern, Path(f)) for f in found)
    initdb = shutil.which("initdb", path=env.get("PATH", os.defpath))
    if initdb:
        candidates.append(("initdb on PATH", Path(os.path.realpath(initdb)).parent))
    else:
        tried.append("initdb on PATH (not found)")
    for how, path in candidates:
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
        tried.append(f"{path} ({how}: no initdb/pg_ctl there)")
    raise PPPError(
        "cannot find PostgreSQL server binaries (initdb, pg_ctl). Looked at: "
        + "; ".join(tried)
        + ". Install them (Debian/Ubuntu: apt-get install postgresql postgresql-contrib) "
        "or set PPP_PG_BINDIR to the folder holding initdb and pg_ctl."
    )


def free_port(preferred: int | None = None) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (``preferred`` when it is free)."""
    if preferred and port_is_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def default_base_dir(project: Path, env_name: str | None) -> Path:
    """Outside the project, so the ``postgres`` OS user can reach it wherever the clone is."""
    key = hashlib.sha1(f"{project}|{env_name or ''}".encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"ppp-local-{key}"


class LocalServers:
    """The throwaway servers under one base folder: ``<base>/<instance>/{data,run,...}``."""

    def __init__(self, base_dir: Path, bindir: Path | None = None) -> None:
        self.base_dir = Path(base_dir)
        self.bindir = bindir or find_bindir()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                self._server_uid = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise PPPError(
                    f"running as root, PPP starts PostgreSQL as the {SERVER_USER!r} OS user, "
                    "which does not exist: install the postgresql package or run as another user"
                ) from None

    # -- paths ---------------------------------------------------------------------------------
    def root(self, name: str) -> Path:
        return self.base_dir / name

    def data_dir(self, name: str) -> Path:
        return self.root(name) / "data"

    def log_file(self, name: str) -> Path:
        return self.root(name) / "postgresql.log"

    def instances(self) -> list[str]:
        if not self.base_dir.is_dir():
            return []
        return sorted(p.parent.parent.name for p in self.base_dir.glob("*/data/PG_VERSION"))

    # -- commands ------------------------------------------------------------------------------
    def _run(
        self, args: Sequence[str | Path], timeout: float = 120, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(a) for a in args]
        if self.as_root:
            cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
        try:
            return subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd="/",
                check=False,
                input=stdin,
                stdin=None if stdin is not None else subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise PPPError(
                f"{Path(str(args[0])).name} did not finish in {timeout:.0f} s: "
                + " ".join(str(a) for a in args)
            ) from None

    def _own(self, path: Path) -> None:
        if self.as_root:
            os.chown(path, self._server_uid.pw_uid, self._server_uid.pw_gid)

    def _mkdir(self, path: Path, mode: int = 0o700) -> None:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        self._own(path)

    def _check_reachable(self) -> None:
        """As root, the servers run as ``postgres``: every folder above theirs must let it in."""
        if not self.as_root:
            return
        for folder in [self.base_dir.resolve(), *self.base_dir.resolve().parents]:
            st = folder.stat()
            if st.st_uid != self._server_uid.pw_uid and not st.st_mode & 0o001:
                raise PPPError(
                    f"the {SERVER_USER!r} OS user, which runs the local servers, cannot reach "
                    f"{self.base_dir}: {folder} is not searchable by others. Set PPP_LOCAL_DIR "
                    f"to a folder under {tempfile.gettempdir()}, or `chmod o+x {folder}`"
                )

    def status(self, name: str) -> ServerStatus:
        data = self.data_dir(name)
        port = self._port(name)
        pid = None
        pidfile = data / "postmaster.pid"
        if pidfile.is_file():
            try:
                pid = int(pidfile.read_text().splitlines()[0])
                os.kill(pid, 0)
            except (OSError, ValueError, IndexError):
                pid = None
        return ServerStatus(name, port, pid is not None, pid, data, self.log_file(name))

    def _port(self, name: str) -> int | None:
        conf = self.data_dir(name) / "ppp.conf"
        if not conf.is_file():
            return None
        m = re.search(r"^port = (\d+)$", conf.read_text(), re.M)
        return int(m.group(1)) if m else None

    def init(self, name: str, superuser_password: str) -> bool:
        """initdb the instance's cluster unless it exists; return True when it was created."""
        data = self.data_dir(name)
        if (data / "PG_VERSION").is_file():
            return False
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755)
        self._check_reachable()
        self._mkdir(self.root(name))
        for sub in ("run",):
            self._mkdir(self.root(name) / sub)
        pwfile = self.root(name) / "pwfile"
        pwfile.write_text(superuser_password + "\n")
        pwfile.chmod(0o600)
        self._own(pwfile)
        try:
            res = self._run(
                [
                    self.bindir / "initdb",
                    "-D",
                    data,
                    "-U",
                    SERVER_USER,
                    "--pwfile",
                    pwfile,
                    "--auth-local=peer",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if res.returncode != 0:
            shutil.rmtree(data, ignore_errors=True)
            raise PPPError(
                f"initdb for {name!r} failed: {res.stderr.strip() or res.stdout.strip()}"
            )
        with open(data / "postgresql.conf", "a") as f:
            f.write("\ninclude_if_exists = 'ppp.conf'\n")
        return True

    def start(self, name: str, port: int) -> ServerStatus:
        """Start the instance on ``port`` unless it runs already; return its status."""
        st = self.status(name)
        if st.running:
            return st
        conf = self.data_dir(name) / "ppp.conf"
        conf.write_text(_CONF.format(port=port, socket_dir=self.root(name) / "run"))
        self._own(conf)
        log = self.log_file(name)
        log.touch()
        self._own(log)
        res = self._run(
            [
                self.bindir / "pg_ctl",
                "-D",
                self.data_dir(name),
                "-l",
                log,
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        st = self.status(name)
        if res.returncode != 0 or not st.running:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise PPPError(
                f"cannot start the local server {name!r} on 127.0.0.1:{port}: "
                + (" | ".join(tail) or res.stderr.strip())
            )
        return st

    def stop(self, name: str) -> bool:
        """Stop the instance if it runs (fast shutdown); return True when it was running.

        Returns once the postmaster process is gone, not merely its pid file, so that its
        port is free and no process is left behind.
        """
        st = self.status(name)
        if not st.running:
            return False
        res = self._run(
            [self.bindir / "pg_ctl", "-D", self.data_dir(name), "-m", "fast", "-w", "stop"]
        )
        if res.returncode != 0 and self.status(name).running:
            raise PPPError(f"cannot stop the local server {name!r}: {res.stderr.strip()}")
        if st.pid is not None and not _wait_gone(st.pid, timeout=30):
            raise PPPError(f"the local server {name!r} (pid {st.pid}) did not exit in 30 s")
        return True

    def set_superuser_password(self, name: str, password: str, var: str = "") -> None:
        """Set the superuser's password through the Unix socket (peer authentication).

        Only the verifier travels, in a session that does not log statements.
        """
        st = self.status(name)
        psql = self.bindir / "psql"
        if not psql.is_file():
            psql = Path(shutil.which("psql") or "psql")
        verifier = scram_verifier(password).replace("'", "''")
        res = self._run(
            [
                psql, "-X", "-q", "-v", "ON_ERROR_STOP=1",
                "-h", self.root(name) / "run", "-p", str(st.port),
                "-U", SERVER_USER, "-d", "postgres",
            ],
            stdin=(
                "SET log_statement = 'none';\n"
                f"ALTER ROLE {SERVER_USER} PASSWORD '{verifier}';\n"
            ),
            timeout=60,
        )  # fmt: skip
        if res.returncode != 0:
            why = (res.stderr.strip().splitlines() or ["psql failed"])[-1]
            raise PPPError(
                f"the local server {name!r} under {self.base_dir} exists, but its superuser "
                f"password is not in the settings{f' ({var})' if var else ''} and PPP cannot "
                f"reset it ({why}). "
                "Restore the .env file that `ppp local up` wrote, or run "
                "`ppp local down --purge` and `ppp local up` again."
            )

    def replicate(self, name: str, primary: Instance) -> None:
        """Make instance ``name`` a streaming replica of ``primary``'s running server: a
        ``pg_basebackup -R`` over the replication entry for 127.0.0.1 that initdb writes, as
        its superuser (password through the environment, never on a command line). Start it
        with :meth:`start`: it keeps the primary's roles and passwords."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755)
        self._check_reachable()
        self._mkdir(self.root(name))
        self._mkdir(self.root(name) / "run")
        cmd = [
            str(self.bindir / "pg_basebackup"),
            *("-D", str(self.data_dir(name)), "-R", "-X", "stream", "-c", "fast", "-w"),
            *("-h", primary.host, "-p", str(primary.port), "-U", primary.superuser),
        ]
        if self.as_root:
            cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
        env = {**os.environ, "PGPASSWORD": primary.superuser_password or ""}
        try:
            res = subprocess.run(
                cmd, capture_output=True, text=True, timeout=300, cwd="/", env=env, check=False
            )
        except subprocess.TimeoutExpired:
            raise PPPError(f"pg_basebackup of {primary.label} did not finish in 300 s") from None
        if res.returncode != 0:
            raise PPPError(f"pg_basebackup of {primary.label} failed: {res.stderr.strip()}")

    def purge(self, name: str) -> None:
        self.stop(name)
        shutil.rmtree(self.root(name), ignore_errors=True)

    def up(self, names: Sequence[str], previous: Mapping[str, str] | None = None) -> dict[str, str]:
        """Make every named instance run; return the settings that reach them.

        ``previous`` holds settings from an earlier run (the .env file): their passwords and
        ports are kept, so ``up`` twice changes nothing.
        """
        prev = dict(previous or {})
        values: dict[str, str] = {}
        shards = [n for n in names if n != "veneer"]
        values["PPP_SHARDS"] = ",".join(shards)
        for name in names:
            p = env_prefix("veneer" if name == "veneer" else "shard", name)

            def keep(var: str, prev: dict[str, str] = prev) -> str:
                return prev.get(var) or secrets.token_urlsafe(18)

            known = prev.get(f"{p}SUPERUSER_PASSWORD")
            su_password = known or secrets.token_urlsafe(18)
            created = self.init(name, su_password)
            st = self.status(name)
            if not st.running:
                wanted = self._port(name) or _int(prev.get(f"{p}PORT"))
                st = self.start(name, free_port(wanted))
            if st.port is None:
                raise PPPError(
                    f"the local server {name!r} runs from {st.data_dir} but its port is not in "
                    f"{st.data_dir / 'ppp.conf'}: stop it (pg_ctl -D {st.data_dir} stop) and run "
                    "`ppp local up` again"
                )
            if not created and not known:
                # The cluster exists but its password was lost with the .env file: set a new
                # one over the server's private Unix socket.
                self.set_superuser_password(name, su_password, f"{p}SUPERUSER_PASSWORD")
            values.update(
                {
                    f"{p}HOST": "127.0.0.1",
                    f"{p}PORT": str(st.port),
                    f"{p}DB": name,
                    f"{p}SUPERUSER": SERVER_USER,
                    f"{p}SUPERUSER_PASSWORD": su_password,
                    f"{p}ADMIN_PASSWORD": keep(f"{p}ADMIN_PASSWORD"),
                    f"{p}APP_PASSWORD": keep(f"{p}APP_PASSWORD"),
                }
            )
        return values

    def down(self, purge: bool = False) -> list[str]:
        """Stop every instance under the base folder; with ``purge`` delete their data too."""
        stopped = []
        for name in self.instances():
            if self.stop(name):
                stopped.append(name)
            if purge:
                self.purge(name)
        if purge and self.base_dir.is_dir() and not any(self.base_dir.iterdir()):
            self.base_dir.rmdir()
        return stopped


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill()
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _int(raw: str | None) -> int | None:
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


DOTENV_HEADER = "# Written by `ppp local up`"


def write_dotenv(path: Path, values: Mapping[str, str], remove: Collection[str] = ()) -> None:
    """Set ``values`` in a dotenv file, keeping its other lines and comments as they are.

    Variables named in ``remove`` are deleted (e.g. settings of another backend that would
    now be wrong). The file is created private (mode 0600): it holds passwords. python-dotenv's
    ``set_key``/``unset_key`` do the editing (each rewrites the file atomically, keeping its
    mode, in the quoting its own parser and Docker Compose read back literally).
    """
    if path.is_file():
        path.chmod(0o600)
    else:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    present = set(dotenv.dotenv_values(path, interpolate=False))
    if any(key not in present for key in values):
        text = path.read_text()
        with open(path, "a") as f:
            if text and not text.endswith("\n"):
                f.write("\n")
            if DOTENV_HEADER not in text:
                if text.strip() and not text.endswith("\n\n"):
                    f.write("\n")
                f.write(DOTENV_HEADER + "\n")
    for key, value in values.items():
        dotenv.set_key(path, key, value, quote_mode="auto")
    for key in remove:
        if key in present and key not in values:
            dotenv.unset_key(path, key)
