"""accounts, owned by shared users, with a mood (an enum type in the tenant schema)"""

import sqlalchemy as sa
from alembic import op

revision = "rc01"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("owner_id", sa.Integer, sa.ForeignKey("shared_rt.users.id"), nullable=False),
        sa.Column(
            "mood",
            sa.Enum("happy", "sad", "neutral", name="mood"),
            nullable=False,
            server_default="neutral",
        ),
        sa.Column("balance", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()")),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()")),
    )
    op.create_index("ix_accounts_owner_id", "accounts", ["owner_id"])


def downgrade() -> None:
    op.drop_table("accounts")
    op.execute("DROP TYPE mood")
