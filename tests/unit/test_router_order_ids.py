"""The router's record of accepted client order ids follows DESK_ORDER_IDS, expiry included."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from desk.bus.kv import Change
from desk.v1 import orders_pb2
from services.order_router.service import ORDER_IDS_TTL, OrderRouterService
from services.order_router.settings import Settings


def entry(key: str, stored: float, deleted: bool = False) -> Change[orders_pb2.OrderAck]:
    value = None if deleted else orders_pb2.OrderAck()
    return Change(key=key, value=value, revision=1, created=datetime.fromtimestamp(stored, UTC), initial=False)


def test_keys_past_the_buckets_ttl_are_forgotten_and_recent_ones_kept() -> None:
    router = OrderRouterService(Settings())
    now = time.time()
    router._on_order_id(entry("alpha.old", now - ORDER_IDS_TTL - 60))
    router._on_order_id(entry("alpha.recent", now - 60))
    assert set(router.order_ids) == {"alpha.old", "alpha.recent"}
    assert router.order_ids["alpha.recent"] == pytest.approx(now - 60, abs=0.001)

    assert router.prune_order_ids(now) == 1
    assert set(router.order_ids) == {"alpha.recent"}


def test_a_deleted_key_is_forgotten_at_once() -> None:
    router = OrderRouterService(Settings())
    router._on_order_id(entry("alpha.c-1", time.time()))
    router._on_order_id(entry("alpha.c-1", time.time(), deleted=True))
    assert "alpha.c-1" not in router.order_ids
