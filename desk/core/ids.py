"""The desk's identifiers, derived rather than drawn, so a retry maps to the same id."""

from __future__ import annotations

import hashlib
import uuid
from decimal import Decimal
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


def alpaca_execution_id(*parts: object) -> str:
    """An execution id of an Alpaca event: ``uuid5(NAMESPACE_URL, "alpaca:<part>:<part>...")``; a fill
    is ``("<alpaca order id>", "fill", canonical cum qty)`` (the gateway makes it, reconcile checks it)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "alpaca:" + ":".join(str(p) for p in parts)))


def canonical_qty(value: Decimal) -> str:
    """A quantity as a stable key: ``10``, ``10.0`` and ``1E+1`` are one fill."""
    return format(value.normalize(), "f")


def alpaca_fill_execution_id(alpaca_order_id: str, cum_qty: Decimal) -> str:
    """The execution id of the Alpaca fill that took ``alpaca_order_id`` to ``cum_qty``."""
    return alpaca_execution_id(alpaca_order_id, "fill", canonical_qty(cum_qty))


def parse_alpaca_client_order_id(value: str) -> tuple[str, str] | None:
    """``(strategy_id, client_order_id)`` of an Alpaca order the desk placed
    (``<strategy>.<client order id>[.<n>]``, the n-th placement), else ``None``."""
    parts = value.split(".")
    if len(parts) not in (2, 3) or not all(parts) or (len(parts) == 3 and not parts[2].isdigit()):
        return None
    return parts[0], parts[1]
