"""posts: a foreign key to shared_t.users and a trigger calling shared_t.touch()"""

from alembic import op

revision = "st01"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE posts (id integer PRIMARY KEY, "
        "author_id integer NOT NULL REFERENCES shared_t.users (id), "
        "title text NOT NULL, updated_at timestamptz)"
    )
    op.execute(
        "CREATE TRIGGER posts_touch BEFORE INSERT OR UPDATE ON posts "
        "FOR EACH ROW EXECUTE FUNCTION shared_t.touch()"
    )


def downgrade() -> None:
    op.execute("DROP TABLE posts")
