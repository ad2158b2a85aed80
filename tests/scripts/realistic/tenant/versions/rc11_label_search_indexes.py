"""a lower(label) search index on every catalog table, found by reflection

Like search-trigger helpers do, it asks SQLAlchemy for the table names of the default
schema: that must be the tenant being migrated, not public.
"""

import sqlalchemy as sa
from alembic import op

revision = "rc11"
down_revision = "rc10"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    schema = bind.dialect.default_schema_name
    tables = sorted(t for t in sa.inspect(bind).get_table_names() if t.startswith("catalog_"))
    for table in tables:
        op.create_index(f"ix_{table}_label_lower", table, [sa.text("lower(label)")])
    op.execute(
        sa.text(
            "INSERT INTO migration_log (revision, default_schema, detail) VALUES ('rc11', :s, :d)"
        ).bindparams(s=schema, d=",".join(tables))
    )


def downgrade() -> None:
    for n in range(10):
        op.execute(f"DROP INDEX IF EXISTS ix_catalog_{n}_label_lower")
    op.execute("DELETE FROM migration_log WHERE revision = 'rc11'")
