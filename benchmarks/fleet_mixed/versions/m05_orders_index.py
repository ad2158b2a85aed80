"""index on orders (customer_id, created_at)"""

from alembic import op

revision = "m05"
down_revision = "m04"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_orders_customer_created", "orders", ["customer_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_orders_customer_created", table_name="orders")
