"""a renderable revision with an effect outside the database (counted by the tests)

It appends a line to the file named by PPP_RC_EFFECTS, when set: rendered once per run, its
code must run at most once per run, whatever the number of tenants and workers.
"""

import os

import sqlalchemy as sa
from alembic import op

revision = "rc18"
down_revision = "rc17"
branch_labels = None
depends_on = None


def upgrade() -> None:
    effects = os.environ.get("PPP_RC_EFFECTS")
    if effects:
        with open(effects, "a") as out:
            out.write("rc18\n")
    op.create_index("ix_accounts_archived_at", "accounts", ["archived_at"])
    op.add_column("settings_kv", sa.Column("note", sa.Text))


def downgrade() -> None:
    op.drop_column("settings_kv", "note")
    op.drop_index("ix_accounts_archived_at", table_name="accounts")
