"""`ppp init` / `ppp teardown` against the session's real servers.

Each test provisions its own databases and roles (other names, other passwords) on the
same servers through ``topology.variant``, and tears them down afterwards, so the
session's provisioned example databases are never dropped.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
from collections.abc import Iterator

import psycopg2
import psycopg2.errors
import pytest
from click.testing import CliRunner, Result

from ppp_env.cli.main import cli
from ppp_env.db import connection
from ppp_env.errors import PPPError
from ppp_env.servers.provision import provision_instance, teardown
from ppp_env.settings import Instance, Settings, env_prefix, load_settings

INSTANCES = ["veneer", "bluth_co", "cyberdyne", "initech"]
_tags = itertools.count(1)


def ppp(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


def out_lines(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def prefix(name: str) -> str:
    return env_prefix("veneer" if name == "veneer" else "shard", name)


class Variant:
    """Other databases and roles on the session's servers; torn down at the end."""

    def __init__(self, topology, **extra: str) -> None:
        self.topology = topology
        tag = f"t{next(_tags)}{secrets.token_hex(2)}"
        overrides: dict[str, str] = {}
        for name in INSTANCES:
            p = prefix(name)
            overrides[f"{p}DB"] = f"{tag}_{name}"
            overrides[f"{p}ADMIN_PASSWORD"] = f"adm-{secrets.token_urlsafe(12)}"
            overrides[f"{p}APP_PASSWORD"] = f"app-{secrets.token_urlsafe(12)}"
        overrides.update(extra)
        self.env = topology.variant(**overrides)

    @property
    def settings(self) -> Settings:
        return load_settings(environ=self.env)

    def passwords(self) -> list[str]:
        return [v for k, v in self.env.items() if k.endswith("_PASSWORD")]

    def cleanup(self) -> None:
        with contextlib.suppress(PPPError):
            teardown(self.settings)


@pytest.fixture
def make_variant(topology) -> Iterator:
    made: list[Variant] = []

    def make(**extra: str) -> Variant:
        v = Variant(topology, **extra)
        made.append(v)
        return v

    yield make
    for v in made:
        v.cleanup()


def snapshot(settings: Settings) -> dict[tuple[str, int], tuple[frozenset[str], frozenset[str]]]:
    """Every role and database on every server of the topology."""
    state = {}
    for inst in settings.instances:
        with connection(inst, "superuser") as conn, conn.cursor() as cur:
            cur.execute("SELECT rolname FROM pg_roles")
            roles = frozenset(r[0] for r in cur.fetchall())
            cur.execute("SELECT datname FROM pg_database")
            dbs = frozenset(r[0] for r in cur.fetchall())
        state[(inst.host, inst.port)] = (roles, dbs)
    return state


def test_init_and_teardown_twice_each(topology, make_variant) -> None:
    v = make_variant()
    s = v.settings
    before = snapshot(topology.settings)

    out = out_lines(ppp(v.env, "init"))
    for inst in s.instances:
        mine = [line for line in out if line.startswith(f"{inst.name}: ")]
        assert mine[:3] == [
            f"{inst.name}: created role {inst.admin_role}",
            f"{inst.name}: created role {inst.app_role}",
            f"{inst.name}: created database {inst.dbname}",
        ]
        assert f"{inst.name}: granted CONNECT on database {inst.dbname} to {inst.app_role}" in mine
        assert (
            f"{inst.name}: default privileges: {inst.app_role} gets SELECT, INSERT, UPDATE, DELETE "
            "on TABLES"
        ) in mine
    assert "veneer: created extension postgres_fdw" in out
    assert f"veneer: granted USAGE on postgres_fdw to {s.veneer.admin_role}" in out
    assert out_lines(ppp(v.env, "init")) == [
        f"{name}: already provisioned, nothing to do" for name in INSTANCES
    ]
    middle = snapshot(topology.settings)
    for inst in s.instances:
        roles, dbs = middle[(inst.host, inst.port)]
        assert {inst.admin_role, inst.app_role} <= roles and inst.dbname in dbs

    out = out_lines(ppp(v.env, "teardown", "--yes"))
    assert out == [
        line
        for inst in s.instances
        for line in (
            f"{inst.name}: dropped database {inst.dbname}",
            f"{inst.name}: dropped role {inst.app_role}",
            f"{inst.name}: dropped role {inst.admin_role}",
        )
    ]
    assert out_lines(ppp(v.env, "teardown", "--yes")) == [
        f"{name}: nothing to tear down" for name in INSTANCES
    ]
    assert snapshot(topology.settings) == before


def test_teardown_asks_for_yes_without_a_terminal(topology, make_variant) -> None:
    v = make_variant()
    result = ppp(v.env, "teardown")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: teardown drops every database and role PPP made: pass --yes"
    ]


