"""Settings: the veneer and every shard, from the process environment and a ``.env`` file.

Precedence (highest first): variables already in the process environment, then the
dotenv file. ``PPP_ENV=<name>`` (or ``ppp --env <name>``) selects ``.env.<name>`` instead
of ``.env``. Values in the file are taken literally (no ``${VAR}`` expansion), so a
password may contain ``$``. Nothing is read from alembic.ini or from revision files, so
the same revisions serve every environment. Every problem names the variable and what it
expects; no message ever contains a password.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from sqlalchemy.engine import URL, make_url

from ppp_env.compose_settings import DEVELOPMENT_MARKER, development_values
from ppp_env.compose_settings import env_prefix as env_prefix
from ppp_env.errors import PPPError
from ppp_env.identifiers import validate_identifier

Role = Literal["admin", "app", "superuser"]

#: Longest database name: ``{db}_admin`` must still fit in 63 bytes.
MAX_DBNAME_BYTES = 63 - len("_admin")


@dataclass(frozen=True)
class Instance:
    """One PostgreSQL database on one server: the veneer or a shard."""

    name: str
    kind: Literal["veneer", "shard"]
    host: str
    port: int
    dbname: str
    admin_password: str = field(repr=False)
    app_password: str = field(repr=False)
    superuser: str = "postgres"
    superuser_password: str | None = field(default=None, repr=False)
    superuser_dbname: str = "postgres"
    env_prefix: str = ""
    #: How the veneer's server reaches this instance (postgres_fdw), when that differs from
    #: how PPP reaches it: e.g. a compose service name and 5432 inside a Docker network.
    fdw_host: str = ""
    fdw_port: int = 0
    #: The Docker container that runs this instance's server, when PPP should run the
    #: PostgreSQL client programs (pg_dump, psql, pg_restore) inside it: the server's own
    #: binaries, whatever this machine has. Inside it the server listens on 127.0.0.1:5432.
    container: str = ""
    #: The shard's streaming replicas (PPP_SHARD_<NAME>_REPLICA_URLS), passwords filled in:
    #: a fleet run paces the shard by their replay lag (fleet.pacing). Empty: discovered.
    replicas: tuple[URL, ...] = field(default=(), repr=False)

    @property
    def admin_role(self) -> str:
        return f"{self.dbname}_admin"

    @property
    def app_role(self) -> str:
        return f"{self.dbname}_app"

    @property
    def label(self) -> str:
        return "veneer" if self.kind == "veneer" else f"shard {self.name!r}"

    def user_and_password(self, role: Role) -> tuple[str, str | None]:
        if role == "admin":
            return self.admin_role, self.admin_password
        if role == "app":
            return self.app_role, self.app_password
        return self.superuser, self.superuser_password

    def url(self, role: Role = "admin", *, dbname: str | None = None) -> URL:
        """SQLAlchemy URL; render it with :func:`masked` before showing it to anyone."""
        user, password = self.user_and_password(role)
        default_db = self.superuser_dbname if role == "superuser" else self.dbname
        return URL.create(
            "postgresql+psycopg2",
            username=user,
            password=password,
            host=self.host,
            port=self.port,
            database=dbname or default_db,
        )

    def masked_url(self, role: Role = "admin", *, dbname: str | None = None) -> str:
        return masked(self.url(role, dbname=dbname))

    def libpq_url(self, role: Role = "app") -> str:
        """A ``postgresql://`` URL for psql and other libpq tools (contains the password)."""
        return self.url(role).set(drivername="postgresql").render_as_string(hide_password=False)


def masked(url: URL) -> str:
    """A URL with its password replaced by ``***``: the only form PPP ever prints."""
    return url.render_as_string(hide_password=True)


#: postgres_fdw's fdw_startup_cost and fdw_tuple_cost on the veneer's foreign servers by
#: default (PPP_FDW_STARTUP_COST, PPP_FDW_TUPLE_COST; see ppp_env.veneer.wiring.server_options).
FDW_STARTUP_COST = 50000.0
FDW_TUPLE_COST = 10.0
#: Tenants of one shard migrated at once by default (PPP_JOBS_PER_SHARD), chosen with
#: ``python benchmarks/migrate_fleet.py --jobs-sweep 2,3,4`` (docs/benchmarks.md).
JOBS_PER_SHARD = 1


