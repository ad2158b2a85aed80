"""products"""

import sqlalchemy as sa
from alembic import op

revision = "m02"
down_revision = "m01"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "products",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("sku", sa.Text, nullable=False, unique=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("price", sa.Numeric(12, 2), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("products")
