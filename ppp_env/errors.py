"""The one error type for what the user (or the environment) got wrong.

The CLI turns it into ``Error: <message>`` and exit code 1; a traceback only with
``--traceback`` or ``PPP_TRACEBACK=1``.
"""

from __future__ import annotations


class PPPError(Exception):
    """A problem the user can fix: a bad setting, an unknown tenant, an unreachable shard."""
