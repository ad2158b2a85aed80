"""ledger_0 .. ledger_9: bookings per account, one ledger per business unit"""

import sqlalchemy as sa
from alembic import op

revision = "rc05"
down_revision = "rc04"
branch_labels = None
depends_on = None

UNITS = range(10)


def upgrade() -> None:
    for n in UNITS:
        op.create_table(
            f"ledger_{n}",
            sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
            sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
            sa.Column("amount", sa.Numeric(14, 2), nullable=False),
            sa.Column("booked_on", sa.Date, nullable=False, server_default=sa.text("CURRENT_DATE")),
            sa.Column("memo", sa.Text),
        )
        op.create_index(f"ix_ledger_{n}_account_booked", f"ledger_{n}", ["account_id", "booked_on"])


def downgrade() -> None:
    for n in reversed(UNITS):
        op.drop_table(f"ledger_{n}")
