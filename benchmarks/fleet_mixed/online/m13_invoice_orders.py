"""data migration that reads from the database: invoice every order

Online only: it reads the number of open orders, then runs the invoicing statements
only when there are some. Its twin in ../renderable/ has the same effect without the read.
"""

import sqlalchemy as sa
from alembic import op

revision = "m13"
down_revision = "m12"
branch_labels = None
depends_on = None


def upgrade() -> None:
    open_orders = (
        op.get_bind().execute(sa.text("SELECT count(*) FROM orders WHERE status = 'new'")).scalar()
    )
    if open_orders:
        op.execute(
            "INSERT INTO invoices (order_id, amount) SELECT o.id, sum(l.quantity * l.price) "
            "FROM orders o JOIN order_lines l ON l.order_id = o.id WHERE o.status = 'new' "
            "GROUP BY o.id ORDER BY o.id"
        )
        op.execute("UPDATE orders SET status = 'invoiced' WHERE status = 'new'")


def downgrade() -> None:
    op.execute("DELETE FROM invoices")
    op.execute("UPDATE orders SET status = 'new'")
