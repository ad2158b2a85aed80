"""Shared migrations (``alembic -n shared ...``): objects every tenant of a shard database uses.

Tenant tables of real applications reference objects that all tenants of one database
share: a schema with a users table that tenant tables have foreign keys to, trigger
functions, extensions. ``shared_migrations/`` holds their revisions (django-tenants calls
them SHARED_APPS, as opposed to TENANT_APPS) and ``shared_migrations/env.py`` calls
:func:`run_migrations`, which applies them ONCE PER SHARD DATABASE:

- as the shard's ``{db}_admin`` role, with ``search_path`` set to ``public`` (shared
  revisions schema-qualify their objects);
- each shard in one transaction (all its pending revisions or none), under an advisory
  lock so two runs never migrate a shard at once;
- the version table is ``ppp.shared_version``, in the shard's admin-only schema ``ppp``
  (created by :func:`ppp_env.fleet.ensure_index`, closed to ``{db}_app``);
- shards run one after the other: the shared chain is small and a shard takes
  milliseconds, so the fleet runner's worker processes would cost more than they save.
  An unreachable or failing shard is reported by name (URL masked) and the others still
  run; the command then fails (Alembic prints ``FAILED: ...``).

Commands: ``upgrade``, ``downgrade`` and ``stamp`` per shard; ``current`` prints one line
per shard (``<shard> <revision|(base)> [(head)]``); ``--sql`` renders the SQL per shard
(stdout with a ``-- PPP: shard X`` header, or one file per shard with ``-x sql_dir=DIR``);
``history`` needs no database; ``history -i``, ``check`` and ``revision --autogenerate``
look at one shard (the first selected). ``-x shard=a,b`` narrows to shards, ``-x env=NAME``
selects the environment (``.env.NAME``), as for the veneer.

Revisions that must know the shard they run on (for instance to grant the shard's app role
USAGE on a shared schema) call :func:`current_shard`.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from ppp_env import db
from ppp_env.alembic_env import COMMAND_KEY, SETTINGS_KEY, PPPEnvironment
from ppp_env.errors import PPPError
from ppp_env.identifiers import quote_ident
from ppp_env.settings import Instance, Settings
from ppp_env.tenant_state import ensure_index

INI_SECTION = "shared"
VERSION_SCHEMA = "ppp"
VERSION_TABLE = "shared_version"
OPTIONS_KEY = "ppp.shared_options"
RESULT_KEY = "ppp.shared_result"
X_KEYS = ("env", "shard", "sql_dir")
#: Advisory lock taken by a run on a shard (distinct from the tenant locks' namespace).
LOCK_KEY = (0x505053, 0)

_current: Instance | None = None


def current_shard() -> Instance:
    """The shard being migrated (a :class:`ppp_env.settings.Instance`), for shared revisions.

    ``current_shard().app_role`` is the role the application connects as; grant it what it
    needs on the objects the revision creates, e.g.
    ``op.execute(f"GRANT USAGE ON SCHEMA shared TO {quote_ident(current_shard().app_role)}")``.
    """
    if _current is None:
        raise PPPError("current_shard() is only available while PPP runs shared migrations")
    return _current


# -- options and results ------------------------------------------------------------------------
@dataclass
class SharedOptions:
    """How a shared run behaves: from ``-x key=value`` or from ``ppp migrate``."""

    shards: list[str] | None = None
    sql_dir: str | None = None
    #: No per-shard lines on stdout (``ppp migrate`` prints its own report).
    quiet: bool = False

    @classmethod
    def from_x(cls, x: Mapping[str, str], base: SharedOptions | None = None) -> SharedOptions:
        opts = SharedOptions(**asdict(base)) if base else SharedOptions()
        for key, raw in x.items():
            if key not in X_KEYS:
                raise PPPError(
                    f"unknown -x option {key!r} for shared migrations: expected one of "
                    + ", ".join(X_KEYS)
                )
            value = raw.strip()
            if key == "shard":
                names = [v.strip() for v in value.split(",") if v.strip()]
                if not names:
                    raise PPPError("-x shard= needs at least one name")
                opts.shards = names
            elif key == "sql_dir":
                if not value:
                    raise PPPError("-x sql_dir= needs a folder")
                opts.sql_dir = value
        return opts


@dataclass
class ShardOutcome:
    """What a shared run did on one shard: revisions before and after, or the error."""

    shard: str
    before: str | None = None
    after: str | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        if self.error is not None:
            return "failed"
        return "current" if self.before == self.after else "migrated"

    def describe(self) -> str:
        """What happened, e.g. ``(base) -> s002``, ``s002, nothing to do`` or ``failed``."""
        if self.error is not None:
            return "failed"
        if self.before == self.after:
            return f"{self.after or '(base)'}, nothing to do"
        return f"{self.before or '(base)'} -> {self.after or '(base)'}"

    def line(self) -> str:
        return f"{self.shard}: {self.describe()}"


@dataclass
class SharedResult:
    command: str
    shards: list[ShardOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def failed(self) -> dict[str, str]:
        return {s.shard: s.error for s in self.shards if s.error is not None}

    def summary(self) -> str:
        n = sum(1 for s in self.shards if s.status == "migrated")
        parts = [
            f"{n} shard(s) migrated",
            f"{sum(1 for s in self.shards if s.status == 'current')} already current",
            f"{len(self.failed)} failed",
        ]
        return ", ".join(parts)

    def failure_message(self) -> str:
        lines = [
            f"shared {self.command} failed on {len(self.failed)} of {len(self.shards)} shard(s) "
            "(the others are done; a rerun does what is left):"
        ]
        lines += [f"shard {name}: {error}" for name, error in self.failed.items()]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "ok": self.ok,
            "shards": [asdict(s) for s in self.shards],
        }


# -- the environment (shared_migrations/env.py) -------------------------------------------------
def selected_shards(settings: Settings, names: Sequence[str] | None) -> list[Instance]:
    """The shards to run on, in PPP_SHARDS order; an unknown name fails before anything ran."""
    if names is None:
        return list(settings.shards.values())
    wanted = [settings.shard(n) for n in dict.fromkeys(names)]
    order = list(settings.shards)
    return sorted(wanted, key=lambda inst: order.index(inst.name))


class SharedEnvironment(PPPEnvironment):
    """The shared environment: each command once per selected shard database."""

    def __init__(self, env: EnvironmentContext, configure_kw: dict[str, Any]) -> None:
        super().__init__(env, configure_kw)
        self.options = SharedOptions.from_x(self.x, self.config.attributes.get(OPTIONS_KEY))

    def dispatch(self) -> None:
        self.shards = selected_shards(self.settings, self.options.shards)
        super().dispatch()

    def move(self) -> None:
        result = SharedResult(self.command)
        self.config.attributes[RESULT_KEY] = result
        for inst in self.shards:
            outcome = self.on_shard(inst, moving=True)
            result.shards.append(outcome)
            if not self.options.quiet:
                self.config.print_stdout(outcome.line())
        if not result.ok:
            raise PPPError(result.failure_message())

    def other(self) -> None:
        """history -i, check, revision --autogenerate: one database to look at."""
        if not self.shards:
            raise PPPError("no shard selected")
        outcome = self.on_shard(self.shards[0], moving=False)
        if outcome.error is not None:
            raise PPPError(f"shard {outcome.shard}: {outcome.error}")

    def current(self) -> None:
        heads = set(self.env.script.get_heads())
        revisions, errors = read_revisions(self.settings, self.shards)
        for inst in self.shards:
            if inst.name in errors:
                shown = "(unreachable)"
            else:
                revision = revisions[inst.name]
                if revision is None:
                    shown = "(base)" + (" (head)" if not heads else "")
                else:
                    shown = " ".join(f"{r}{' (head)' * (r in heads)}" for r in revision.split())
            self.config.print_stdout(f"{inst.name} {shown}")
        if errors:
            raise PPPError("; ".join(f"shard {k}: {v}" for k, v in errors.items()))

    def on_shard(self, inst: Instance, *, moving: bool) -> ShardOutcome:
        """Alembic's command on one shard, in one transaction; errors become the outcome's."""
        outcome = ShardOutcome(inst.name)
        engine = db.engine(
            inst, "admin", connect_timeout=self.settings.connect_timeout, poolclass=NullPool
        )
        try:
            try:
                conn = engine.connect()
            except Exception as exc:
                outcome.error = _connect_error(inst, exc)
                return outcome
            try:
                self.migrate_shard(conn, inst, outcome, moving=moving)
            except Exception as exc:
                outcome.after = outcome.before
                outcome.error = db.first_line(exc)
            finally:
                with suppress(Exception):  # a lost connection cannot be closed cleanly
                    conn.close()
        finally:
            engine.dispose()
        return outcome

    def migrate_shard(
        self, conn: Connection, inst: Instance, outcome: ShardOutcome, *, moving: bool
    ) -> None:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        raw.autocommit = True
        cur = raw.cursor()
        if moving:
            ensure_index(cur, inst.app_role)  # schema ppp, closed to the app role
        cur.execute("SET search_path TO public")
        raw.autocommit = False
        self.env.configure(
            connection=conn,
            version_table=VERSION_TABLE,
            version_table_schema=VERSION_SCHEMA,
            transaction_per_migration=False,
            **self.configure_kw,
        )
        with self.env.begin_transaction(), _migrating(inst):
            if moving:
                _lock_shard(conn, self.settings.lock_timeout)
            outcome.before = outcome.after = _read_on(conn)
            self.env.run_migrations()
            if moving:
                outcome.after = _read_on(conn)
            if moving and (outcome.before is None or outcome.before != outcome.after):
                # A new version table got the app role's DML from default privileges.
                conn.exec_driver_sql(
                    f"REVOKE ALL ON {VERSION_SCHEMA}.{VERSION_TABLE} "
                    f"FROM {quote_ident(inst.app_role)}",
                    execution_options={"no_parameters": True},
                )

    def offline(self) -> None:
        from_base = self.env.get_starting_revision_argument() is None
        out_dir = Path(self.options.sql_dir) if self.options.sql_dir else None
        if out_dir:
            out_dir.mkdir(parents=True, exist_ok=True)
        for inst in self.shards:
            text = f"-- PPP: shard {inst.name}\n\n{self.render_shard(inst, from_base)}\n"
            if out_dir:
                (out_dir / f"{inst.name}.sql").write_text(text)
            else:
                stream: TextIO = self.config.output_buffer or sys.stdout
                stream.write(text)
        if out_dir:
            print(f"wrote {len(self.shards)} file(s) to {out_dir}", file=sys.stderr)

    def render_shard(self, inst: Instance, from_base: bool) -> str:
        buf = io.StringIO()
        self.env.configure(
            dialect_name="postgresql",
            output_buffer=buf,
            literal_binds=True,
            version_table=VERSION_TABLE,
            version_table_schema=VERSION_SCHEMA,
            transaction_per_migration=False,
            **self.configure_kw,
        )
        try:
            with self.env.begin_transaction(), _migrating(inst):
                if from_base:
                    self.env.execute(f"CREATE SCHEMA IF NOT EXISTS {VERSION_SCHEMA}")
                    self.env.execute(
                        f"REVOKE ALL ON SCHEMA {VERSION_SCHEMA} FROM {quote_ident(inst.app_role)}"
                    )
                self.env.execute("SET LOCAL search_path TO public")
                self.env.run_migrations()
        except PPPError:
            raise
        except Exception as exc:
            raise PPPError(
                f"shard {inst.name}: cannot render the SQL offline ({type(exc).__name__}: "
                f"{exc}); a revision on this path reads from the database, which --sql cannot do"
            ) from None
        return buf.getvalue()


@contextmanager
def _migrating(inst: Instance) -> Iterator[None]:
    """Make :func:`current_shard` answer ``inst`` for the duration."""
    global _current
    _current = inst
    try:
        yield
    finally:
        _current = None


def _lock_shard(conn: Connection, wait: float) -> None:
    """One run per shard at a time: the shared lock, waited for at most ``wait`` seconds."""
    conn.exec_driver_sql(
        f"SET LOCAL lock_timeout = '{int(wait * 1000)}ms'; "
        f"SELECT pg_advisory_xact_lock({LOCK_KEY[0]}, {LOCK_KEY[1]}); "
        "SET LOCAL lock_timeout TO DEFAULT",
        execution_options={"no_parameters": True},
    )


def run_migrations(**configure_kw: Any) -> None:
    """The body of ``shared_migrations/env.py``; PPPError becomes Alembic's ``FAILED: ...``.

    ``configure_kw`` goes to every ``context.configure`` call (e.g. ``target_metadata``).
    """
    SharedEnvironment.main(**configure_kw)


def _heads_sql() -> str:
    return (
        f"SELECT string_agg(version_num, ' ' ORDER BY version_num) "
        f"FROM {VERSION_SCHEMA}.{VERSION_TABLE}"
    )


def read_revision(cursor: Any) -> str | None:
    """The shard's shared revision(s), space-separated, or None (base) on a DB-API cursor."""
    cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{VERSION_SCHEMA}.{VERSION_TABLE}",))
    if not cursor.fetchone()[0]:
        return None
    cursor.execute(_heads_sql())
    value = cursor.fetchone()[0]
    return str(value) if value else None


