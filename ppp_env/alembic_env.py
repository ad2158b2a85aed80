"""What PPP's three Alembic environments (tenants, veneer, shared) share: the running
command's EnvironmentContext and the command's name, through Alembic's public API only."""

from __future__ import annotations

from alembic import context as alembic_context
from alembic.runtime.environment import EnvironmentContext

from ppp_env.errors import PPPError

#: Set by PPP's in-process calls: the Alembic command being run (``upgrade``, ``current``...).
COMMAND_KEY = "ppp.command"
_STEP_NAMES = {"do_stamp": "stamp", "display_version": "current"}


def environment() -> EnvironmentContext:
    """The running command's EnvironmentContext.

    ``alembic.context`` only proxies the object's methods: configure a MigrationContext
    without a connection (no database is touched; every later ``configure`` replaces it),
    whose public ``environment_context`` is the object itself.
    """
    alembic_context.configure(dialect_name="postgresql")
    env = alembic_context.get_context().environment_context
    if env is None:
        raise PPPError("no Alembic command is running (env.py runs under one)")
    return env


def command_name(env: EnvironmentContext) -> str:
    """The Alembic command this run is: ``config.attributes["ppp.command"]`` (PPP's in-process
    calls), else ``config.cmd_opts.cmd`` (Alembic's command line keeps the command function
    there), else the public name of the step function Alembic passed (other in-process
    callers of ``alembic.command``)."""
    named = env.config.attributes.get(COMMAND_KEY)
    if isinstance(named, str):
        return named
    cmd = getattr(env.config.cmd_opts, "cmd", None)
    if cmd:
        return str(cmd[0].__name__)
    fn = env.context_opts.get("fn")
    name = str(fn.__name__) if fn is not None else "unknown"
    return _STEP_NAMES.get(name, name)
