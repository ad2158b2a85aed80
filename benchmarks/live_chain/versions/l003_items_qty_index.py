"""an index: CREATE INDEX blocks writes to items while it builds"""

from alembic import op

revision = "l003"
down_revision = "l002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_items_qty", "items", ["qty"])


def downgrade() -> None:
    op.drop_index("ix_items_qty", table_name="items")
