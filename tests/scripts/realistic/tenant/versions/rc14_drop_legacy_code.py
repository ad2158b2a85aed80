"""catalog_*.legacy_code is no longer used: drop it (the downgrade brings it back empty)"""

import sqlalchemy as sa
from alembic import op

revision = "rc14"
down_revision = "rc13"
branch_labels = None
depends_on = None

FAMILIES = range(10)


def upgrade() -> None:
    for n in FAMILIES:
        op.drop_column(f"catalog_{n}", "legacy_code")


def downgrade() -> None:
    for n in FAMILIES:
        op.add_column(f"catalog_{n}", sa.Column("legacy_code", sa.Text))
