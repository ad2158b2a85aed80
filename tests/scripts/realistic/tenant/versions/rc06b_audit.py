"""audit_0 .. audit_7 (the other branch: written in parallel with the notes tables)"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "rc06b"
down_revision = "rc05"
branch_labels = None
depends_on = None

KINDS = range(8)


def upgrade() -> None:
    for n in KINDS:
        op.create_table(
            f"audit_{n}",
            sa.Column("id", sa.BigInteger, primary_key=True),
            sa.Column("actor_id", sa.Integer, sa.ForeignKey("shared_rt.users.id")),
            sa.Column("action", sa.Text, nullable=False),
            sa.Column("payload", postgresql.JSONB, nullable=False, server_default="{}"),
            sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()")),
        )
        op.create_index(f"ix_audit_{n}_at", f"audit_{n}", ["at"])


def downgrade() -> None:
    for n in reversed(KINDS):
        op.drop_table(f"audit_{n}")
