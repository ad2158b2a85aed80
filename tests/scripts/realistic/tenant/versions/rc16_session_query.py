"""the accounts' moods, read with Session.query, logged (runs online)

Like application data migrations do, it reads through an ORM Session on the migration's
connection. It also appends a line to the file named by PPP_RC_EFFECTS, when set: an effect
outside the database that the tests count (its code must run once per tenant, plus at most
once while PPP finds out it cannot be rendered).
"""

import os

import sqlalchemy as sa
from alembic import op
from sqlalchemy.orm import Session

revision = "rc16"
down_revision = "rc15"
branch_labels = None
depends_on = None

accounts = sa.table("accounts", sa.column("id", sa.Integer), sa.column("mood", sa.Text))


def upgrade() -> None:
    bind = op.get_bind()
    effects = os.environ.get("PPP_RC_EFFECTS")
    if effects:
        with open(effects, "a") as out:
            out.write(f"rc16 {bind.dialect.default_schema_name}\n")
    moods = Session(bind).query(accounts.c.mood).filter(accounts.c.id <= 3).count()
    op.execute(
        sa.text(
            "INSERT INTO migration_log (revision, default_schema, detail) VALUES ('rc16', :s, :d)"
        ).bindparams(s=bind.dialect.default_schema_name, d=f"moods={moods}")
    )


def downgrade() -> None:
    op.execute("DELETE FROM migration_log WHERE revision = 'rc16'")
