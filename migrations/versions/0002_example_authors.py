"""example authors (data migration)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

The original example's rows, in every tenant.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AUTHORS = [
    {"first_name": "Ernest", "last_name": "Hemingway"},
    {"first_name": "Virginia", "last_name": "Woolf"},
    {"first_name": "Toni", "last_name": "Morrison"},
]

authors = sa.table("authors", sa.column("first_name", sa.Text), sa.column("last_name", sa.Text))


def upgrade() -> None:
    op.bulk_insert(authors, AUTHORS)


def downgrade() -> None:
    for row in AUTHORS:
        op.execute(
            authors.delete().where(
                authors.c.first_name == row["first_name"], authors.c.last_name == row["last_name"]
            )
        )
