"""the shard's first users, so tenant rows have owners to reference"""

import sqlalchemy as sa
from alembic import op

revision = "rcs03"
down_revision = "rcs02"
branch_labels = None
depends_on = None

users = sa.table(
    "users",
    sa.column("id", sa.Integer),
    sa.column("email", sa.Text),
    sa.column("display_name", sa.Text),
    schema="shared_rt",
)


def upgrade() -> None:
    op.bulk_insert(
        users,
        [
            {"id": i, "email": f"user{i}@example.com", "display_name": f"User {i}"}
            for i in range(1, 6)
        ],
    )


def downgrade() -> None:
    op.execute("DELETE FROM shared_rt.users WHERE id BETWEEN 1 AND 5")
