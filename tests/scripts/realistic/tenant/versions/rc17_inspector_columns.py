"""accounts.archived_at, added only when the Inspector does not list it (runs online)"""

import sqlalchemy as sa
from alembic import op

revision = "rc17"
down_revision = "rc16"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = [c["name"] for c in sa.inspect(op.get_bind()).get_columns("accounts")]
    if "archived_at" not in columns:
        op.add_column("accounts", sa.Column("archived_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("accounts", "archived_at")
