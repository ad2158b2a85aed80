"""data migration: backfill customers.country (the renderable twin of ../online/)

The same decision as the online revision, taken by the server inside one UPDATE, so
Alembic's offline mode can render it and PPP sends it once per tenant.
"""

from alembic import op

revision = "m08"
down_revision = "m07"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "UPDATE customers SET country = CASE WHEN (SELECT count(*) FROM customers) "
        "BETWEEN 1 AND 99 THEN 'US' ELSE 'ZZ' END WHERE country IS NULL"
    )


def downgrade() -> None:
    op.execute("UPDATE customers SET country = NULL")