@dataclass(frozen=True)
class Settings:
    """Everything PPP needs to reach the veneer and the shards of one environment."""

    env_name: str | None
    veneer: Instance
    shards: dict[str, Instance]
    jobs: int = 4
    #: Tenants of one shard migrated at once, each on its own connection and worker.
    jobs_per_shard: int = JOBS_PER_SHARD
    #: Seconds a run waits for a tenant that another PPP run is migrating.
    lock_timeout: float = 10.0
    #: Seconds any statement of a tenant's migration may wait for a table lock: the longest an
    #: application query can queue behind the migration.
    migration_lock_timeout: float = 2.0
    #: The first attempt's lock wait; each retry of a tenant doubles it, up to the timeout
    #: above (fleet.retry.LockSteps), so a young blocker stalls the application only briefly.
    migration_lock_timeout_start: float = 0.02
    #: Further attempts for a tenant whose migration hit its lock wait (rolled back, retried);
    #: never fewer than it takes to reach the full timeout once.
    lock_retries: int = 5
    #: Seconds any statement of a tenant's migration may run (0: no limit).
    statement_timeout: float = 0.0
    #: postgres_fdw's use_remote_estimate on the veneer's foreign servers (joins plan better,
    #: every query pays a remote EXPLAIN).
    remote_estimate: bool = False
    #: postgres_fdw's fdw_startup_cost and fdw_tuple_cost on the veneer's foreign servers:
    #: what the planner charges per remote query and per row fetched (high enough that one
    #: remote query doing a tenant's join, grouping and sort is the cheaper plan).
    fdw_startup_cost: float = FDW_STARTUP_COST
    fdw_tuple_cost: float = FDW_TUPLE_COST
    connect_timeout: int = 5
    #: Seconds of replay lag a shard's replicas may have before a fleet run waits to start
    #: the shard's next tenant (0: no pacing, nothing queried).
    max_replica_lag: float = 0.0
    #: What pacing does about a replica it cannot reach: ``wait`` (as for lag) or ``proceed``
    #: (after max_replica_lag seconds, with a warning).
    replica_unreachable: Literal["wait", "proceed"] = "wait"
    #: Seconds one pause may last before the shard's run stops (the rest not run).
    replica_wait_timeout: float = 600.0
    #: Which tenants the veneer wires: ``all`` (every tenant, after each run) or
    #: ``on-demand`` (only those wired once by name; runs keep them in step, others stay
    #: ``pending``, reached through the router).
    veneer_wiring: Literal["all", "on-demand"] = "all"
    source: str = ""

    @property
    def wires_on_demand(self) -> bool:
        return self.veneer_wiring == "on-demand"

    def shard(self, name: str) -> Instance:
        try:
            return self.shards[name]
        except KeyError:
            known = ", ".join(self.shards) or "(none)"
            raise PPPError(f"unknown shard {name!r}; PPP_SHARDS lists: {known}") from None

    @property
    def instances(self) -> list[Instance]:
        return [self.veneer, *self.shards.values()]

    def instance(self, name: str) -> Instance:
        """The veneer (by ``veneer`` or its configured name) or a shard."""
        if name in ("veneer", self.veneer.name):
            return self.veneer
        if name not in self.shards:
            known = ", ".join([self.veneer.name, *self.shards])
            raise PPPError(f"unknown instance {name!r}: expected one of {known}")
        return self.shards[name]


