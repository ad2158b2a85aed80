"""data migration: seed customers and their orders"""

import sqlalchemy as sa
from alembic import op

revision = "b005"
down_revision = "b004"
branch_labels = None
depends_on = None

customers = sa.table(
    "customers",
    sa.column("name", sa.Text),
    sa.column("email", sa.Text),
    sa.column("country", sa.Text),
)


def upgrade() -> None:
    op.bulk_insert(
        customers,
        [
            {"name": "Ernest Hemingway", "email": "ernest@example.com", "country": "US"},
            {"name": "Virginia Woolf", "email": "virginia@example.com", "country": "GB"},
        ],
    )
    op.execute("INSERT INTO orders (customer_id, total) SELECT id, 42.00 FROM customers")
    op.execute("UPDATE customers SET country = 'US' WHERE country IS NULL")


def downgrade() -> None:
    op.execute("DELETE FROM orders")
    op.execute("DELETE FROM customers")
