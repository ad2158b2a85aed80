"""items, and a row per run (a tenant migrated twice would fail on CREATE TABLE)"""

import sqlalchemy as sa
from alembic import op

revision = "f001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("items", sa.Column("name", sa.Text, nullable=False))
    op.create_table("runs", sa.Column("n", sa.Integer))
    op.execute("INSERT INTO runs VALUES (1)")
    op.execute("SELECT pg_sleep(0.02)")


def downgrade() -> None:
    op.drop_table("runs")
    op.drop_table("items")
