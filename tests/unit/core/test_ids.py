"""The desk order id is pinned: changing the formula would orphan every stored order and ack."""

from __future__ import annotations

import uuid

from desk.core.ids import order_id_for


def test_the_order_id_is_uuid5_of_strategy_and_client_order_id_and_pinned_to_a_literal() -> None:
    assert order_id_for("alpha", "c-1") == "f1d3f524-8351-50c3-a091-1a4118c17c6b"
    assert order_id_for("alpha", "c-1") == str(uuid.uuid5(uuid.NAMESPACE_URL, "desk:alpha:c-1"))


def test_a_retry_maps_to_the_same_id_and_another_strategy_to_another() -> None:
    assert order_id_for("alpha", "c-1") == order_id_for("alpha", "c-1")
    assert order_id_for("alpha", "c-1") != order_id_for("beta", "c-1")
    assert order_id_for("alpha", "c-1") != order_id_for("alpha", "c-2")