def project_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The project folder: ``PPP_PROJECT_DIR`` or the current directory."""
    env = os.environ if environ is None else environ
    return Path(env.get("PPP_PROJECT_DIR") or os.getcwd()).resolve()


def dotenv_path(env_name: str | None, directory: Path) -> Path:
    return directory / (f".env.{env_name}" if env_name else ".env")


def read_environment(
    env_name: str | None = None, environ: Mapping[str, str] | None = None
) -> tuple[dict[str, str], str | None, Path]:
    """Merge the dotenv file under the process environment; return (values, env name, file)."""
    process = dict(os.environ if environ is None else environ)
    name = env_name or process.get("PPP_ENV") or None
    if name is not None:
        try:
            validate_identifier(name.replace("-", "_"), "environment name")
        except PPPError:
            raise PPPError(
                f"PPP_ENV={name!r} is not valid: expected an environment name (lower-case "
                "letters, digits, '_' or '-'; it selects the file .env.NAME)"
            ) from None
    path = dotenv_path(name, project_dir(process))
    values: dict[str, str] = {}
    if not path.is_file() and name is None and "PPP_SHARDS" not in process:
        values = development_values(path.parent) or {}
    if path.is_file():
        values = read_dotenv(path)
    values.update(process)
    return values, name, path


#: python-dotenv's logger: it warns there, with the line number as the record's argument,
#: about a statement it cannot parse (and skips it).
_DOTENV_LOGGER = "dotenv.main"


class _Unparsed(logging.Handler):
    """Collects the line numbers python-dotenv warns about while it reads a file."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.args and isinstance(record.args, tuple):
            number = str(record.args[0])
            if number.isdigit():
                self.lines.append(int(number))


def read_dotenv(path: Path) -> dict[str, str]:
    """The file's settings (literal values), or a PPPError naming the file and line of the
    first statement that is not ``NAME=value``.

    python-dotenv only logs a warning and skips a statement it cannot parse, so a typo would
    silently drop a setting (or a password); a line without ``=`` counts as malformed too.
    The line itself is never shown: it may hold a password.
    """
    logger = logging.getLogger(_DOTENV_LOGGER)
    catch, propagate = _Unparsed(), logger.propagate
    logger.addHandler(catch)
    logger.propagate = False  # the application's handlers never see a line of this file
    try:
        raw = dotenv_values(path, interpolate=False)
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PPPError(f"cannot read {path}: {exc}") from None
    finally:
        logger.removeHandler(catch)
        logger.propagate = propagate
    bad = [(_statement_line(lines, n), True) for n in catch.lines]
    bad += [(_key_line(lines, k), False) for k, v in raw.items() if v is None]
    if bad:
        line, unparsed = min(bad)
        quote = unparsed and "=" in lines[line - 1]
        why = "expected NAME=value" + (" (an unterminated quote?)" if quote else "")
        raise PPPError(f"{path}, line {line}: cannot parse this line: {why}")
    return {k: v for k, v in raw.items() if v is not None}


def _statement_line(lines: list[str], start: int) -> int:
    """The first non-blank line from ``start`` (1-based): where the statement's text is."""
    for number in range(start, len(lines) + 1):
        if lines[number - 1].strip():
            return number
    return start


def _key_line(lines: list[str], key: str) -> int:
    """The line of ``key`` written without ``=``."""
    for number, line in enumerate(lines, 1):
        words = line.split()
        if "=" not in line and words and words[-1] == key:
            return number
    return len(lines)


class _Reader:
    def __init__(self, values: Mapping[str, str], where: str) -> None:
        self.values = values
        self.where = where

    def get(self, var: str, expects: str, default: str | None = None) -> str:
        raw = self.values.get(var)
        if raw is None or raw.strip() == "":
            if default is not None:
                return default
            raise PPPError(f"{var} is not set: expected {expects} ({self.where})")
        return raw.strip()

    def optional(self, var: str) -> str | None:
        raw = self.values.get(var)
        return raw if raw not in (None, "") else None

    def integer(self, var: str, expects: str, default: int | None, lo: int, hi: int) -> int:
        raw = self.get(var, expects, None if default is None else str(default))
        try:
            value = int(raw)
        except ValueError:
            raise PPPError(f"{var}={raw!r} is not valid: expected {expects}") from None
        if not lo <= value <= hi:
            raise PPPError(f"{var}={raw!r} is not valid: expected {expects}")
        return value

    def boolean(self, var: str, expects: str, default: bool) -> bool:
        raw = self.get(var, expects, "true" if default else "false").lower()
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise PPPError(f"{var}={raw!r} is not valid: expected {expects}")

    def number(self, var: str, expects: str, default: float, lo: float = 0.0) -> float:
        raw = self.get(var, expects, str(default))
        try:
            value = float(raw)
        except ValueError:
            raise PPPError(f"{var}={raw!r} is not valid: expected {expects}") from None
        if not value >= lo or math.isinf(value):  # also NaN
            raise PPPError(f"{var}={raw!r} is not valid: expected {expects}")
        return value

    def choice(self, var: str, choices: tuple[str, ...], default: str) -> str:
        raw = self.get(var, " or ".join(choices), default).lower()
        if raw not in choices:
            raise PPPError(f"{var}={raw!r} is not valid: expected {' or '.join(choices)}")
        return raw


