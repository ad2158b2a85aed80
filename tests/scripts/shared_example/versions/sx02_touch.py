"""shared trigger function shared_t.touch(), safe under any search_path"""

from alembic import op

revision = "sx02"
down_revision = "sx01"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE FUNCTION shared_t.touch() RETURNS trigger LANGUAGE plpgsql "
        "SET search_path = pg_catalog AS $$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$"
    )
    op.execute(
        "CREATE TRIGGER users_touch BEFORE INSERT OR UPDATE ON shared_t.users "
        "FOR EACH ROW EXECUTE FUNCTION shared_t.touch()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER users_touch ON shared_t.users")
    op.execute("DROP FUNCTION shared_t.touch()")
