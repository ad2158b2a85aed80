"""tag_0 .. tag_5: per-account labels"""

import sqlalchemy as sa
from alembic import op

revision = "rc12"
down_revision = "rc11"
branch_labels = None
depends_on = None

GROUPS = range(6)


def upgrade() -> None:
    for n in GROUPS:
        op.create_table(
            f"tag_{n}",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
            sa.Column("name", sa.String(64), nullable=False),
            sa.UniqueConstraint("account_id", "name", name=f"uq_tag_{n}_account_name"),
        )


def downgrade() -> None:
    for n in reversed(GROUPS):
        op.drop_table(f"tag_{n}")
