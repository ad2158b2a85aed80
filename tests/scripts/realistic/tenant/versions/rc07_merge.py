"""merge the notes and audit branches; link notes to their audit entries"""

import sqlalchemy as sa
from alembic import op

revision = "rc07"
down_revision = ("rc06a", "rc06b")
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "note_audit_links",
        sa.Column("note_id", sa.Integer, sa.ForeignKey("notes_0.id"), primary_key=True),
        sa.Column("audit_id", sa.BigInteger, sa.ForeignKey("audit_0.id"), primary_key=True),
    )


def downgrade() -> None:
    op.drop_table("note_audit_links")
