"""settings, a migration log, and seed rows: a data migration that renders offline

Typed sa.table columns make bulk_insert renderable, so this revision is still sent as SQL.
"""

import sqlalchemy as sa
from alembic import op

revision = "rc08"
down_revision = "rc07"
branch_labels = None
depends_on = None

mood = sa.Enum("happy", "sad", "neutral", name="mood", create_type=False)

accounts = sa.table(
    "accounts",
    sa.column("id", sa.Integer),
    sa.column("name", sa.Text),
    sa.column("owner_id", sa.Integer),
    sa.column("mood", mood),
)
settings_kv = sa.table("settings_kv", sa.column("key", sa.Text), sa.column("value", sa.Text))


def upgrade() -> None:
    op.create_table(
        "settings_kv",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "migration_log",
        sa.Column("revision", sa.Text, primary_key=True),
        sa.Column("default_schema", sa.Text),
        sa.Column("detail", sa.Text),
    )
    op.bulk_insert(
        accounts,
        [
            {"id": 1, "name": "Alpha", "owner_id": 1, "mood": "happy"},
            {"id": 2, "name": "Beta", "owner_id": 2, "mood": "sad"},
            {"id": 3, "name": "Gamma", "owner_id": 3, "mood": "neutral"},
        ],
    )
    op.execute("SELECT setval(pg_get_serial_sequence('accounts', 'id'), 3)")
    op.bulk_insert(
        settings_kv,
        [
            {"key": "currency", "value": "EUR"},
            {"key": "account_count", "value": "unknown"},
            {"key": "theme", "value": "light"},
        ],
    )
    op.execute(settings_kv.update().where(settings_kv.c.key == "theme").values(value="dark"))


def downgrade() -> None:
    op.drop_table("migration_log")
    op.drop_table("settings_kv")
    op.execute("DELETE FROM accounts WHERE id IN (1, 2, 3)")
