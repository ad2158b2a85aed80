"""data migration: fill the new column on every row"""

from alembic import op

revision = "l004"
down_revision = "l003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE items SET note = 'qty ' || qty WHERE note IS NULL")


def downgrade() -> None:
    op.execute("UPDATE items SET note = NULL")
