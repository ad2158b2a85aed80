"""``ppp migrate`` and ``ppp status``: the whole fleet's migrations and where each tenant is."""

from __future__ import annotations

import click

from ppp_env.errors import PPPError


@click.command("migrate")
def migrate() -> None:
    """Veneer upgrade, tenant upgrade on every shard, veneer refresh."""
    raise PPPError("`ppp migrate` has not landed yet")


@click.command("status")
def status() -> None:
    """Per tenant: shard, revision, head or behind, veneer in step or stale."""
    raise PPPError("`ppp status` has not landed yet")
