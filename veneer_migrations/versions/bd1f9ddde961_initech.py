"""Tenant initech on shard initech.

Revision ID: bd1f9ddde961
Revises: ed28b9adc793
Create Date: 2026-11-26 14:55:48.145195

Tenant onboarding revision written by `ppp tenant add`. Upgrade registers the tenant in
the catalog and imports its foreign tables into the veneer (pending until its schema
exists on its shard); downgrade drops those foreign tables and its catalog row, never its
data on the shard. Hosts and passwords come from the settings, never from this file.
"""

from ppp_env.tenant_revision import offboard, onboard

# revision identifiers, used by Alembic.
revision = 'bd1f9ddde961'
down_revision = 'ed28b9adc793'
branch_labels = None
depends_on = None

TENANT = 'initech'
SHARD = 'initech'


def upgrade() -> None:
    onboard(TENANT, SHARD)


def downgrade() -> None:
    offboard(TENANT)
