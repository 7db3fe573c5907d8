"""The desk's identifiers, derived rather than drawn, so a retry maps to the same id."""

from __future__ import annotations

import uuid


def order_id_for(strategy_id: str, client_order_id: str) -> str:
    """The desk order id: ``uuid5(NAMESPACE_URL, "desk:<strategy_id>:<client_order_id>")``.

    Deterministic, so a retried order gets the same id (and the same ``Nats-Msg-Id``); the router,
    the ledger, the Alpaca broker and the SDK's backtester all derive it here (docs/architecture.md §8).
    """
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"desk:{strategy_id}:{client_order_id}"))
