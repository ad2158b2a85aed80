"""a new column: ALTER TABLE needs an ACCESS EXCLUSIVE lock on items"""

import sqlalchemy as sa
from alembic import op

revision = "l002"
down_revision = "l001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("items", sa.Column("note", sa.Text))


def downgrade() -> None:
    op.drop_column("items", "note")
