"""The router's order-id bookkeeping, pure (no NATS, no asyncio): idempotency and the acks it answers.

* :class:`OrderIds` — the keys of ``DESK_ORDER_IDS`` (``<strategy_id>.<client_order_id>``) this
  replica knows, each with when it was stored: every order accepted within the bucket's TTL, so
  "seen before?" is a lookup. A KV watch does not see expiry, so keys past the TTL are pruned here.
* The acks: the accepted :func:`accepted_ack`, a repeat's :func:`duplicate_of` the first ack,
  :func:`refused_ack` (an order's or a cancel's refusal body) and :func:`stored_ack_matches` (a stored
  ack is used only under its own key).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TypeVar

from desk.bus import subjects
from desk.bus.errors import DeskError
from desk.core.ids import order_id_for
from desk.core.orders import ValidOrder, reject_reason
from desk.v1 import orders_pb2

AckT = TypeVar("AckT", orders_pb2.OrderAck, orders_pb2.CancelAck)


class OrderIds(Mapping[str, float]):
    """Order-id key -> when it was stored (epoch s), for the keys stored within ``ttl`` seconds.

    ``prune_every``: how often (s) :meth:`prune_due` says the expired keys should be dropped."""

    def __init__(self, ttl: float, prune_every: float, now: float) -> None:
        self.ttl = ttl
        self.prune_every = prune_every
        self._stored: dict[str, float] = {}
        self._pruned_at = now

    def __getitem__(self, key: str) -> float:
        return self._stored[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._stored)

    def __len__(self) -> int:
        return len(self._stored)

    def record(self, key: str, stored: float) -> None:
        """``key`` was stored at ``stored`` (its KV entry's creation time, or now for our own write)."""
        self._stored[key] = stored

    def forget(self, key: str) -> None:
        """``key`` was deleted from the bucket."""
        self._stored.pop(key, None)

    def prune_due(self, now: float) -> bool:
        return now - self._pruned_at > self.prune_every

    def prune(self, now: float) -> int:
        """Forget the keys stored longer than the TTL ago; returns how many were dropped."""
        self._pruned_at = now
        oldest = now - self.ttl
        expired = [key for key, stored in self._stored.items() if stored < oldest]
        for key in expired:
            del self._stored[key]
        return len(expired)


def accepted_ack(order: ValidOrder, ts_ns: int) -> orders_pb2.OrderAck:
    """The ack of an accepted (routed) order."""
    return orders_pb2.OrderAck(
        strategy_id=order.strategy_id,
        client_order_id=order.client_order_id,
        order_id=order.order_id,
        accepted=True,
        ts_ns=ts_ns,
    )


def duplicate_of(first: orders_pb2.OrderAck) -> orders_pb2.OrderAck:
    """A repeat's answer: a copy of the first ack, marked duplicate (``first`` is not changed)."""
    ack = orders_pb2.OrderAck()
    ack.CopyFrom(first)
    ack.duplicate = True
    return ack


def stored_ack_matches(key: str, ack: orders_pb2.OrderAck) -> bool:
    """Whether an ack read from ``DESK_ORDER_IDS`` under ``key`` is the ack of that key's order."""
    return subjects.order_id_key(ack.strategy_id, ack.client_order_id) == key


def refused_ack(
    ack_type: type[AckT],
    err: DeskError,
    subject: str,
    request: orders_pb2.OrderRequest | orders_pb2.CancelRequest | None,
    ts_ns: int,
) -> AckT:
    """The refusal body of an order or a cancel (OrderAck / CancelAck share these fields). Without a
    decoded request the strategy is the subject's last token."""
    strategy_id = request.strategy_id if request is not None else subjects.token(subject, -1)
    client_order_id = request.client_order_id if request is not None else ""
    return ack_type(
        strategy_id=strategy_id,
        client_order_id=client_order_id,
        order_id=order_id_for(strategy_id, client_order_id) if client_order_id else "",
        accepted=False,
        reason=reject_reason(err.code),
        message=err.message,
        ts_ns=ts_ns,
    )
