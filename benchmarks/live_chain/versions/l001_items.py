"""items, seeded: the table the application reads and writes during the benchmark"""

import sqlalchemy as sa
from alembic import op

revision = "l001"
down_revision = None
branch_labels = None
depends_on = None

#: Rows per tenant (benchmarks/live_traffic.py: SEED_ROWS, the ids its application hits).
ROWS = 5000


def upgrade() -> None:
    op.create_table(
        "items",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("qty", sa.Integer, nullable=False),
    )
    op.execute(
        "INSERT INTO items (name, qty) "
        f"SELECT 'item ' || g, mod(g, 100) FROM generate_series(1, {ROWS}) AS g"
    )


def downgrade() -> None:
    op.drop_table("items")