_REPLICA_URL = "postgresql://[user[:password]@]host[:port][/dbname]"


def replica_urls(r: _Reader, var: str, dbname: str, admin_password: str) -> tuple[URL, ...]:
    """A shard's comma-separated replica URLs; a part a URL leaves out is the shard's: the
    role ``{db}_admin`` with its password, the database ``{db}``, port 5432."""
    raw = r.optional(var)
    if raw is None or not raw.strip():
        return ()
    urls: list[URL] = []
    for n, item in enumerate(raw.split(","), 1):
        try:
            url: URL | None = make_url(item.strip())
        except Exception:  # never shown: the text may hold a password
            url = None
        if url is None or url.drivername not in ("postgresql", "postgres") or not url.host:
            raise PPPError(
                f"{var}: URL {n} is not valid: expected comma-separated libpq URLs, {_REPLICA_URL}"
            )
        urls.append(
            URL.create(
                "postgresql",
                username=url.username or f"{dbname}_admin",
                password=url.password or admin_password,
                host=url.host,
                port=url.port or 5432,
                database=url.database or dbname,
                query=url.query,
            )
        )
    return tuple(urls)


def parse_shard_names(raw: str, var: str = "PPP_SHARDS", veneer: str = "veneer") -> list[str]:
    """Split a comma-separated list of shard names; PPPError naming ``var`` when one is bad."""
    names: list[str] = []
    for item in raw.split(","):
        shard = item.strip()
        try:
            validate_identifier(shard, "shard name", MAX_DBNAME_BYTES)
        except PPPError as exc:
            raise PPPError(f"{var}={raw!r}: {exc}") from None
        if shard in ("veneer", veneer):
            raise PPPError(f"{var}={raw!r}: {shard!r} is the veneer, not a shard")
        if shard in names:
            raise PPPError(f"{var}={raw!r}: shard {shard!r} is listed twice")
        names.append(shard)
    return names


def _instance(r: _Reader, kind: Literal["veneer", "shard"], name: str) -> Instance:
    p = env_prefix(kind, name)
    dbname = r.get(f"{p}DB", "a database name", default=name)
    if dbname != name or kind == "veneer":
        try:
            validate_identifier(dbname, "database name", MAX_DBNAME_BYTES)
        except PPPError as exc:
            raise PPPError(f"{p}DB: {exc}") from None
    host = r.get(f"{p}HOST", "a host name or address", default="127.0.0.1")
    port = r.integer(f"{p}PORT", "a TCP port number (1-65535)", None, 1, 65535)
    admin_password = r.get(f"{p}ADMIN_PASSWORD", f"the password of role {dbname}_admin")
    replicas = (
        () if kind == "veneer" else replica_urls(r, f"{p}REPLICA_URLS", dbname, admin_password)
    )
    return Instance(
        name=name,
        kind=kind,
        host=host,
        port=port,
        dbname=dbname,
        admin_password=admin_password,
        app_password=r.get(f"{p}APP_PASSWORD", f"the password of role {dbname}_app"),
        superuser=r.get(f"{p}SUPERUSER", "a superuser role name", default="postgres"),
        superuser_password=r.optional(f"{p}SUPERUSER_PASSWORD"),
        superuser_dbname=r.get(f"{p}SUPERUSER_DB", "a maintenance database", default="postgres"),
        env_prefix=p,
        fdw_host=r.get(f"{p}FDW_HOST", "a host name the veneer's server can reach", default=host),
        fdw_port=r.integer(f"{p}FDW_PORT", "a TCP port number (1-65535)", port, 1, 65535),
        container=r.get(f"{p}CONTAINER", "a Docker container name or id", default=""),
        replicas=replicas,
    )


def _unreachable(r: _Reader) -> Literal["wait", "proceed"]:
    return (
        "proceed"
        if r.choice("PPP_REPLICA_UNREACHABLE", ("wait", "proceed"), "wait") == "proceed"
        else "wait"
    )


