"""customers.created_at and an index on customers (country)"""

import sqlalchemy as sa
from alembic import op

revision = "m14"
down_revision = "m13"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "customers",
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )
    op.create_index("ix_customers_country", "customers", ["country"])


def downgrade() -> None:
    op.drop_index("ix_customers_country", table_name="customers")
    op.drop_column("customers", "created_at")
