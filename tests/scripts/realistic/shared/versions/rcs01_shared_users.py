"""shared_rt: the shard-wide users table that tenant tables reference

The application role may read it (tenant foreign keys and joins), not change it.
"""

import sqlalchemy as sa
from alembic import op

from ppp_env.identifiers import quote_ident

revision = "rcs01"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    from ppp_env.shared.env import current_shard

    app = quote_ident(current_shard().app_role)
    op.execute("CREATE SCHEMA shared_rt")
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.Text, nullable=False, unique=True),
        sa.Column("display_name", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()")),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()")),
        schema="shared_rt",
    )
    op.execute(f"GRANT USAGE ON SCHEMA shared_rt TO {app}")
    # ppp init's default privileges give the app role DML on every table the admin
    # creates: shared users are read-only for the application.
    op.execute(f"REVOKE ALL ON shared_rt.users FROM {app}")
    op.execute(f"GRANT SELECT ON shared_rt.users TO {app}")


def downgrade() -> None:
    op.drop_table("users", schema="shared_rt")
    op.execute("DROP SCHEMA shared_rt")
