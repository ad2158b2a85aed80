"""record the number of accounts: a data migration that reads first (runs online)

It also logs the default schema SQLAlchemy reports on this connection: the tenant's,
when PPP migrates the tenant (the evidence the test reads back).
"""

import sqlalchemy as sa
from alembic import op

revision = "rc10"
down_revision = "rc09"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    count = bind.execute(sa.text("SELECT count(*) FROM accounts")).scalar()
    if count:
        op.execute(
            sa.text("UPDATE settings_kv SET value = :n WHERE key = 'account_count'").bindparams(
                n=str(count)
            )
        )
        op.execute(sa.text("UPDATE accounts SET balance = balance + :n").bindparams(n=count))
    op.execute(
        sa.text(
            "INSERT INTO migration_log (revision, default_schema, detail) VALUES ('rc10', :s, :d)"
        ).bindparams(s=bind.dialect.default_schema_name, d=f"accounts={count}")
    )


def downgrade() -> None:
    op.execute("DELETE FROM migration_log WHERE revision = 'rc10'")
    op.execute("UPDATE settings_kv SET value = 'unknown' WHERE key = 'account_count'")