def _read_on(conn: Connection) -> str | None:
    raw = conn.connection.dbapi_connection
    assert raw is not None
    return read_revision(raw.cursor())


def _connect_error(inst: Instance, exc: BaseException) -> str:
    return f"cannot connect to {inst.label} at {inst.masked_url('admin')}: {db.first_line(exc)}"


# -- programmatic entry points (ppp migrate, ppp status) ---------------------------------------
def has_shared_section(config_path: str | Path) -> bool:
    """Whether an alembic.ini has a ``[shared]`` section (projects made before it had none)."""
    return Config(str(config_path)).file_config.has_section(INI_SECTION)


def shared_config(config_path: str | Path, settings: Settings | None = None) -> Config:
    """A Config for the ``[shared]`` section, carrying ``settings`` to env.py."""
    cfg = Config(str(config_path), ini_section=INI_SECTION)
    if settings is not None:
        cfg.attributes[SETTINGS_KEY] = settings
    return cfg


def upgrade(
    settings: Settings,
    config_path: str | Path,
    revision: str = "head",
    shards: Sequence[str] | None = None,
) -> SharedResult:
    """``alembic -n shared upgrade <revision>`` in-process; the result even when shards failed.

    PPPError only when nothing could run (a bad option, a broken script directory).
    """
    from alembic import command

    cfg = shared_config(config_path, settings)
    cfg.attributes[COMMAND_KEY] = "upgrade"
    cfg.attributes[OPTIONS_KEY] = SharedOptions(
        shards=list(shards) if shards is not None else None, quiet=True
    )
    try:
        command.upgrade(cfg, revision)
    except CommandError as exc:
        result = cfg.attributes.get(RESULT_KEY)
        if isinstance(result, SharedResult):
            return result
        raise PPPError(f"shared upgrade failed: {exc}") from None
    result = cfg.attributes.get(RESULT_KEY)
    assert isinstance(result, SharedResult)
    return result


