"""data migration: invoice every order (the renderable twin of ../online/)

Without the read: with no open order both statements simply touch no row.
"""

from alembic import op

revision = "m13"
down_revision = "m12"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "INSERT INTO invoices (order_id, amount) SELECT o.id, sum(l.quantity * l.price) "
        "FROM orders o JOIN order_lines l ON l.order_id = o.id WHERE o.status = 'new' "
        "GROUP BY o.id ORDER BY o.id"
    )
    op.execute("UPDATE orders SET status = 'invoiced' WHERE status = 'new'")


def downgrade() -> None:
    op.execute("DELETE FROM invoices")
    op.execute("UPDATE orders SET status = 'new'")
