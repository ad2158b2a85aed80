"""data migration: an order per customer, a line per product"""

from alembic import op

revision = "m12"
down_revision = "m11"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("INSERT INTO orders (customer_id) SELECT id FROM customers ORDER BY id")
    op.execute(
        "INSERT INTO order_lines (order_id, product_id, quantity, price) "
        "SELECT o.id, p.id, 2, p.price FROM orders o CROSS JOIN products p ORDER BY o.id, p.id"
    )


def downgrade() -> None:
    op.execute("DELETE FROM order_lines")
    op.execute("DELETE FROM orders")
