"""How PPP runs a PostgreSQL client program (pg_dump, psql, pg_restore) against an instance.

pg_dump refuses a server newer than itself, and a dump of a newer server is only guaranteed
to load into the same or a newer one. So the programs are chosen per instance, here only:

- ``PPP_<...>_CONTAINER`` set: inside that container (``docker exec``), the server's own
  binaries, connecting to 127.0.0.1:5432 there. The password travels in docker's environment
  (``-e PGPASSWORD`` names the variable, docker copies its value), never on a command line.
- else local binaries at least as new as the server: ``PPP_PG_BINDIR`` (only there, when it
  is set), ``pg_config --bindir``, the distributions' versioned folders
  (``/usr/lib/postgresql/*/bin``, ``/usr/pgsql-*/bin``) newest first, then ``PATH``;
- else a PPPError naming the server's version, the versions found and what to install.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ppp_env import db
from ppp_env.errors import PPPError
from ppp_env.servers.local import BINDIR_PATTERNS, folder_version, pg_config_bindir
from ppp_env.settings import Instance, Role

#: The programs PPP runs; a local folder counts only when it has all of them.
PROGRAMS = ("pg_dump", "psql", "pg_restore")
#: Where the server listens inside its container (the official image's contract).
CONTAINER_HOST, CONTAINER_PORT = "127.0.0.1", 5432
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?(?:\.(\d+))?")


# -- versions: server_version_num style integers (170012, 90624) ----------------------------------
def parse_version(text: str) -> int | None:
    """``pg_dump (PostgreSQL) 17.12 (Debian ...)`` -> 170012; ``... 9.6.0`` -> 90600."""
    m = _VERSION.search(text)
    if m is None:
        return None
    a, b, c = (int(x) if x else 0 for x in m.groups())
    return a * 10000 + b if a >= 10 else a * 10000 + b * 100 + c


def major(num: int) -> int:
    """The major version's own number: 170012 -> 170000, 90624 -> 90600."""
    return num - num % 10000 if num >= 100000 else num - num % 100


