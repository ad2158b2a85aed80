"""schema shared_t with a users table, usable by the shard's app role"""

from alembic import op

from ppp_env.identifiers import quote_ident
from ppp_env.shared.env import current_shard

revision = "sx01"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    app = quote_ident(current_shard().app_role)
    op.execute("CREATE SCHEMA shared_t")
    op.execute(
        "CREATE TABLE shared_t.users (id integer PRIMARY KEY, name text NOT NULL, "
        "updated_at timestamptz)"
    )
    op.execute(f"GRANT USAGE ON SCHEMA shared_t TO {app}")
    # ppp init's default privileges give the app role DML on every table the admin creates;
    # shared users are read-only for the application.
    op.execute(f"REVOKE ALL ON shared_t.users FROM {app}")
    op.execute(f"GRANT SELECT ON shared_t.users TO {app}")
    op.execute("INSERT INTO shared_t.users VALUES (1, 'Ernest'), (2, 'Virginia')")


def downgrade() -> None:
    op.execute("DROP TABLE shared_t.users")
    op.execute("DROP SCHEMA shared_t")
