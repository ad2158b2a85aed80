"""items.price, set from a value read from the database (so it must run online)"""

import sqlalchemy as sa
from alembic import op

revision = "f003"
down_revision = "f002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("items", sa.Column("price", sa.Integer))
    count = op.get_bind().execute(sa.text("SELECT count(*) FROM items")).scalar()
    op.execute(sa.text("UPDATE items SET price = :n").bindparams(n=count))


def downgrade() -> None:
    op.drop_column("items", "price")
