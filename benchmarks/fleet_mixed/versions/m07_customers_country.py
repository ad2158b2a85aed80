"""customers.country"""

import sqlalchemy as sa
from alembic import op

revision = "m07"
down_revision = "m06"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("customers", sa.Column("country", sa.Text, nullable=True))


def downgrade() -> None:
    op.drop_column("customers", "country")
