"""Many strategies, one Alpaca account: what to cross inside the desk and what to send. Pure.

Alpaca sees one account; the desk keeps one book per strategy. Two strategies' opposite orders on
one symbol would meet Alpaca's same-account rules: a new order that could trade against the
account's own resting opposite order is refused as a potential wash trade (422, 42210000). The rule
(docs/alpaca.md, "One account, many strategies"):

1. **Fair price.** ``P`` = the mid of the last quote when both sides are known, else the last trade
   (``DESK_PRICES``). Without ``P`` nothing is crossed.
2. **Cross first.** A new order is matched, oldest first, against the desk's orders resting at
   Alpaca on the same symbol, opposite side, *of other strategies*, that would accept ``P`` (market
   orders; limit buys with limit >= P, limit sells with limit <= P; stops never, they have not
   triggered) - provided the new order accepts ``P`` too. Each match is one internal execution at
   ``P`` for the smaller leaves quantity, booked to both strategies (two fills, no fee). The resting
   order's Alpaca order is canceled and, if it has leaves left, placed again for them.
3. **Send the net.** What is left of the new order goes to Alpaca, unless an opposite order still
   rests there that it could trade against (the same strategy's own, a stop, or a limit that does
   not accept ``P``): then the remainder is refused by the desk with a clear reason instead of by
   Alpaca with a 42210000 (``conflict``).
4. **Attribution.** Internal executions belong to the two strategies by construction; every Alpaca
   fill belongs to the one desk order whose Alpaca order it filled (client order id
   ``<strategy_id>.<client_order_id>[.<n>]``), partial fills included; so the sum of the strategies'
   positions always equals the account's position at Alpaca.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

ZERO = Decimal(0)
TWO = Decimal(2)


@dataclass(frozen=True)
class NetOrder:
    """A desk order as netting sees it: side ``buy``/``sell``, type ``market``/``limit``/``stop``/``stop_limit``."""

    order_id: str
    strategy_id: str
    symbol: str
    side: str
    type: str
    leaves: Decimal
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    created_ns: int = 0


@dataclass(frozen=True)
class Cross:
    """One internal execution: ``qty`` at ``price`` between a buy and a sell of two strategies."""

    incoming_order_id: str
    resting_order_id: str
    qty: Decimal
    price: Decimal


@dataclass(frozen=True)
class NettingPlan:
    crosses: tuple[Cross, ...]
    send_qty: Decimal  # what goes to Alpaca for the incoming order
    conflict: str | None = None  # why the remainder cannot go to Alpaca (then send_qty is 0)

    @property
    def crossed_qty(self) -> Decimal:
        return sum((c.qty for c in self.crosses), ZERO)


def fair_price(last: Decimal | None, bid: Decimal | None = None, ask: Decimal | None = None) -> Decimal | None:
    """The mid of a sane quote, else the last trade."""
    if bid is not None and ask is not None and bid > 0 and ask >= bid:
        return (bid + ask) / TWO
    return last


def accepts(order: NetOrder, price: Decimal) -> bool:
    """Would ``order`` trade at ``price`` now?"""
    if order.type == "market":
        return True
    if order.type == "limit" and order.limit_price is not None:
        return price <= order.limit_price if order.side == "buy" else price >= order.limit_price
    return False  # stops have not triggered; the desk does not cross them


def could_wash(new: NetOrder, resting: NetOrder) -> bool:
    """Alpaca's same-account check as the desk models it: opposite sides that could meet."""
    if new.symbol != resting.symbol or new.side == resting.side or resting.leaves <= 0:
        return False
    if "market" in (new.type, resting.type) or new.type.startswith("stop") or resting.type.startswith("stop"):
        return True
    buy, sell = (new, resting) if new.side == "buy" else (resting, new)
    return buy.limit_price is not None and sell.limit_price is not None and buy.limit_price >= sell.limit_price


def plan(incoming: NetOrder, resting: Iterable[NetOrder], price: Decimal | None) -> NettingPlan:
    """Cross ``incoming`` against the other strategies' resting orders at ``price``, then the net."""
    book = sorted((r for r in resting if r.symbol == incoming.symbol and r.order_id != incoming.order_id),
                  key=lambda r: (r.created_ns, r.order_id))
    remaining = incoming.leaves
    crosses: list[Cross] = []
    left: dict[str, Decimal] = {r.order_id: r.leaves for r in book}
    if price is not None and price > 0 and accepts(incoming, price):
        for other in book:
            if remaining <= 0:
                break
            if other.side == incoming.side or other.strategy_id == incoming.strategy_id or other.leaves <= 0:
                continue
            if not accepts(other, price):
                continue
            qty = min(remaining, other.leaves)
            crosses.append(Cross(incoming.order_id, other.order_id, qty, price))
            remaining -= qty
            left[other.order_id] -= qty
    if remaining <= 0:
        return NettingPlan(tuple(crosses), ZERO)
    rest = NetOrder(incoming.order_id, incoming.strategy_id, incoming.symbol, incoming.side, incoming.type,
                    remaining, incoming.limit_price, incoming.stop_price, incoming.created_ns)
    for other in book:
        shrunk = NetOrder(other.order_id, other.strategy_id, other.symbol, other.side, other.type,
                          left[other.order_id], other.limit_price, other.stop_price, other.created_ns)
        if could_wash(rest, shrunk):
            whose = "its own" if other.strategy_id == incoming.strategy_id else f"strategy {other.strategy_id}'s"
            return NettingPlan(
                tuple(crosses), ZERO,
                conflict=(f"{remaining} {incoming.symbol} not sent: it could trade against {whose} resting "
                          f"{other.side} order {other.order_id} at Alpaca (wash trade)"),
            )
    return NettingPlan(tuple(crosses), remaining)


def allocate(total: Decimal, shares: Iterable[tuple[str, Decimal]]) -> list[tuple[str, Decimal]]:
    """Split an executed ``total`` over ``(order_id, leaves)`` in order (first come, first filled)."""
    result = []
    for order_id, leaves in shares:
        if total <= 0:
            break
        qty = min(total, leaves)
        if qty > 0:
            result.append((order_id, qty))
            total -= qty
    return result
