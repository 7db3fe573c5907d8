"""Many strategies, one Alpaca account: what to cross inside the desk, what to send, what to pull. Pure.

Alpaca sees one account; the desk keeps one book per strategy. Alpaca refuses an order that could
trade against the account's own resting opposite order as a potential wash trade (422, 42210000:
an opposite market or stop order, an incoming market or stop order, or limits whose prices cross;
the fake in ``tests/fakes/alpaca`` refuses exactly these). No member's resting order may lock
another member out, so the rule (docs/alpaca.md, "One account, many strategies") is:

1. **Fair price.** ``P`` = the Alpaca feed's quote mid (else its last trade), at most
   ``ALPACA_CROSS_MAX_AGE`` seconds old (the caller's :class:`~.alpaca.AlpacaPrices`). Without a
   fresh ``P`` nothing is crossed.
2. **Cross first.** The incoming order is matched, oldest first, against the other strategies'
   orders resting at Alpaca on its symbol and opposite side that accept ``P`` (market orders; buy
   limits at or above ``P``, sell limits at or below; never stops, they have not triggered) -
   provided it accepts ``P`` too (a stop that ``P`` has triggered counts as a market order, a
   triggered stop-limit as its limit). Each match is one internal execution at ``P`` for the
   smaller quantity. A notional order is converted at ``P`` (``notional / P`` shares) for this.
3. **The strategy's own opposite order.** If what is left could trade against the *same*
   strategy's resting opposite order, it is refused (``conflict``) naming that order: Alpaca would
   refuse it too, and only that strategy can cancel its own order.
4. **Pull, send, re-place.** If what is left could trade against *other* strategies' resting orders
   (a limit the wrong side of ``P``, a stop, any of them when there is no fresh ``P``) and it would
   execute now - a market order (notional too), a limit that accepts ``P``, a stop ``P`` has
   triggered - those orders are pulled (``pulls``: canceled at Alpaca), the remainder is sent, and
   the pulled orders' leaves are placed again once it is done at Alpaca.
5. **Hold.** If what is left would rest instead (a limit that does not accept ``P``, a stop not
   triggered, a limit or stop when there is no fresh ``P`` to tell), it cannot rest at Alpaca beside
   the other strategy's order, and that order rested first: the remainder waits at the desk
   (``hold``, with the reason), never refused, and is worked again by this rule when a fresh ``P``
   makes it executable or when the orders it could trade against are gone.
6. **Attribution.** Internal executions belong to the two orders by construction; every Alpaca fill
   belongs to the one desk order whose Alpaca order it filled (client order id
   ``<strategy_id>.<client_order_id>[.<n>]``), partial fills included; so the sum of the strategies'
   positions always equals the account's position at Alpaca.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import ROUND_DOWN, ROUND_FLOOR, Decimal

ZERO = Decimal(0)
TWO = Decimal(2)
CENT = Decimal("0.01")


@dataclass(frozen=True)
class NetOrder:
    """A desk order as netting sees it: side ``buy``/``sell``, type ``market``/``limit``/``stop``/``stop_limit``;
    ``notional`` set for an order by value (then ``leaves`` is 0: its shares are not known)."""

    order_id: str
    strategy_id: str
    symbol: str
    side: str
    type: str
    leaves: Decimal
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    created_ns: int = 0
    notional: Decimal | None = None  # the dollar amount still to trade, for an order by value
    client_order_id: str = ""  # the strategy's own id of the order (named in reasons)


@dataclass(frozen=True)
class Cross:
    """One internal execution: ``qty`` at ``price`` between a buy and a sell of two strategies."""

    incoming_order_id: str
    resting_order_id: str
    qty: Decimal
    price: Decimal


@dataclass(frozen=True)
class NettingPlan:
    """What to do with an incoming order: cross, then send ``send_qty`` (``send_notional`` for an
    order by value), pulling ``pulls`` first; or ``hold`` it at the desk, or refuse it (``conflict``)."""

    crosses: tuple[Cross, ...]
    send_qty: Decimal  # what goes to Alpaca for the incoming order (shares)
    conflict: str | None = None  # why the remainder is refused (then nothing is sent)
    pulls: tuple[str, ...] = ()  # other strategies' orders to pull while the remainder works at Alpaca
    hold: str | None = None  # why the remainder waits at the desk (then nothing is sent now)
    send_notional: Decimal | None = None  # an order by value: the dollars still to send (cents, rounded down)

    @property
    def crossed_qty(self) -> Decimal:
        return sum((c.qty for c in self.crosses), ZERO)

    @property
    def sends(self) -> bool:
        if self.send_notional is not None:
            return self.send_notional > 0
        return self.send_qty > 0


def fair_price(last: Decimal | None, bid: Decimal | None = None, ask: Decimal | None = None) -> Decimal | None:
    """The mid of a sane quote, else the last trade."""
    if bid is not None and ask is not None and bid > 0 and ask >= bid:
        return (bid + ask) / TWO
    return last


def triggered(order: NetOrder, price: Decimal) -> bool:
    """Has ``price`` reached ``order``'s stop (a buy stop at or above it, a sell stop at or below)?"""
    if order.stop_price is None:
        return False
    return price >= order.stop_price if order.side == "buy" else price <= order.stop_price


