"""The catalog: shards and tenants (schema ppp).

Revision ID: fac2511dbcce
Revises:
Create Date: 2026-11-26 14:55:08.681718

A veneer revision: runs as veneer_admin in the veneer database. Schema ppp itself (home of
the version table) is made by env.py, closed to veneer_app. The foreign servers and user
mappings are not created here: every veneer run reconciles them with the settings, right
after this revision on the first run.
"""

from collections.abc import Sequence

from alembic import op

from ppp_env.identifiers import quote_ident
from ppp_env.veneer.wiring import drop_all_wiring
from ppp_env.veneer.env import current_settings

# revision identifiers, used by Alembic.
revision: str = "fac2511dbcce"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = r"^[a-z_][a-z0-9_]*$"


def upgrade() -> None:
    op.execute(
        f"""
        CREATE TABLE ppp.shards (
            name        text PRIMARY KEY CHECK (name ~ '{NAME}' AND octet_length(name) <= 63),
            host        text NOT NULL,
            port        integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
            dbname      text NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            updated_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        f"""
        CREATE TABLE ppp.tenants (
            schema          text PRIMARY KEY
                            CHECK (schema ~ '{NAME}' AND octet_length(schema) <= 63
                                   AND schema NOT IN ('public', 'information_schema', 'ppp')
                                   AND schema NOT LIKE 'pg\\_%'),
            shard           text NOT NULL REFERENCES ppp.shards (name),
            state           text NOT NULL DEFAULT 'pending'
                            CHECK (state IN ('pending', 'active', 'moving', 'removing')),
            wired_revision  text,
            created_at      timestamptz NOT NULL DEFAULT now(),
            updated_at      timestamptz NOT NULL DEFAULT now(),
            wired_at        timestamptz
        )
        """
    )
    op.execute("CREATE INDEX tenants_shard_schema_idx ON ppp.tenants (shard, schema)")
    # Default privileges would give veneer_app DML on these tables: the catalog is admin-only.
    app = quote_ident(current_settings().veneer.app_role)
    op.execute(f"REVOKE ALL ON ppp.shards, ppp.tenants FROM PUBLIC, {app}")


def downgrade() -> None:
    drop_all_wiring(op.get_bind())
    op.execute("DROP TABLE ppp.tenants")
    op.execute("DROP TABLE ppp.shards")
