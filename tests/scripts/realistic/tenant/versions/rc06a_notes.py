"""notes_0 .. notes_7 (one branch: written in parallel with the audit tables)"""

import sqlalchemy as sa
from alembic import op

revision = "rc06a"
down_revision = "rc05"
branch_labels = None
depends_on = None

KINDS = range(8)


def upgrade() -> None:
    for n in KINDS:
        op.create_table(
            f"notes_{n}",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
            sa.Column("author_id", sa.Integer, sa.ForeignKey("shared_rt.users.id")),
            sa.Column("body", sa.Text, nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()")),
        )


def downgrade() -> None:
    for n in reversed(KINDS):
        op.drop_table(f"notes_{n}")
