"""order_0 .. order_9: an account's orders of one catalog family each"""

import sqlalchemy as sa
from alembic import op

revision = "rc03"
down_revision = "rc02"
branch_labels = None
depends_on = None

FAMILIES = range(10)


def upgrade() -> None:
    for n in FAMILIES:
        op.create_table(
            f"order_{n}",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column(
                "account_id",
                sa.Integer,
                sa.ForeignKey("accounts.id", ondelete="CASCADE"),
                nullable=False,
            ),
            sa.Column("item_id", sa.Integer, sa.ForeignKey(f"catalog_{n}.id"), nullable=False),
            sa.Column("quantity", sa.Integer, nullable=False, server_default="1"),
            sa.Column("placed_at", sa.DateTime(timezone=True), server_default=sa.text("now()")),
        )
        op.create_index(f"ix_order_{n}_account_id", f"order_{n}", ["account_id"])


def downgrade() -> None:
    for n in reversed(FAMILIES):
        op.drop_table(f"order_{n}")
