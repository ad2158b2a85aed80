"""index on order_lines (product_id)"""

from alembic import op

revision = "m10"
down_revision = "m09"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_order_lines_product", "order_lines", ["product_id"])


def downgrade() -> None:
    op.drop_index("ix_order_lines_product", table_name="order_lines")
