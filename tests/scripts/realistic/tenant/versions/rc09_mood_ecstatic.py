"""mood gets a label: ALTER TYPE ... ADD VALUE (the downgrade rebuilds the type without it)"""

from alembic import op

revision = "rc09"
down_revision = "rc08"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TYPE mood ADD VALUE 'ecstatic' AFTER 'happy'")


def downgrade() -> None:
    # PostgreSQL cannot drop an enum label: rebuild the type, mapping the label away.
    op.execute("ALTER TYPE mood RENAME TO mood_old")
    op.execute("CREATE TYPE mood AS ENUM ('happy', 'sad', 'neutral')")
    op.execute("ALTER TABLE accounts ALTER COLUMN mood DROP DEFAULT")
    op.execute(
        "ALTER TABLE accounts ALTER COLUMN mood TYPE mood USING "
        "(CASE WHEN mood::text = 'ecstatic' THEN 'happy' ELSE mood::text END)::mood"
    )
    op.execute("ALTER TABLE accounts ALTER COLUMN mood SET DEFAULT 'neutral'")
    op.execute("DROP TYPE mood_old")
