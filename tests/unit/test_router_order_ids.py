"""The router's record of accepted client order ids follows DESK_ORDER_IDS, expiry included."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from nats.js.kv import KV_DEL, KeyValue

from desk.bus import subjects
from services.order_router.service import ORDER_IDS_TTL, Router
from services.order_router.settings import Settings


def entry(key: str, stored: float, operation: str | None = None) -> KeyValue.Entry:
    return KeyValue.Entry(
        bucket=subjects.KV_ORDER_IDS, key=key, value=b"", revision=1, delta=0,
        created=datetime.fromtimestamp(stored, UTC), operation=operation,  # type: ignore[arg-type]
    )


def test_keys_past_the_buckets_ttl_are_forgotten_and_recent_ones_kept() -> None:
    router = Router(Settings())
    now = time.time()
    router._on_order_id(entry("alpha.old", now - ORDER_IDS_TTL - 60))
    router._on_order_id(entry("alpha.recent", now - 60))
    assert set(router.order_ids) == {"alpha.old", "alpha.recent"}
    assert router.order_ids["alpha.recent"] == pytest.approx(now - 60, abs=0.001)

    assert router.prune_order_ids(now) == 1
    assert set(router.order_ids) == {"alpha.recent"}


def test_a_deleted_key_is_forgotten_at_once() -> None:
    router = Router(Settings())
    router._on_order_id(entry("alpha.c-1", time.time()))
    router._on_order_id(entry("alpha.c-1", time.time(), KV_DEL))
    assert "alpha.c-1" not in router.order_ids
