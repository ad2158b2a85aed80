"""Tenant initech on shard initech.

Revision ID: t5165e4418fb
Revises: fac2511dbcce
Create Date: 2026-11-27 11:36:58.146268

Tenant onboarding revision written by `ppp tenant add`: a branch of its own from the
veneer's revisions (no other tenant's), so revisions added on parallel branches merge
without an Alembic merge. Upgrade registers the tenant in the catalog; the veneer run then
imports its foreign tables (pending until its schema exists on its shard). Downgrade
(`alembic -n veneer downgrade t5165e4418fb@-1`, or `ppp veneer downgrade --tenant
initech`) drops those foreign tables and its catalog row, never its data on the shard.
Hosts and passwords come from the settings, never from this file.
"""

from ppp_env.veneer.onboarding import offboard, onboard

# revision identifiers, used by Alembic.
revision = 't5165e4418fb'
down_revision = 'fac2511dbcce'
branch_labels = None
depends_on = None

TENANT = 'initech'
SHARD = 'initech'


def upgrade() -> None:
    onboard(TENANT, SHARD)


def downgrade() -> None:
    offboard(TENANT)
