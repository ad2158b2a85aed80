"""The tenant catalog (schema ppp in the veneer): listing, filters, register, unregister."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from ppp_env.errors import PPPError
from ppp_env.servers.provision import provision_instance, teardown_instance
from ppp_env.settings import Settings, load_settings
from ppp_env.veneer import catalog
from ppp_env.veneer import env as veneer_env
from tests.plugins.veneer import EXAMPLE, register, unregister

pytestmark = pytest.mark.usefixtures("veneer_ready")

EXTRA = {"vt_cat_b": "cyberdyne", "vt_cat_a": "cyberdyne", "vt_cat_c": "bluth_co"}


@pytest.fixture
def extra(settings: Settings) -> Iterator[Settings]:
    for schema, shard in EXTRA.items():
        register(settings, schema, shard)
    try:
        yield settings
    finally:
        for schema in EXTRA:
            unregister(settings, schema)


def test_list_is_ordered_by_shard_then_schema(extra: Settings) -> None:
    found = [(t.shard, t.schema) for t in catalog.list_tenants(extra)]
    assert found == sorted(found)
    assert {("bluth_co", "vt_cat_c"), ("cyberdyne", "vt_cat_a")} <= set(found)
    assert {(s, s) for s in EXAMPLE} <= set(found)


def test_filters(extra: Settings) -> None:
    on_cyberdyne = catalog.list_tenants(extra, shards=["cyberdyne"])
    assert [t.schema for t in on_cyberdyne if t.schema.startswith("vt_cat")] == [
        "vt_cat_a",
        "vt_cat_b",
    ]
    assert all(t.shard == "cyberdyne" for t in on_cyberdyne)
    picked = catalog.list_tenants(extra, tenants=["vt_cat_b", "vt_cat_c", "initech"])
    assert [(t.schema, t.shard) for t in picked] == [
        ("vt_cat_c", "bluth_co"),
        ("vt_cat_b", "cyberdyne"),
        ("initech", "initech"),
    ]
    both = catalog.list_tenants(extra, shards=["bluth_co"], tenants=["vt_cat_b", "vt_cat_c"])
    assert [t.schema for t in both] == ["vt_cat_c"]
    assert catalog.list_tenants(extra, tenants=[]) == []


def test_new_tenants_are_pending_with_timestamps(extra: Settings) -> None:
    (t,) = catalog.list_tenants(extra, tenants=["vt_cat_a"])
    assert (t.state, t.wired_revision, t.wired_at) == ("pending", None, None)
    assert t.created_at is not None and t.updated_at is not None


def test_unknown_names_in_filters_are_errors(settings: Settings) -> None:
    with pytest.raises(PPPError, match=r"unknown tenants vt_nope, vt_nix: not in the catalog"):
        catalog.list_tenants(settings, tenants=["bluth_co", "vt_nope", "vt_nix"])
    with pytest.raises(PPPError, match=r"unknown shard nope: the catalog has bluth_co, "):
        catalog.list_tenants(settings, shards=["nope", "bluth_co"])


def test_register_is_idempotent_on_the_same_shard(settings: Settings) -> None:
    with catalog.admin_connection(settings) as conn:
        assert catalog.register_tenant(conn, "vt_cat_idem", "initech") is True
        assert catalog.register_tenant(conn, "vt_cat_idem", "initech") is False
        with pytest.raises(PPPError, match="already in the catalog on shard 'initech', not"):
            catalog.register_tenant(conn, "vt_cat_idem", "bluth_co")
        assert catalog.unregister_tenant(conn, "vt_cat_idem") is True
        assert catalog.unregister_tenant(conn, "vt_cat_idem") is False


@pytest.mark.parametrize(
    ("schema", "shard", "message"),
    [
        ("vt_cat_x", "nope", "unknown shard 'nope': the catalog has bluth_co"),
        ("Bad", "bluth_co", "invalid tenant schema name 'Bad'"),
        ("ppp", "bluth_co", "'ppp' is reserved"),
        ("pg_x", "bluth_co", "names starting with 'pg_' are reserved"),
        ("a" * 64, "bluth_co", "64 bytes, at most 63 allowed"),
    ],
)
def test_register_refuses_bad_input(
    settings: Settings, schema: str, shard: str, message: str
) -> None:
    with catalog.admin_connection(settings) as conn, pytest.raises(PPPError, match=message):
        catalog.register_tenant(conn, schema, shard)


def test_unregister_drops_the_wiring_only(settings: Settings) -> None:
    with catalog.admin_connection(settings) as conn:
        catalog.register_tenant(conn, "vt_cat_wired", "bluth_co")
        conn.exec_driver_sql("CREATE SCHEMA vt_cat_wired")
    with catalog.admin_connection(settings) as conn:
        catalog.unregister_tenant(conn, "vt_cat_wired")
        assert conn.execute(text("SELECT to_regnamespace('vt_cat_wired')")).scalar() is None
        assert catalog.lookup_tenant(conn, "vt_cat_wired") is None


def test_fresh_veneer_from_base_to_head_and_back(topology: Any) -> None:
    """Another veneer database on the same server: no catalog, then head, then base."""
    env = topology.variant(PPP_VENEER_DB="vt_veneer_fresh")
    fresh = load_settings(environ=env)
    provision_instance(fresh.veneer, fresh)
    try:
        with pytest.raises(
            PPPError,
            match=r"^the catalog does not exist yet: run `alembic -n veneer upgrade head`$",
        ):
            catalog.list_tenants(fresh)
        result = veneer_env.upgrade(fresh)
        assert result.before == () and result.after == veneer_env.status(fresh).heads
        assert sum(c.startswith("created foreign server") for c in result.changes) == 3
        tenants = catalog.list_tenants(fresh)
        assert [(t.schema, t.shard) for t in tenants] == [(s, s) for s in EXAMPLE]
        veneer_env.downgrade(fresh, "base")
        with catalog.admin_connection(fresh) as conn:
            assert not catalog.catalog_exists(conn)
            left = conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM pg_foreign_server), "
                    "(SELECT count(*) FROM pg_namespace WHERE nspname = ANY(:s))"
                ),
                {"s": list(EXAMPLE)},
            ).one()
        assert tuple(left) == (0, 0)
        with pytest.raises(PPPError, match="the catalog does not exist yet"):
            catalog.list_tenants(fresh)
    finally:
        teardown_instance(fresh.veneer, fresh)
