"""items.name unique: fails for a tenant whose data has duplicates"""

from alembic import op

revision = "f002"
down_revision = "f001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_unique_constraint("uq_items_name", "items", ["name"])


def downgrade() -> None:
    op.drop_constraint("uq_items_name", "items")
