from ppp_env.db import connection


def test_topology_is_provisioned(settings):
    for inst in settings.instances:
        with connection(inst, "app") as conn, conn.cursor() as cur:
            cur.execute("SELECT current_user, current_database()")
            assert cur.fetchone() == (inst.app_role, inst.dbname)
