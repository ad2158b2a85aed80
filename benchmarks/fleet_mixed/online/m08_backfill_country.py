"""data migration that reads from the database: backfill customers.country

Online only: it asks the tenant's database how many customers it has, then decides in
Python. Alembic's offline mode cannot answer the SELECT, so PPP cannot render this
revision once for all tenants. Its twin in ../renderable/ has the same effect in SQL.
"""

import sqlalchemy as sa
from alembic import op

revision = "m08"
down_revision = "m07"
branch_labels = None
depends_on = None


def upgrade() -> None:
    count = op.get_bind().execute(sa.text("SELECT count(*) FROM customers")).scalar()
    country = "US" if count and count < 100 else "ZZ"
    op.execute(
        sa.text("UPDATE customers SET country = :country WHERE country IS NULL").bindparams(
            country=country
        )
    )


def downgrade() -> None:
    op.execute("UPDATE customers SET country = NULL")
