"""keep updated_at current with the shared trigger function shared_rt.set_updated_at()"""

from alembic import op

revision = "rc04"
down_revision = "rc03"
branch_labels = None
depends_on = None

TABLES = ["accounts", *(f"catalog_{n}" for n in range(10))]


def upgrade() -> None:
    for table in TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_updated_at BEFORE UPDATE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION shared_rt.set_updated_at()"
        )


def downgrade() -> None:
    for table in reversed(TABLES):
        op.execute(f"DROP TRIGGER {table}_updated_at ON {table}")