def _run_settings(r: _Reader) -> dict[str, Any]:
    """How runs behave: workers, lock and statement timeouts, the veneer's costs, replicas."""
    return {
        "jobs": r.integer("PPP_JOBS", "a number of parallel shard workers (1-64)", 4, 1, 64),
        "jobs_per_shard": r.integer(
            "PPP_JOBS_PER_SHARD",
            "a number of tenants migrated at once per shard (1-64)",
            JOBS_PER_SHARD,
            1,
            64,
        ),
        "lock_timeout": r.number("PPP_LOCK_TIMEOUT", "seconds to wait for a tenant's lock", 10.0),
        "migration_lock_timeout": r.number(
            "PPP_MIGRATION_LOCK_TIMEOUT", "seconds a migration statement may wait for a lock", 2.0
        ),
        "migration_lock_timeout_start": r.number(
            "PPP_MIGRATION_LOCK_TIMEOUT_START",
            "seconds, at least 0.001, the first attempt's lock wait",
            0.02,
            lo=0.001,
        ),
        "lock_retries": r.integer("PPP_LOCK_RETRIES", "a number of retries (0-100)", 5, 0, 100),
        "statement_timeout": r.number(
            "PPP_STATEMENT_TIMEOUT", "seconds a migration statement may run (0: no limit)", 0.0
        ),
        "remote_estimate": r.boolean(
            "PPP_FDW_REMOTE_ESTIMATE", "true or false (use_remote_estimate)", False
        ),
        "fdw_startup_cost": r.number(
            "PPP_FDW_STARTUP_COST",
            "a planner cost of 0 or more (fdw_startup_cost)",
            FDW_STARTUP_COST,
        ),
        "fdw_tuple_cost": r.number(
            "PPP_FDW_TUPLE_COST", "a planner cost of 0 or more (fdw_tuple_cost)", FDW_TUPLE_COST
        ),
        "connect_timeout": r.integer("PPP_CONNECT_TIMEOUT", "seconds (1-600)", 5, 1, 600),
        "max_replica_lag": r.number(
            "PPP_MAX_REPLICA_LAG", "seconds of replica replay lag (0: no pacing)", 0.0
        ),
        "replica_unreachable": _unreachable(r),
        "replica_wait_timeout": r.number(
            "PPP_REPLICA_WAIT_TIMEOUT", "seconds one pause for replicas may last", 600.0
        ),
        "veneer_wiring": (
            "on-demand"
            if r.choice("PPP_VENEER_WIRING", ("all", "on-demand"), "all") == "on-demand"
            else "all"
        ),
    }


def load_settings(
    env_name: str | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read and validate the settings of one environment; raise PPPError naming what is wrong."""
    values, name, path = read_environment(env_name, environ)
    where = (
        f"looked in the process environment and {path}"
        + ("" if path.is_file() else ", which does not exist")
        + "; see .env.example"
    )
    r = _Reader(values, where)
    raw_shards = r.get("PPP_SHARDS", "a comma-separated list of shard names, e.g. a,b,c")
    veneer_name = r.get("PPP_VENEER_NAME", "a name", default="veneer")
    try:
        validate_identifier(veneer_name, "veneer name", MAX_DBNAME_BYTES)
    except PPPError as exc:
        raise PPPError(f"PPP_VENEER_NAME: {exc}") from None
    shard_names = parse_shard_names(raw_shards, "PPP_SHARDS", veneer_name)
    veneer = _instance(r, "veneer", veneer_name)
    shards = {s: _instance(r, "shard", s) for s in shard_names}
    seen: dict[tuple[str, int, str], str] = {}
    for inst in [veneer, *shards.values()]:
        key = (inst.host, inst.port, inst.dbname)
        if key in seen:
            raise PPPError(
                f"{inst.env_prefix}DB: {inst.label} and {seen[key]} are the same database "
                f"{inst.dbname!r} on {inst.host}:{inst.port}; give each its own database"
            )
        seen[key] = inst.label
    return Settings(
        env_name=name,
        veneer=veneer,
        shards=shards,
        **_run_settings(r),
        source=(
            str(path)
            if path.is_file()
            else "DEVELOPMENT DEFAULTS of docker-compose.yml"
            if values.get(DEVELOPMENT_MARKER)
            else "process environment"
        ),
    )
