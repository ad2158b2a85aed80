"""Validation and quoting of PostgreSQL identifiers (database, role, shard and tenant names)."""

from __future__ import annotations

import re

from ppp_env.errors import PPPError

#: Matched in full (``fullmatch``): ``$`` would also match before a trailing newline.
_PLAIN = re.compile(r"[a-z_][a-z0-9_]*")
MAX_IDENTIFIER_BYTES = 63
#: Schemas a tenant may never be: PostgreSQL's own, and PPP's catalog.
RESERVED_SCHEMAS = frozenset({"public", "information_schema", "ppp"})


def validate_identifier(
    name: str, what: str = "name", max_bytes: int = MAX_IDENTIFIER_BYTES
) -> str:
    """Return ``name`` if it is a plain lower-case PostgreSQL identifier, else raise PPPError.

    Plain means: starts with a lower-case letter or underscore, then lower-case letters,
    digits and underscores; at most ``max_bytes`` bytes; not ``pg_*``. Such names never
    need quoting, but PPP quotes them anyway.
    """
    if not isinstance(name, str) or name == "":
        raise PPPError(f"invalid {what} '': it must not be empty")
    shown = name if len(name) <= 80 else name[:77] + "..."
    if len(name.encode()) > max_bytes:
        raise PPPError(
            f"invalid {what} {shown!r}: {len(name.encode())} bytes, at most {max_bytes} allowed"
        )
    if not _PLAIN.fullmatch(name):
        raise PPPError(
            f"invalid {what} {shown!r}: use lower-case letters, digits and underscores, "
            "starting with a letter or underscore"
        )
    if name.startswith("pg_"):
        raise PPPError(f"invalid {what} {shown!r}: names starting with 'pg_' are reserved")
    return name


def validate_tenant(name: str) -> str:
    """A tenant schema name: a plain identifier that is not a reserved schema."""
    validate_identifier(name, "tenant schema name")
    if name in RESERVED_SCHEMAS:
        raise PPPError(f"invalid tenant schema name {name!r}: {name!r} is reserved")
    return name


def quote_ident(name: str) -> str:
    """Quote an identifier for SQL (double quotes, embedded quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """Quote a string literal for SQL text that is never sent with bound parameters (DDL)."""
    return "'" + value.replace("'", "''") + "'"
