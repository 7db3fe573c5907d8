"""The desk's identifiers, derived rather than drawn, so a retry maps to the same id."""

from __future__ import annotations

import hashlib
import uuid
from sys import intern

_NAMESPACE = uuid.NAMESPACE_URL.bytes


def order_id_for(strategy_id: str, client_order_id: str) -> str:
    """The desk order id: ``uuid5(NAMESPACE_URL, "desk:<strategy_id>:<client_order_id>")``.

    Deterministic, so a retried order gets the same id (and the same ``Nats-Msg-Id``); the router,
    the ledger, the Alpaca broker and the SDK's backtester all derive it here (docs/architecture.md §8).
    """
    # uuid.uuid5 spelled out (sha1 of namespace + name, version 5, RFC 4122 variant), without the UUID object
    digest = bytearray(hashlib.sha1(_NAMESPACE + f"desk:{strategy_id}:{client_order_id}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return intern(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")  # one object per id wherever it is kept
