"""PPP's own quoting for DDL text agrees with psycopg2.sql and with the server.

PPP renders DDL as text without a connection (offline ``--sql``, one rendered batch per
tenant, Alembic's ``op.execute``), where ``psycopg2.sql`` cannot render: these tests hold the
two to the same answers on a real server."""

from __future__ import annotations

import pytest
from psycopg2 import sql

from ppp_env import db
from ppp_env.identifiers import quote_ident, quote_literal

NAMES = ["plain", "MixedCase", 'has"quote', "with space", "semi;colon", "ünïcode", "x" * 63]
VALUES = ["plain", "it's", "back\\slash", "two ''", "dollar $1 $$", "ünï €", "", "new\nline"]


@pytest.fixture
def cursor(settings):
    with db.connection(settings.veneer, "admin", autocommit=True) as conn:
        yield conn.cursor()


def test_quote_ident_is_psycopg2s_identifier_and_names_the_same_object(cursor) -> None:
    for name in NAMES:
        assert quote_ident(name) == sql.Identifier(name).as_string(cursor.connection), name
        cursor.execute(f"SELECT 1 AS {quote_ident(name)}")
        assert cursor.description[0].name == name


def test_quote_literal_reads_back_as_the_same_value(cursor) -> None:
    cursor.execute("SHOW standard_conforming_strings")
    assert cursor.fetchone() == ("on",)  # PostgreSQL's default since 9.1; PPP relies on it
    for value in VALUES:
        cursor.execute(f"SELECT {quote_literal(value)}::text")
        assert cursor.fetchone() == (value,), value
        cursor.execute("SELECT %s::text", (value,))  # as a bound value: the same
        assert cursor.fetchone() == (value,), value
