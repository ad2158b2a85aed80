"""Tenant bluth_co on shard bluth_co.

Revision ID: a32b06708725
Revises: fac2511dbcce
Create Date: 2026-11-26 14:55:45.213864

Tenant onboarding revision written by `ppp tenant add`. Upgrade registers the tenant in
the catalog and imports its foreign tables into the veneer (pending until its schema
exists on its shard); downgrade drops those foreign tables and its catalog row, never its
data on the shard. Hosts and passwords come from the settings, never from this file.
"""

from ppp_env.tenant_revision import offboard, onboard

# revision identifiers, used by Alembic.
revision = 'a32b06708725'
down_revision = 'fac2511dbcce'
branch_labels = None
depends_on = None

TENANT = 'bluth_co'
SHARD = 'bluth_co'


def upgrade() -> None:
    onboard(TENANT, SHARD)


def downgrade() -> None:
    offboard(TENANT)