def show(num: int, *, full: bool = True) -> str:
    """170012 -> ``17.12`` (``17`` without ``full``); 90624 -> ``9.6.24`` (``9.6``)."""
    if num >= 100000:
        return f"{num // 10000}.{num % 10000}" if full else str(num // 10000)
    text = f"{num // 10000}.{num // 100 % 100}"
    return f"{text}.{num % 100}" if full else text


def server_version(cur: Any) -> int:
    """The server's ``server_version_num`` (any connection to it)."""
    cur.execute("SELECT current_setting('server_version_num')::int")
    return int(cur.fetchone()[0])


# -- one instance's way of running the programs -------------------------------------------------
@dataclass(frozen=True)
class Client:
    """Runs the client programs against ``inst``: in ``container``, else from ``bindir``."""

    inst: Instance
    version: int
    container: str = ""
    bindir: Path | None = None
    connect_timeout: int = 5

    @property
    def where(self) -> str:
        return f"container {self.container!r}" if self.container else str(self.bindir)

    def command(
        self, program: str, *args: str, role: Role = "admin", connect: bool = True
    ) -> list[str]:
        """The argv: never a password (it travels in :meth:`environment`)."""
        user, password = self.inst.user_and_password(role)
        if self.container:
            pass_env = ["PGCONNECT_TIMEOUT", "PGAPPNAME"] + (["PGPASSWORD"] if password else [])
            head = [_docker(self.inst), "exec", "-i"]
            head += [x for var in pass_env for x in ("-e", var)]
            head += [self.container, program]
            host, port = CONTAINER_HOST, CONTAINER_PORT
        else:
            assert self.bindir is not None
            head = [str(self.bindir / program)]
            host, port = self.inst.host, self.inst.port
        if not connect:
            return [*head, *args]
        return [*head, "-h", host, "-p", str(port), "-U", user, "-d", self.inst.dbname, *args]

    def environment(self, role: Role = "admin") -> dict[str, str]:
        """The process environment: the password is here, and only here."""
        _user, password = self.inst.user_and_password(role)
        env = {k: v for k, v in os.environ.items() if k not in ("PGSERVICE", "PGPASSWORD")}
        env["PGCONNECT_TIMEOUT"] = str(self.connect_timeout)
        env["PGAPPNAME"] = "ppp"
        if password:
            env["PGPASSWORD"] = password
        return env

    def start(
        self,
        program: str,
        *args: str,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
        stdout: int | IO[bytes] | None = subprocess.PIPE,
        connect: bool = True,
    ) -> subprocess.Popen[bytes]:
        """Start ``program`` as the instance's ``{db}_admin``; stderr is always a pipe."""
        return subprocess.Popen(
            self.command(program, *args, connect=connect),
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=self.environment(),
        )


def _docker(inst: Instance) -> str:
    found = shutil.which("docker")
    if found is None:
        raise PPPError(
            f"{inst.env_prefix}CONTAINER is set but the docker command is not on PATH: install "
            "the Docker CLI here, or unset it to use local client programs"
        )
    return found


def tail(raw: bytes) -> str:
    """The last lines of a program's stderr, on one line."""
    lines = [ln for ln in raw.decode(errors="replace").strip().splitlines() if ln.strip()]
    return " | ".join(lines[-3:]) or "no message"


# -- choosing ----------------------------------------------------------------------------------
def client_for(
    inst: Instance,
    server: int,
    *,
    connect_timeout: int = 5,
    environ: Mapping[str, str] | None = None,
    patterns: Sequence[str] = BINDIR_PATTERNS,
) -> Client:
    """How to run the client programs against ``inst`` (its server's ``server_version_num``
    is ``server``); PPPError, saying what to install, when nothing here fits."""
    if inst.container:
        return _in_container(inst, server, connect_timeout)
    env = os.environ if environ is None else environ
    found = [(path, _local_version(str(path))) for path in local_bindirs(env, patterns)]
    for path, version in found:
        if version is not None and major(version) >= major(server):
            return Client(inst, version, bindir=path, connect_timeout=connect_timeout)
    raise PPPError(_nothing_fits(inst, server, found, bool(env.get("PPP_PG_BINDIR"))))


def for_instance(inst: Instance, *, connect_timeout: int = 5) -> Client:
    """:func:`client_for`, asking the server for its version first."""
    with db.connection(inst, "admin", autocommit=True, connect_timeout=connect_timeout) as conn:
        server = server_version(conn.cursor())
    return client_for(inst, server, connect_timeout=connect_timeout)


def _in_container(inst: Instance, server: int, connect_timeout: int) -> Client:
    var = f"{inst.env_prefix}CONTAINER"
    try:
        done = subprocess.run(
            [_docker(inst), "exec", inst.container, "pg_dump", "--version"],
            capture_output=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PPPError(
            f"cannot run docker exec in container {inst.container!r} ({var}): {exc}"
        ) from None
    version = parse_version(done.stdout.decode(errors="replace"))
    if done.returncode != 0 or version is None:
        raise PPPError(
            f"cannot run pg_dump in container {inst.container!r} ({var}): {tail(done.stderr)}"
        )
    if major(version) < major(server):
        raise PPPError(
            f"container {inst.container!r} ({var}) has pg_dump {show(version)}, older than "
            f"{inst.label} (PostgreSQL {show(server)}): set {var} to the container that runs "
            "that server"
        )
    return Client(inst, version, container=inst.container, connect_timeout=connect_timeout)


def _nothing_fits(
    inst: Instance, server: int, found: list[tuple[Path, int | None]], pinned: bool
) -> str:
    want = show(server, full=False)
    seen = ", ".join(
        f"{show(v) if v is not None else 'an unknown version'} in {p}" for p, v in found
    )
    where = "PPP_PG_BINDIR" if pinned else "this machine"
    return (
        f"no pg_dump/psql/pg_restore in {where} can work with {inst.label} (PostgreSQL "
        f"{show(server)}): {'found ' + seen if seen else 'found none'}; install "
        f"postgresql-client-{want} (or newer) and set PPP_PG_BINDIR to its bin folder, or set "
        f"{inst.env_prefix}CONTAINER to the Docker container that runs that server"
    )


# -- local folders -----------------------------------------------------------------------------
def local_bindirs(
    environ: Mapping[str, str], patterns: Sequence[str] = BINDIR_PATTERNS
) -> list[Path]:
    """Folders holding every one of :data:`PROGRAMS`, in the order PPP prefers them:
    ``PPP_PG_BINDIR`` alone when it is set (an explicit choice is never second-guessed), else
    ``pg_config --bindir``, the versioned folders newest first, then ``PATH``."""
    if environ.get("PPP_PG_BINDIR"):
        return [Path(environ["PPP_PG_BINDIR"])]
    search = environ.get("PATH", os.defpath)
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config", path=search)
    bindir = pg_config_bindir(pg_config) if pg_config else None
    if bindir is not None:
        candidates.append(bindir)
    for pattern in patterns:
        candidates += sorted(
            (Path(p) for p in glob.glob(pattern)), key=folder_version, reverse=True
        )
    on_path = shutil.which("pg_dump", path=search)
    if on_path:
        candidates.append(Path(on_path).parent)
    out: list[Path] = []
    for path in candidates:
        if path not in out and all((path / p).is_file() for p in PROGRAMS):
            out.append(path)
    return out


@functools.lru_cache(maxsize=64)
def _local_version(folder: str) -> int | None:
    """``pg_dump --version`` of a folder's pg_dump (None when it does not answer)."""
    try:
        done = subprocess.run(
            [str(Path(folder) / "pg_dump"), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_version(done.stdout) if done.returncode == 0 else None
