"""accounts.nickname, late in the chain, filled from the name and indexed"""

import sqlalchemy as sa
from alembic import op

revision = "rc13"
down_revision = "rc12"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("accounts", sa.Column("nickname", sa.Text))
    op.execute("UPDATE accounts SET nickname = lower(name)")
    op.create_index("ix_accounts_nickname", "accounts", ["nickname"])


def downgrade() -> None:
    op.drop_index("ix_accounts_nickname", "accounts")
    op.drop_column("accounts", "nickname")