def effective_type(order: NetOrder, price: Decimal | None) -> str:
    """``order``'s type as it trades at ``price``: a triggered stop is a market order, a triggered
    stop-limit a limit; anything else as it is."""
    if price is not None and order.type in ("stop", "stop_limit") and triggered(order, price):
        return "market" if order.type == "stop" else "limit"
    return order.type


def accepts(order: NetOrder, price: Decimal) -> bool:
    """Would ``order`` trade at ``price`` now?"""
    kind = effective_type(order, price)
    if kind == "market":
        return True
    if kind == "limit" and order.limit_price is not None:
        return price <= order.limit_price if order.side == "buy" else price >= order.limit_price
    return False  # stops that have not triggered do not trade


def resting_accepts(order: NetOrder, price: Decimal) -> bool:
    """May a resting order be crossed at ``price``? Market orders and limits that accept it; a resting
    stop never (Alpaca triggers it on its own prints), nor a resting notional order (its leaves in
    shares are not known)."""
    if order.notional is not None or order.type not in ("market", "limit"):
        return False
    return accepts(order, price)


def could_wash(new: NetOrder, resting: NetOrder) -> bool:
    """Alpaca's same-account check: opposite sides that could meet (market or stop on either side,
    or crossing limits). A resting notional order (no leaves in shares) counts while it is open."""
    if new.symbol != resting.symbol or new.side == resting.side:
        return False
    if resting.leaves <= 0 and resting.notional is None:
        return False
    if "market" in (new.type, resting.type) or new.type.startswith("stop") or resting.type.startswith("stop"):
        return True
    buy, sell = (new, resting) if new.side == "buy" else (resting, new)
    return buy.limit_price is not None and sell.limit_price is not None and buy.limit_price >= sell.limit_price


def executes_now(order: NetOrder, price: Decimal | None) -> bool:
    """Would ``order`` execute at once at Alpaca? A market order always; a limit or stop only when a
    fresh ``price`` says so (a limit that accepts it, a stop it has triggered)."""
    if order.type == "market":
        return True
    return price is not None and accepts(order, price)


def _describe(order: NetOrder) -> str:
    words = [order.side, order.type]
    if order.stop_price is not None:
        words.append(str(order.stop_price))
    if order.limit_price is not None:
        words += [str(order.limit_price)] if order.type == "limit" else ["limit", str(order.limit_price)]
    name = f"{order.client_order_id} (order {order.order_id})" if order.client_order_id else f"order {order.order_id}"
    return f"{' '.join(words)} {name}"


