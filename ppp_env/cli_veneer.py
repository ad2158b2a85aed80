"""``ppp veneer ...`` and ``ppp tenant ...``: the veneer's wiring and the tenant catalog."""

from __future__ import annotations

import click


@click.group("veneer")
def veneer_group() -> None:
    """The veneer: catalog, foreign servers, per-tenant foreign tables."""


@click.group("tenant")
def tenant_group() -> None:
    """Tenants: add, list, remove."""
