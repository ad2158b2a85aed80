"""catalog_0 .. catalog_9: ten similar product families, created by shared users"""

import sqlalchemy as sa
from alembic import op

revision = "rc02"
down_revision = "rc01"
branch_labels = None
depends_on = None

FAMILIES = range(10)


def upgrade() -> None:
    for n in FAMILIES:
        op.create_table(
            f"catalog_{n}",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("code", sa.String(32), nullable=False, unique=True),
            sa.Column("label", sa.Text, nullable=False),
            sa.Column("legacy_code", sa.Text),
            sa.Column("price", sa.Numeric(12, 2), nullable=False, server_default="0"),
            sa.Column("created_by", sa.Integer, sa.ForeignKey("shared_rt.users.id")),
            sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()")),
        )
        op.create_index(f"ix_catalog_{n}_label", f"catalog_{n}", ["label"])


def downgrade() -> None:
    for n in reversed(FAMILIES):
        op.drop_table(f"catalog_{n}")
