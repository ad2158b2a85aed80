"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

A shared revision: PPP applies it ONCE PER SHARD DATABASE, as the shard's {db}_admin role,
with search_path = public. Schema-qualify every object (shared.users, not users), and give
functions `SET search_path = pg_catalog` or fully qualified bodies (postgres_fdw sessions
run with search_path = pg_catalog). Tenant schemas are owned by the same admin role, so
their foreign keys to shared tables need no extra grant; the application role does need
USAGE on a shared schema: grant it to ppp_env.shared.current_shard().app_role.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
${imports if imports else ""}
from ppp_env.identifiers import quote_ident
from ppp_env.shared.env import current_shard

# revision identifiers, used by Alembic.
revision: str = ${repr(up_revision)}
down_revision: Union[str, Sequence[str], None] = ${repr(down_revision)}
branch_labels: Union[str, Sequence[str], None] = ${repr(branch_labels)}
depends_on: Union[str, Sequence[str], None] = ${repr(depends_on)}


def upgrade() -> None:
    """Upgrade the shared objects of the shard current_shard()."""
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    """Downgrade the shared objects of the shard current_shard()."""
    ${downgrades if downgrades else "pass"}
