"""Catalog for release pipelines: tenant tags and staged rollouts.

Revision ID: b41e7d2a9c53
Revises: 8ddbcb8a92cf
Create Date: 2026-12-06 10:50:00.000000

A structural veneer revision (runs as veneer_admin):

- ``ppp.tenants.tags``: a JSON object of string keys and string values (``tier``,
  ``region``, ...), set by ``ppp tenant tag``, ``ppp tenant create --tag`` or an onboarding
  revision; a rollout's stage selects tenants by them. A GIN index serves ``tags @> ...``;
- ``ppp.rollouts``: one row per staged rollout (``ppp migrate --rollout FILE``): its stages
  as resolved when it started (each tenant in exactly one), the tenant chain's heads then,
  where it stands and why it halted. At most one rollout is open (running or halted) at a
  time. Admin-only, like the rest of the catalog.
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

from ppp_env.errors import PPPError
from ppp_env.identifiers import quote_ident
from ppp_env.veneer.env import current_settings

# revision identifiers, used by Alembic.
revision: str = "b41e7d2a9c53"
down_revision: str | Sequence[str] | None = "8ddbcb8a92cf"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    app = quote_ident(current_settings().veneer.app_role)
    op.execute(
        "ALTER TABLE ppp.tenants ADD COLUMN tags jsonb NOT NULL DEFAULT '{}' "
        "CONSTRAINT tenants_tags_check CHECK (jsonb_typeof(tags) = 'object')"
    )
    op.execute("CREATE INDEX tenants_tags ON ppp.tenants USING gin (tags jsonb_path_ops)")
    op.execute(
        """
        CREATE TABLE ppp.rollouts (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            file        text NOT NULL,
            revision    text NOT NULL,
            heads       text[] NOT NULL,
            state       text NOT NULL
                        CHECK (state IN ('running', 'halted', 'done', 'aborted')),
            stage       integer NOT NULL DEFAULT 0,
            stages      jsonb NOT NULL,
            reason      text,
            started_at  timestamptz NOT NULL DEFAULT now(),
            updated_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        "CREATE UNIQUE INDEX rollouts_one_open ON ppp.rollouts ((true)) "
        "WHERE state IN ('running', 'halted')"
    )
    op.execute(f"REVOKE ALL ON ppp.rollouts FROM PUBLIC, {app}")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA ppp FROM PUBLIC, {app}")


def downgrade() -> None:
    conn = op.get_bind()
    left = conn.execute(
        text(
            "SELECT (SELECT count(*) FROM ppp.tenants WHERE tags <> '{}') AS tagged, "
            "(SELECT count(*) FROM ppp.rollouts WHERE state IN ('running', 'halted')) AS open"
        )
    ).one()
    if left.tagged or left.open:
        raise PPPError(
            "cannot take the tags and rollouts revision back: the catalog has "
            f"{left.tagged} tagged tenant(s) and {left.open} open rollout(s); remove the tags "
            "(`ppp tenant tag TENANT --remove KEY`) and end the rollout (`ppp rollout abort`) "
            "first"
        )
    op.execute("DROP TABLE ppp.rollouts")
    op.execute("DROP INDEX ppp.tenants_tags")
    op.execute("ALTER TABLE ppp.tenants DROP COLUMN tags")
