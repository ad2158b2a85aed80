<%
    tenant = context.get("tenant")
    shard = context.get("shard")
    tags = context.get("tags") or {}
%>\
% if tenant:
"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Tenant onboarding revision written by `ppp tenant add`: a branch of its own from the
veneer's revisions (no other tenant's), so revisions added on parallel branches merge
without an Alembic merge. Upgrade registers the tenant in the catalog; the veneer run then
imports its foreign tables (pending until its schema exists on its shard). Downgrade
(`alembic -n veneer downgrade ${up_revision}@-1`, or `ppp veneer downgrade --tenant
${tenant}`) drops those foreign tables and its catalog row, never its data on the shard.
Hosts and passwords come from the settings, never from this file.
"""

from ppp_env.veneer.onboarding import offboard, onboard

# revision identifiers, used by Alembic.
revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}

TENANT = ${repr(tenant)}
SHARD = ${repr(shard)}
% if tags:
TAGS = ${repr(tags)}
% endif


def upgrade() -> None:
% if tags:
    onboard(TENANT, SHARD, tags=TAGS)
% else:
    onboard(TENANT, SHARD)
% endif


def downgrade() -> None:
    offboard(TENANT)
% else:
"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

A veneer revision: runs as veneer_admin in the veneer database. Never put a host or a
password here; those come from the settings (ppp_env.veneer.env.current_settings()).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}

# revision identifiers, used by Alembic.
revision: str = ${repr(up_revision)}
down_revision: str | Sequence[str] | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
% endif
