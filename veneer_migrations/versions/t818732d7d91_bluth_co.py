"""Tenant bluth_co on shard bluth_co.

Revision ID: t818732d7d91
Revises: fac2511dbcce
Create Date: 2026-11-27 11:36:58.141035

Tenant onboarding revision written by `ppp tenant add`: a branch of its own from the
veneer's revisions (no other tenant's), so revisions added on parallel branches merge
without an Alembic merge. Upgrade registers the tenant in the catalog; the veneer run then
imports its foreign tables (pending until its schema exists on its shard). Downgrade
(`alembic -n veneer downgrade t818732d7d91@-1`, or `ppp veneer downgrade --tenant
bluth_co`) drops those foreign tables and its catalog row, never its data on the shard.
Hosts and passwords come from the settings, never from this file.
"""

from ppp_env.veneer.onboarding import offboard, onboard

# revision identifiers, used by Alembic.
revision = 't818732d7d91'
down_revision = 'fac2511dbcce'
branch_labels = None
depends_on = None

TENANT = 'bluth_co'
SHARD = 'bluth_co'


def upgrade() -> None:
    onboard(TENANT, SHARD)


def downgrade() -> None:
    offboard(TENANT)
