"""data migration: seed customers and products"""

import sqlalchemy as sa
from alembic import op

revision = "m06"
down_revision = "m05"
branch_labels = None
depends_on = None

customers = sa.table("customers", sa.column("name", sa.Text), sa.column("email", sa.Text))
products = sa.table(
    "products",
    sa.column("sku", sa.Text),
    sa.column("name", sa.Text),
    sa.column("price", sa.Numeric(12, 2)),
)


def upgrade() -> None:
    op.bulk_insert(
        customers,
        [
            {"name": "Ernest Hemingway", "email": "ernest@example.com"},
            {"name": "Virginia Woolf", "email": "virginia@example.com"},
            {"name": "Jorge Luis Borges", "email": "jorge@example.com"},
        ],
    )
    op.bulk_insert(
        products,
        [
            {"sku": "PEN-1", "name": "Fountain pen", "price": 25},
            {"sku": "INK-1", "name": "Ink, blue", "price": 4},
        ],
    )


def downgrade() -> None:
    op.execute("DELETE FROM products")
    op.execute("DELETE FROM customers")
