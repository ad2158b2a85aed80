"""Where a tenant created at runtime goes when no shard is named: ``PPP_PLACEMENT``.

``fewest`` (the default): the shard with the fewest tenants in the catalog (removed ones not
counted), ties broken by name. ``round_robin``: the shard after the one that received the
most recently created tenant, in name order. Only shards both in the settings and in the
catalog are candidates.
"""

from __future__ import annotations

import os

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ppp_env.errors import PPPError
from ppp_env.settings import Settings

POLICIES = ("fewest", "round_robin")
ENV_VAR = "PPP_PLACEMENT"


def placement_policy(value: str | None = None) -> str:
    """The policy named by ``value`` or ``PPP_PLACEMENT`` (default ``fewest``)."""
    raw = (value if value is not None else os.environ.get(ENV_VAR, "")).strip() or "fewest"
    if raw not in POLICIES:
        raise PPPError(f"{ENV_VAR}={raw!r}: expected one of {', '.join(POLICIES)}")
    return raw


def choose_shard(conn: Connection, settings: Settings, policy: str | None = None) -> str:
    """The shard for a new tenant under ``policy`` (the catalog read on ``conn``)."""
    policy = placement_policy(policy)
    rows = conn.execute(
        text(
            "SELECT s.name, count(t.schema) FILTER (WHERE t.state <> 'removed') AS n, "
            "max(t.created_at) AS last FROM ppp.shards s "
            "LEFT JOIN ppp.tenants t ON t.shard = s.name "
            'GROUP BY s.name ORDER BY s.name COLLATE "C"'
        )
    ).all()
    candidates = [r for r in rows if r.name in settings.shards]
    if not candidates:
        raise PPPError(
            "no shard to place the tenant on: the catalog has none of PPP_SHARDS "
            f"({', '.join(settings.shards) or 'none'}); run `alembic -n veneer upgrade head`"
        )
    if policy == "fewest":
        return str(min(candidates, key=lambda r: (r.n, r.name)).name)
    names = [r.name for r in candidates]
    dated = [r for r in candidates if r.last is not None]
    if not dated:
        return str(names[0])
    latest = max(dated, key=lambda r: r.last).name
    return str(names[(names.index(latest) + 1) % len(names)])