def read_revisions(
    settings: Settings, shards: Sequence[Instance]
) -> tuple[dict[str, str | None], dict[str, str]]:
    """Each shard's shared revision (None: base), one short connection each; errors by shard."""
    revisions: dict[str, str | None] = {}
    errors: dict[str, str] = {}
    for inst in shards:
        try:
            with db.connection(
                inst, "admin", autocommit=True, connect_timeout=settings.connect_timeout
            ) as conn:
                revisions[inst.name] = read_revision(conn.cursor())
        except PPPError as exc:
            errors[inst.name] = str(exc)
    return revisions, errors


@dataclass(frozen=True)
class SharedStatus:
    """One line of ``ppp status``'s shared table."""

    shard: str
    revision: str | None
    migrations: str  # head | behind | unreachable


def status(
    settings: Settings, config_path: str | Path, shards: Sequence[str] | None = None
) -> tuple[list[str], list[SharedStatus], dict[str, str]]:
    """The shared heads, where each shard stands against them, and errors by shard."""
    heads = sorted(ScriptDirectory.from_config(shared_config(config_path)).get_heads())
    selected = selected_shards(settings, shards)
    revisions, errors = read_revisions(settings, selected)
    rows: list[SharedStatus] = []
    for inst in selected:
        if inst.name in errors:
            rows.append(SharedStatus(inst.name, None, "unreachable"))
            continue
        revision = revisions[inst.name]
        at = sorted(revision.split()) if revision else []
        rows.append(SharedStatus(inst.name, revision, "head" if at == heads else "behind"))
    return heads, rows, errors
