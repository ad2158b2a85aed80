"""Tenant cyberdyne on shard cyberdyne.

Revision ID: ed28b9adc793
Revises: a32b06708725
Create Date: 2026-11-26 14:55:46.677357

Tenant onboarding revision written by `ppp tenant add`. Upgrade registers the tenant in
the catalog and imports its foreign tables into the veneer (pending until its schema
exists on its shard); downgrade drops those foreign tables and its catalog row, never its
data on the shard. Hosts and passwords come from the settings, never from this file.
"""

from ppp_env.tenant_revision import offboard, onboard

# revision identifiers, used by Alembic.
revision = 'ed28b9adc793'
down_revision = 'a32b06708725'
branch_labels = None
depends_on = None

TENANT = 'cyberdyne'
SHARD = 'cyberdyne'


def upgrade() -> None:
    onboard(TENANT, SHARD)


def downgrade() -> None:
    offboard(TENANT)
