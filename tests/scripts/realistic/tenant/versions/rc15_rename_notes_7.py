"""notes_7 becomes memos"""

from alembic import op

revision = "rc15"
down_revision = "rc14"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.rename_table("notes_7", "memos")


def downgrade() -> None:
    op.rename_table("memos", "notes_7")