FORBIDDEN = [
    "CREATE SCHEMA sneaky",
    "CREATE TABLE public.sneaky (id int)",
    "CREATE TABLE acme.sneaky (id int)",
    "CREATE TEMP TABLE sneaky (id int)",
    "CREATE VIEW public.sneaky AS SELECT 1",
    "CREATE FUNCTION public.sneaky() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "ALTER TABLE acme.items ADD COLUMN extra int",
    "ALTER TABLE public.notes RENAME TO gone",
    "CREATE INDEX ON acme.items (name)",
    "TRUNCATE acme.items",
    "DROP TABLE acme.items",
    "DROP TABLE public.notes",
    "DROP SCHEMA acme CASCADE",
]


def test_app_role_has_dml_only_on_what_admin_creates_later(topology, make_variant) -> None:
    v = make_variant()
    out_lines(ppp(v.env, "init"))
    for inst in v.settings.instances:
        with connection(inst, "admin", autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("CREATE SCHEMA acme")
            cur.execute("CREATE TABLE acme.items (id serial PRIMARY KEY, name text NOT NULL)")
            cur.execute(
                "CREATE TABLE public.notes "
                "(id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text)"
            )
        with connection(inst, "app", autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone() == (inst.app_role,)
            for table, column in (("acme.items", "name"), ("public.notes", "body")):
                cur.execute(f"INSERT INTO {table} ({column}) VALUES ('Ernest') RETURNING id")
                (row_id,) = cur.fetchone()
                cur.execute(f"UPDATE {table} SET {column} = 'Hemingway' WHERE id = %s", (row_id,))
                assert cur.rowcount == 1
                cur.execute(f"SELECT {column} FROM {table} WHERE id = %s", (row_id,))
                assert cur.fetchone() == ("Hemingway",)
                cur.execute(f"DELETE FROM {table} WHERE id = %s", (row_id,))
                assert cur.rowcount == 1
            for sql in FORBIDDEN:
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cur.execute(sql)


def test_app_role_cannot_reach_another_instance(topology) -> None:
    """On the session's topology: every instance is its own server."""
    s = topology.settings
    for mine, other in itertools.permutations(s.instances, 2):
        for role in ("app", "admin"):
            user, password = mine.user_and_password(role)
            with pytest.raises(psycopg2.OperationalError):
                psycopg2.connect(
                    host=other.host,
                    port=other.port,
                    dbname=other.dbname,
                    user=user,
                    password=password,
                    connect_timeout=5,
                )


def test_app_role_cannot_reach_another_database_on_the_same_server(topology, make_variant) -> None:
    """Two shards on one server: CONNECT is revoked from PUBLIC, so each role stays home."""
    bluth = topology.settings.shard("bluth_co")
    v = make_variant(
        PPP_SHARD_CYBERDYNE_HOST=bluth.host,
        PPP_SHARD_CYBERDYNE_PORT=str(bluth.port),
        PPP_SHARD_CYBERDYNE_SUPERUSER_PASSWORD=bluth.superuser_password or "",
    )
    out_lines(ppp(v.env, "init"))
    s = v.settings
    a, b = s.shard("bluth_co"), s.shard("cyberdyne")
    assert (a.host, a.port) == (b.host, b.port)
    for mine, other in ((a, b), (b, a)):
        with connection(mine, "app") as conn:
            assert conn.info.dbname == mine.dbname
        for role in ("app", "admin"):
            user, password = mine.user_and_password(role)
            with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
                psycopg2.connect(
                    host=other.host,
                    port=other.port,
                    dbname=other.dbname,
                    user=user,
                    password=password,
                )


def test_veneer_admin_wires_postgres_fdw_without_a_superuser(topology, make_variant) -> None:
    v = make_variant()
    out_lines(ppp(v.env, "init"))
    s = v.settings
    shard, veneer = s.shard("initech"), s.veneer
    with connection(shard, "admin", autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE public.authors (id int PRIMARY KEY, first_name text)")
        cur.execute("INSERT INTO public.authors VALUES (1, 'Ernest')")
    with connection(veneer, "admin", autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        assert cur.fetchone() == (False,)
        cur.execute(
            "CREATE SERVER initech_srv FOREIGN DATA WRAPPER postgres_fdw "
            "OPTIONS (host %s, port %s, dbname %s)",
            (shard.fdw_host, str(shard.fdw_port), shard.dbname),
        )
        for role in (veneer.admin_role, veneer.app_role):
            cur.execute(
                f'CREATE USER MAPPING FOR "{role}" SERVER initech_srv '
                "OPTIONS (user %s, password %s)",
                (shard.app_role, shard.app_password),
            )
        cur.execute("CREATE SCHEMA initech")
        cur.execute("IMPORT FOREIGN SCHEMA public FROM SERVER initech_srv INTO initech")
    with connection(veneer, "app") as conn, conn.cursor() as cur:
        cur.execute("SELECT first_name FROM initech.authors WHERE id = 1")
        assert cur.fetchone() == ("Ernest",)


def test_changed_password_is_applied_and_never_logged(topology, make_variant) -> None:
    v = make_variant()
    out_lines(ppp(v.env, "init"))
    new = f"new-{secrets.token_urlsafe(12)}"
    env = {**v.env, "PPP_SHARD_BLUTH_CO_APP_PASSWORD": new}
    s = load_settings(environ=env)
    bluth = s.shard("bluth_co")
    out = out_lines(ppp(env, "init"))
    assert out == [
        "veneer: already provisioned, nothing to do",
        f"bluth_co: set the password of role {bluth.app_role}",
        "cyberdyne: already provisioned, nothing to do",
        "initech: already provisioned, nothing to do",
    ]
    with connection(bluth, "app") as conn:
        assert conn.info.user == bluth.app_role
    with pytest.raises(PPPError, match="password authentication failed"):
        connection(v.settings.shard("bluth_co"), "app").__enter__()
    if topology.servers is None:
        pytest.skip("server logs are only readable with the local backend")
    for inst in s.instances:
        log = topology.servers.log_file(inst.name).read_text(errors="replace")
        for password in [*v.passwords(), new]:
            assert password not in log
        assert "SCRAM-SHA-256$" not in log


def test_superuser_errors_name_the_setting_and_hide_the_password(topology, make_variant) -> None:
    v = make_variant(PPP_VENEER_SUPERUSER_PASSWORD="wrong-pw-Qx9")
    before = snapshot(topology.settings)
    result = ppp(v.env, "init")
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    veneer = topology.settings.veneer
    assert line.startswith(
        f"Error: cannot connect to veneer at postgresql+psycopg2://postgres:***@{veneer.host}:"
        f"{veneer.port}/postgres: "
    )
    assert 'password authentication failed for user "postgres"' in line
    assert "wrong-pw-Qx9" not in result.output
    assert snapshot(topology.settings) == before

    v = make_variant(PPP_SHARD_INITECH_SUPERUSER_PASSWORD="")
    result = ppp(v.env, "init")
    initech = topology.settings.shard("initech")
    assert result.stderr.splitlines() == [
        "Error: PPP_SHARD_INITECH_SUPERUSER_PASSWORD is not set: provisioning shard 'initech' "
        f"needs a superuser connection (postgresql+psycopg2://postgres@{initech.host}:"
        f"{initech.port}/postgres)"
    ]
    assert snapshot(topology.settings) == before  # checked before the veneer was touched


HOSTILE = [
    ("PPP_SHARD_BLUTH_CO_DB", 'bluth"co', "use lower-case letters"),
    ("PPP_SHARD_BLUTH_CO_DB", "bluth_co; DROP DATABASE postgres", "use lower-case letters"),
    ("PPP_SHARD_BLUTH_CO_DB", "x'; DROP ROLE postgres; --", "use lower-case letters"),
    ("PPP_SHARD_BLUTH_CO_DB", "Bluth_Co", "use lower-case letters"),
    ("PPP_SHARD_BLUTH_CO_DB", "b" * 64, "64 bytes, at most 57 allowed"),
    ("PPP_SHARD_BLUTH_CO_DB", "b" * 58, "58 bytes, at most 57 allowed"),
    ("PPP_SHARD_BLUTH_CO_DB", "pg_bluth", "names starting with 'pg_' are reserved"),
    ("PPP_SHARD_BLUTH_CO_DB", "blüth", "use lower-case letters"),
    ("PPP_VENEER_DB", "veneer db", "use lower-case letters"),
    ("PPP_SHARDS", "bluth_co,,initech", "it must not be empty"),
    ("PPP_SHARDS", 'bluth_co,"cyberdyne"', "use lower-case letters"),
    ("PPP_SHARDS", "bluth_co;cyberdyne", "use lower-case letters"),
    ("PPP_SHARDS", "BLUTH_CO", "use lower-case letters"),
    ("PPP_SHARDS", "pg_catalog", "names starting with 'pg_' are reserved"),
    ("PPP_SHARDS", "s" * 64, "64 bytes, at most 57 allowed"),
]


@pytest.mark.parametrize(("var", "value", "why"), HOSTILE)
def test_hostile_names_are_refused_before_anything_is_created(
    topology, make_variant, var: str, value: str, why: str
) -> None:
    v = make_variant(**{var: value})
    before = snapshot(topology.settings)
    for args in (["init"], ["teardown", "--yes"]):
        result = ppp(v.env, *args)
        assert result.exit_code == 1, result.output
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"Error: {var}"), line
        assert why in line
        assert "Traceback" not in result.output
        assert snapshot(topology.settings) == before


def test_library_refuses_hostile_names_without_connecting(topology) -> None:
    """Even an Instance built by hand (no settings) is checked before any connection."""
    bad = Instance(
        name="x",
        kind="shard",
        host="127.0.0.1",
        port=1,
        dbname='x"; DROP ROLE postgres; --',
        admin_password="a",
        app_password="b",
        superuser_password="c",
    )
    with pytest.raises(PPPError, match=r"^database name: invalid database name 'x\"; DROP"):
        provision_instance(bad, topology.settings)
