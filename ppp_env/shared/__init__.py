"""Shared migrations: objects every tenant of a shard database shares (``alembic -n shared``)."""

from __future__ import annotations

from ppp_env.shared.env import current_shard

__all__ = ["current_shard"]