def _crosses(
    incoming: NetOrder, book: list[NetOrder], price: Decimal | None
) -> tuple[list[Cross], Decimal, dict[str, Decimal]]:
    """Rule 2: ``incoming`` crossed, oldest first, against the other strategies' opposite orders in
    ``book`` that accept ``price``; (the crosses, what is left of it in shares, each resting order's
    leaves after them). A notional order is counted in shares at ``price``."""
    notional = incoming.notional
    if notional is not None:
        remaining = notional / price if price is not None else ZERO  # in shares, at P
    else:
        remaining = incoming.leaves
    crosses: list[Cross] = []
    left: dict[str, Decimal] = {r.order_id: r.leaves for r in book}
    if price is None or not accepts(incoming, price):
        return crosses, remaining, left
    for other in book:
        if remaining <= 0:
            break
        if other.side == incoming.side or other.strategy_id == incoming.strategy_id or other.leaves <= 0:
            continue
        if not resting_accepts(other, price):
            continue
        qty = min(remaining, other.leaves)
        if notional is not None and qty < other.leaves:
            qty = qty.to_integral_value(ROUND_FLOOR)  # never leave a resting order fractional leaves
            if qty <= 0:
                break
        crosses.append(Cross(incoming.order_id, other.order_id, qty, price))
        remaining -= qty
        left[other.order_id] -= qty
    return crosses, remaining, left


def plan(incoming: NetOrder, resting: Iterable[NetOrder], price: Decimal | None) -> NettingPlan:
    """Cross ``incoming`` against the other strategies' orders resting at Alpaca at ``price``, then
    decide what happens to the rest (send, pull-send-re-place, hold, or refuse: the module docstring).

    ``resting`` are the desk's orders live at Alpaca on any symbol (orders pulled and not yet placed
    again, and orders held at the desk, are not at Alpaca and do not belong here)."""
    if price is not None and price <= 0:
        price = None
    book = sorted(
        (r for r in resting if r.symbol == incoming.symbol and r.order_id != incoming.order_id),
        key=lambda r: (r.created_ns, r.order_id),
    )
    notional = incoming.notional
    crosses, remaining, left = _crosses(incoming, book, price)
    send_notional: Decimal | None = None
    if notional is not None:
        spent = sum((c.qty * c.price for c in crosses), ZERO)
        send_notional = (notional - spent).quantize(CENT, ROUND_DOWN)
        if send_notional <= 0:
            return NettingPlan(tuple(crosses), ZERO, send_notional=ZERO)
        remaining = incoming.leaves  # the qty view of a notional order: none (it trades by value)
    elif remaining <= 0:
        return NettingPlan(tuple(crosses), ZERO)
    rest = replace(incoming, leaves=remaining)
    blockers = [o for o in (replace(b, leaves=left[b.order_id]) for b in book) if could_wash(rest, o)]
    what = f"${send_notional}" if send_notional is not None else str(remaining)
    own = [b for b in blockers if b.strategy_id == incoming.strategy_id]
    if own:
        return NettingPlan(
            tuple(crosses),
            ZERO,
            send_notional=ZERO,
            conflict=(
                f"{what} {incoming.symbol} not sent: it could trade against this strategy's own resting "
                f"{_describe(own[0])} at Alpaca (a wash trade, which Alpaca refuses with 42210000); cancel "
                "that order first"
            ),
        )
    if not blockers:
        return NettingPlan(tuple(crosses), remaining, send_notional=send_notional)
    unpullable = [b for b in blockers if b.notional is not None]
    if executes_now(rest, price) and not unpullable:
        return NettingPlan(
            tuple(crosses), remaining, pulls=tuple(b.order_id for b in blockers), send_notional=send_notional
        )
    blocker = (unpullable or blockers)[0]
    if unpullable:
        why = "it is a notional order (its leaves cannot be placed again)"
    elif price is None:
        why = "there is no fresh Alpaca price to tell whether this order would execute now"
    else:
        why = f"this order would rest at the fair price {price}"
    return NettingPlan(
        tuple(crosses),
        ZERO,
        send_notional=ZERO,
        hold=(
            f"{what} {incoming.symbol} held at the desk: it could trade against strategy {blocker.strategy_id}'s "
            f"resting {_describe(blocker)} at Alpaca and {why}; it goes to Alpaca when it would execute "
            "(a fresh price reaching it) or when that order is gone"
        ),
    )


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
