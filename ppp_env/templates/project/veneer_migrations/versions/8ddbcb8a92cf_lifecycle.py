"""Catalog for the tenant lifecycle: more states, origins, moves, placement for the app.

Revision ID: 8ddbcb8a92cf
Revises: fac2511dbcce
Create Date: 2026-11-27 12:40:00.000000

A structural veneer revision (runs as veneer_admin; tenant onboarding revisions written after
it branch from it):

- ``ppp.tenants.state`` gains ``provisioning`` (created at runtime, not usable yet) and
  ``removed`` (unwired, its data kept on its shard unless dropped);
- ``ppp.tenants.origin``: ``revision`` (an onboarding revision registers it) or ``runtime``
  (``ppp tenant create`` / ``ppp_env.lifecycle.create_tenant``); one never claims the other's;
- ``ppp.moves``: one row per tenant move under way (admin-only, like the rest of the catalog);
- a trigger that notifies channel ``ppp_placement`` with the tenant's schema whenever a
  tenant is added, removed, or changes shard or state;
- ``ppp.placement()``: every tenant's shard and state, SECURITY DEFINER, executable by the
  veneer's app role only (it gets USAGE on schema ``ppp`` for that, and no privilege on any
  table there), so the application's router reads placement without reading the catalog.
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

from ppp_env.errors import PPPError
from ppp_env.identifiers import quote_ident
from ppp_env.veneer.env import current_settings

# revision identifiers, used by Alembic.
revision: str = "8ddbcb8a92cf"
down_revision: str | Sequence[str] | None = "fac2511dbcce"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATES = "'provisioning', 'pending', 'active', 'moving', 'removing', 'removed'"
OLD_STATES = "'pending', 'active', 'moving', 'removing'"


def upgrade() -> None:
    app = quote_ident(current_settings().veneer.app_role)
    op.execute("ALTER TABLE ppp.tenants DROP CONSTRAINT IF EXISTS tenants_state_check")
    op.execute(
        f"ALTER TABLE ppp.tenants ADD CONSTRAINT tenants_state_check CHECK (state IN ({STATES}))"
    )
    op.execute(
        "ALTER TABLE ppp.tenants ADD COLUMN origin text NOT NULL DEFAULT 'revision' "
        "CONSTRAINT tenants_origin_check CHECK (origin IN ('revision', 'runtime'))"
    )
    op.execute(
        """
        CREATE TABLE ppp.moves (
            schema      text PRIMARY KEY REFERENCES ppp.tenants (schema) ON DELETE CASCADE,
            source      text NOT NULL,
            target      text NOT NULL,
            mode        text NOT NULL CHECK (mode IN ('block', 'online')),
            step        text NOT NULL,
            error       text,
            started_at  timestamptz NOT NULL DEFAULT now(),
            updated_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE FUNCTION ppp.notify_placement() RETURNS trigger
        LANGUAGE plpgsql SET search_path = pg_catalog AS $ppp$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_catalog.pg_notify('ppp_placement', OLD.schema);
            ELSE
                PERFORM pg_catalog.pg_notify('ppp_placement', NEW.schema);
            END IF;
            RETURN NULL;
        END
        $ppp$
        """
    )
    op.execute(
        "CREATE TRIGGER tenants_placement_notify "
        "AFTER INSERT OR DELETE OR UPDATE OF shard, state ON ppp.tenants "
        "FOR EACH ROW EXECUTE FUNCTION ppp.notify_placement()"
    )
    op.execute(
        """
        CREATE FUNCTION ppp.placement() RETURNS TABLE (schema text, shard text, state text)
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $ppp$
            SELECT t.schema, t.shard, t.state FROM ppp.tenants t
        $ppp$
        """
    )
    op.execute("REVOKE ALL ON FUNCTION ppp.placement() FROM PUBLIC")
    op.execute("REVOKE ALL ON FUNCTION ppp.notify_placement() FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION ppp.placement() TO {app}")
    # USAGE on the schema lets the app role call the function; every table in it stays
    # closed (default privileges would grant DML on what veneer_admin creates there).
    op.execute(f"GRANT USAGE ON SCHEMA ppp TO {app}")
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA ppp FROM PUBLIC, {app}")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA ppp FROM PUBLIC, {app}")


def downgrade() -> None:
    conn = op.get_bind()
    left = conn.execute(
        text(
            "SELECT (SELECT count(*) FROM ppp.tenants WHERE origin = 'runtime') AS runtime, "
            "(SELECT count(*) FROM ppp.moves) AS moves, "
            f"(SELECT count(*) FROM ppp.tenants WHERE state NOT IN ({OLD_STATES})) AS states"
        )
    ).one()
    if left.runtime or left.moves or left.states:
        raise PPPError(
            "cannot take the lifecycle revision back: the catalog has "
            f"{left.runtime} tenant(s) created at runtime, {left.moves} move(s) under way and "
            f"{left.states} tenant(s) in state provisioning or removed; remove them first "
            "(`ppp tenant list`, `ppp tenant remove`)"
        )
    app = quote_ident(current_settings().veneer.app_role)
    op.execute(f"REVOKE ALL ON SCHEMA ppp FROM {app}")
    op.execute("DROP FUNCTION ppp.placement()")
    op.execute("DROP TRIGGER tenants_placement_notify ON ppp.tenants")
    op.execute("DROP FUNCTION ppp.notify_placement()")
    op.execute("DROP TABLE ppp.moves")
    op.execute("ALTER TABLE ppp.tenants DROP COLUMN origin")
    op.execute("ALTER TABLE ppp.tenants DROP CONSTRAINT tenants_state_check")
    op.execute(
        "ALTER TABLE ppp.tenants ADD CONSTRAINT tenants_state_check "
        f"CHECK (state IN ({OLD_STATES}))"
    )
