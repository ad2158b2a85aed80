"""How a fleet run behaves: ``-x key=value`` options (or ``ppp migrate``'s), and which
Alembic commands the runner renders or runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from ppp_env.errors import PPPError
from ppp_env.fleet.retry import LockSteps
from ppp_env.settings import Settings

#: Commands whose steps can be rendered once and replayed per tenant.
RENDERABLE = frozenset({"upgrade", "downgrade"})
#: Commands that change tenants' revisions (and so trigger a veneer refresh).
MUTATING = frozenset({"upgrade", "downgrade", "stamp"})

#: ``config.attributes[OPTIONS_KEY]``: the RunOptions of an in-process call (``-x`` adds to it).
OPTIONS_KEY = "ppp.options"
#: ``config.attributes[RESULT_KEY]``: the FleetResult of an upgrade, downgrade or stamp.
RESULT_KEY = "ppp.result"
#: ``config.attributes[CATALOG_KEY]``: the tenants an in-process call already read from the
#: catalog (``ppp migrate``), so that the run does not read them again.
CATALOG_KEY = "ppp.catalog"


# -- options and results ------------------------------------------------------------------------
@dataclass
class RunOptions:
    """How a fleet run behaves; from ``-x key=value`` or ``ppp migrate`` options."""

    shards: list[str] | None = None
    tenants: list[str] | None = None
    fail_fast: bool = False
    jobs: int | None = None
    #: Tenants of one shard migrated at once (None: PPP_JOBS_PER_SHARD).
    jobs_per_shard: int | None = None
    render: bool = True
    lock: str = "wait"
    refresh: bool = True
    output: str = "auto"
    verbose: bool = False
    sql_dir: str | None = None
    template: str | None = None
    #: The environment (.env.NAME) whose settings the run uses; None: PPP_ENV or .env.
    env: str | None = None
    #: Seconds a migration statement may wait for a lock: a fixed timeout for every attempt,
    #: or with ``lock_timeout_start`` the ceiling of the escalating waits (None: the
    #: settings' escalation, PPP_MIGRATION_LOCK_TIMEOUT_START to PPP_MIGRATION_LOCK_TIMEOUT).
    lock_timeout: float | None = None
    #: The first attempt's lock wait, doubled by each retry up to the timeout.
    lock_timeout_start: float | None = None
    #: Further attempts after a lock timeout (None: PPP_LOCK_RETRIES).
    retries: int | None = None
    #: Seconds a migration statement may run, 0 no limit (None: PPP_STATEMENT_TIMEOUT).
    statement_timeout: float | None = None
    #: Failed or locked tenants after which the run stops taking new ones (None: never;
    #: fail_fast is 1). A rollout stage's ``max_failures``.
    max_failures: int | None = None
    #: Write the run's report (one self-contained HTML file) there after the run.
    report: str | None = None

    X_KEYS = (
        "shard",
        "tenant",
        "fail_fast",
        "jobs",
        "jobs_per_shard",
        "render",
        "lock",
        "refresh",
        "output",
        "verbose",
        "sql_dir",
        "template",
        "env",
        "lock_timeout",
        "lock_timeout_start",
        "retries",
        "statement_timeout",
        "report",
    )

    def lock_steps(self, settings: Settings) -> LockSteps:
        """The lock waits of a tenant's attempts: the settings' escalation, unless these
        options give a timeout (then fixed) or a start (then escalating from it)."""
        ceiling, start = self.lock_timeout, self.lock_timeout_start
        if ceiling is None:
            ceiling = settings.migration_lock_timeout
            start = settings.migration_lock_timeout_start if start is None else start
        start = ceiling if start is None else start
        retries = settings.lock_retries if self.retries is None else self.retries
        return LockSteps(start, ceiling, retries)

    def run_options(self, **changes: object) -> RunOptions:
        """These options as a plain RunOptions (a subclass's own fields left out), changed."""
        values: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(RunOptions)}
        values.update(changes)
        return RunOptions(**values)  # type: ignore[arg-type]

    @classmethod
    def from_x(cls, x: Mapping[str, str], base: RunOptions | None = None) -> RunOptions:
        opts = base.run_options() if base else RunOptions()
        for key, raw in x.items():
            if key not in cls.X_KEYS:
                raise PPPError(
                    f"unknown -x option {key!r}: expected one of {', '.join(cls.X_KEYS)}"
                )
            value = raw.strip()
            if key in ("shard", "tenant"):
                items = [v.strip() for v in value.split(",") if v.strip()]
                if not items:
                    raise PPPError(f"-x {key}= needs at least one name")
                setattr(opts, key + "s", items)
            elif key in ("fail_fast", "render", "refresh", "verbose"):
                setattr(opts, key, _boolean(key, value))
            elif key in ("jobs", "jobs_per_shard"):
                if not value.isdigit() or not 1 <= int(value) <= 64:
                    raise PPPError(f"-x {key}={value!r}: expected a number from 1 to 64")
                setattr(opts, key, int(value))
            elif key == "lock":
                if value not in ("wait", "skip"):
                    raise PPPError(f"-x lock={value!r}: expected wait or skip")
                opts.lock = value
            elif key in ("lock_timeout", "statement_timeout"):
                setattr(opts, key, _seconds(key, value))
            elif key == "lock_timeout_start":
                opts.lock_timeout_start = _seconds(key, value, lo=0.001)
            elif key == "retries":
                if not value.isdigit() or int(value) > 100:
                    raise PPPError(f"-x retries={value!r}: expected a number from 0 to 100")
                opts.retries = int(value)
            elif key == "report":
                if not value:
                    raise PPPError("-x report= needs a file name (e.g. -x report=run.html)")
                opts.report = value
            elif key == "output":
                if value not in ("auto", "plain", "rich", "json", "quiet"):
                    raise PPPError(
                        f"-x output={value!r}: expected auto, plain, rich, json or quiet"
                    )
                opts.output = value
            else:
                setattr(opts, key, value)
        return opts


def _seconds(key: str, value: str, lo: float = 0.0) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not lo <= seconds <= 86_400:
        raise PPPError(f"-x {key}={value!r}: expected a number of seconds ({lo:g}-86400)")
    return seconds


def _boolean(key: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise PPPError(f"-x {key}={value!r}: expected true or false")
