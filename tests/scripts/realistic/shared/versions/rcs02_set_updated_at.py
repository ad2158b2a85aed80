"""shared_rt.set_updated_at(): the trigger function tenant tables call on UPDATE

Its body runs with search_path = pg_catalog (postgres_fdw's remote sessions use that, and
a trigger must not depend on the caller's path).
"""

from alembic import op

revision = "rcs02"
down_revision = "rcs01"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION shared_rt.set_updated_at() RETURNS trigger
        LANGUAGE plpgsql SET search_path = pg_catalog AS $fn$
        BEGIN
            NEW.updated_at := pg_catalog.now();
            RETURN NEW;
        END
        $fn$
        """
    )
    op.execute(
        "CREATE TRIGGER users_updated_at BEFORE UPDATE ON shared_rt.users "
        "FOR EACH ROW EXECUTE FUNCTION shared_rt.set_updated_at()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER users_updated_at ON shared_rt.users")
    op.execute("DROP FUNCTION shared_rt.set_updated_at()")
