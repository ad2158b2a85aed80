"""orders.status, not null with a default"""

import sqlalchemy as sa
from alembic import op

revision = "m09"
down_revision = "m08"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "orders", sa.Column("status", sa.Text, nullable=False, server_default=sa.text("'new'"))
    )


def downgrade() -> None:
    op.drop_column("orders", "status")
