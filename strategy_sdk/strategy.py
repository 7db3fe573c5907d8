"""The :class:`Strategy` base class members subclass.

A strategy overrides any of the hooks (each may be a plain or an ``async`` method) and trades with
``await self.buy(...)``, ``await self.sell(...)``, ``await self.submit_order(...)`` and
``await self.cancel(...)``. Hooks never run concurrently: the runner (or the backtest) hands them
one event at a time, so a strategy needs no locks.

Example::

    from decimal import Decimal
    from strategy_sdk import Bar, Strategy

    class BuyTheDip(Strategy):
        async def on_bar(self, bar: Bar) -> None:
            if bar.close < bar.open * Decimal("0.99") and self.position(bar.symbol) == 0:
                result = await self.buy(bar.symbol, 10)
                if not result.accepted:
                    self.log.warning("order refused: %s %s", result.reason, result.message)
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from desk.v1 import orders_pb2
from strategy_sdk.models import Bar, CancelResult, Fill, OpenOrder, OrderResult, OrderUpdate, Quote, Trade
from strategy_sdk.orders import Account, Number, build_order_request

#: Bars kept per symbol for :meth:`Strategy.history` unless config.json says ``"history": N``.
DEFAULT_HISTORY = 1000
MAX_HISTORY = 100_000


def history_size(config: dict[str, Any]) -> int:
    """config.json's ``history`` (bars kept per symbol), checked: a whole number from 1 to 100,000."""
    value = config.get("history", DEFAULT_HISTORY)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_HISTORY:
        raise ValueError(f"config history must be a whole number from 1 to {MAX_HISTORY}, got {value!r}")
    return value


__all__ = ["HOOKS", "OrderGateway", "Strategy", "StrategyContext", "call_hook"]

HOOKS = ("on_start", "on_bar", "on_trade", "on_quote", "on_fill", "on_order_update", "on_stop")


class OrderGateway(Protocol):
    """Where a strategy's orders go: the desk's router (live) or the backtest's simulator."""

    async def submit(self, request: orders_pb2.OrderRequest) -> OrderResult: ...

    async def cancel(self, client_order_id: str) -> CancelResult: ...


@dataclass
class StrategyContext:
    """Everything a running strategy is attached to; made by the runner or the backtest."""

    strategy_id: str
    member_id: str
    config: dict[str, Any]
    account: Account
    gateway: OrderGateway
    log: logging.Logger
    orders_sent: int = 0
    errors: int = 0
    last_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: Recent bars per symbol, newest last (:meth:`Strategy.history`); at most ``history_size`` each.
    bars: dict[str, deque[Bar]] = field(default_factory=dict)
    history_size: int = DEFAULT_HISTORY
    #: Makes the client order id of an order sent without one: random live (unique across restarts);
    #: numbered in a backtest, so two runs of the same backtest send the same ids.
    new_client_order_id: Callable[[], str] | None = None

    def record_bar(self, bar: Bar) -> None:
        """The runner's step before ``on_bar``: keep ``bar`` in the symbol's recent history."""
        kept = self.bars.get(bar.symbol)
        if kept is None:
            kept = self.bars[bar.symbol] = deque(maxlen=self.history_size)
        kept.append(bar)


async def call_hook(fn: Callable[..., Any], *args: Any) -> None:
    """Call a hook and await its result when it is awaitable (sync and async hooks both work)."""
    result = fn(*args)
    if inspect.isawaitable(result):
        await result


class Strategy:
    """Base class of every desk strategy. Override the hooks you need; all are optional."""

    _ctx: StrategyContext

    # Hooks ------------------------------------------------------------------------------------
    def on_start(self) -> Any:
        """Called once, after the connection is up and the books are recovered, before any event."""

    def on_bar(self, bar: Bar) -> Any:
        """A bar of one of the strategy's symbols."""

    def on_trade(self, trade: Trade) -> Any:
        """A trade print (subscribed only when the strategy overrides this hook)."""

    def on_quote(self, quote: Quote) -> Any:
        """A quote (subscribed only when the strategy overrides this hook)."""

    def on_fill(self, fill: Fill) -> Any:
        """One of the strategy's orders (partly) filled; position and cash already include it."""

    def on_order_update(self, update: OrderUpdate) -> Any:
        """Any execution report of the strategy's orders (new, fills, canceled, expired, rejected)."""

    def on_stop(self) -> Any:
        """Called once on shutdown; orders may still be sent from here."""

    # Wiring -------------------------------------------------------------------------------------
    def attach(self, context: StrategyContext) -> None:
        """Bind the strategy to a runner or backtest (done for you; subclasses need not call it)."""
        self._ctx = context

    @property
    def context(self) -> StrategyContext:
        try:
            return self._ctx
        except AttributeError:
            raise RuntimeError(
                "this strategy is not attached to a desk: run it with `python -m strategy_sdk run` "
                "or strategy_sdk.testing.run_backtest"
            ) from None

    # Identity and books -------------------------------------------------------------------------
    @property
    def strategy_id(self) -> str:
        return self.context.strategy_id

    @property
    def member_id(self) -> str:
        return self.context.member_id

    @property
    def config(self) -> dict[str, Any]:
        """The strategy's config.json as a dict."""
        return self.context.config

    @property
    def log(self) -> logging.Logger:
        """A stdlib logger named ``strategy.<strategy_id>``; its lines go to stderr."""
        return self.context.log

    @property
    def cash(self) -> Decimal:
        return self.context.account.cash

    def history(self, symbol: str, n: int | None = None) -> list[Bar]:
        """The last ``n`` bars of ``symbol`` (all kept when ``n`` is None), oldest first, the bar being
        handled included. Live they are the bars the desk's feed sent since the strategy started; in a
        backtest, the data's. At most ``history`` (config.json, default 1000) are kept per symbol."""
        if n is not None and n < 0:
            raise ValueError(f"history: n must be 0 or more, got {n}")
        kept = self.context.bars.get(symbol)
        if not kept or n == 0:
            return []
        if n is None or n >= len(kept):
            return list(kept)
        return list(itertools.islice(kept, len(kept) - n, None))

    def position(self, symbol: str) -> Decimal:
        """Signed quantity held in ``symbol`` (negative when short)."""
        return self.context.account.position(symbol)

    @property
    def positions(self) -> dict[str, Decimal]:
        """Every non-zero position, as a copy."""
        return {s: q for s, q in self.context.account.positions.items() if q != 0}

    @property
    def open_orders(self) -> dict[str, OpenOrder]:
        """Orders that may still fill, by client order id (a copy)."""
        return dict(self.context.account.open_orders)

    # Orders -------------------------------------------------------------------------------------
    async def submit_order(
        self,
        symbol: str,
        side: str,
        qty: Number | None = None,
        notional: Number | None = None,
        type: str = "market",
        limit_price: Number | None = None,
        stop_price: Number | None = None,
        time_in_force: str = "day",
        client_order_id: str | None = None,
        extended_hours: bool = False,
        *,
        trail_price: Number | None = None,
        trail_percent: Number | None = None,
        take_profit: Number | None = None,
        stop_loss: Number | None = None,
        stop_loss_limit: Number | None = None,
        order_class: str | None = None,
    ) -> OrderResult:
        """Send an order; returns the desk's answer. Nonsense arguments raise ValueError.

        ``side`` is "buy" or "sell"; ``type`` "market", "limit", "stop", "stop_limit" or
        "trailing_stop"; ``time_in_force`` "day", "gtc", "ioc" or "fok". Give exactly one of ``qty`` and
        ``notional``.

        A ``trailing_stop`` takes exactly one of ``trail_price`` (an amount) and ``trail_percent``: its
        stop follows the best price seen (the highest for a sell, the lowest for a buy) at that distance
        and never moves back; once the price reaches it, it is a market order.

        Exits (Alpaca's order classes): ``take_profit`` (a limit price) and ``stop_loss`` (a stop
        price; with ``stop_loss_limit`` a stop-limit) make a market or limit entry a **bracket**:
        once the entry fills, both exits are placed for the quantity it filled, as client order ids
        ``<id>-tp`` and ``<id>-sl``, and a fill of one reduces (or cancels) the other. One of them alone
        is an **OTO** (``order_class="oto"``). ``order_class="oco"`` on a ``limit`` order that closes a
        position places both exits at once: the order itself is the take-profit (its limit is
        ``take_profit``) and ``<id>-sl`` the stop-loss. Canceling one of two OCO exits cancels both.
        Numbers may be Decimal, int or str; a float is converted through ``str()`` (0.1 -> "0.1") with a
        one-time warning, and no float arithmetic is ever done.
        A client order id is generated when absent; re-sending with the same id is safe (the router
        answers with the first result instead of placing a second order).
        """
        ctx = self.context
        if client_order_id is None and ctx.new_client_order_id is not None:
            client_order_id = ctx.new_client_order_id()
        request = build_order_request(
            ctx.strategy_id,
            symbol,
            side,
            qty=qty,
            notional=notional,
            type=type,
            limit_price=limit_price,
            stop_price=stop_price,
            time_in_force=time_in_force,
            client_order_id=client_order_id,
            extended_hours=extended_hours,
            trail_price=trail_price,
            trail_percent=trail_percent,
            take_profit=take_profit,
            stop_loss=stop_loss,
            stop_loss_limit=stop_loss_limit,
            order_class=order_class,
        )
        return await self._send(request)

    async def _send(self, request: orders_pb2.OrderRequest) -> OrderResult:
        ctx = self.context
        ctx.orders_sent += 1
        result = await ctx.gateway.submit(request)
        if result.accepted:
            ctx.account.order_accepted(request, result.order_id)
        return result

    async def replace_order(
        self,
        client_order_id: str,
        qty: Number | None = None,
        limit_price: Number | None = None,
        stop_price: Number | None = None,
        *,
        trail_price: Number | None = None,
        trail_percent: Number | None = None,
        time_in_force: str | None = None,
        new_client_order_id: str | None = None,
    ) -> OrderResult:
        """Amend an open order (Alpaca's replace): a new order takes its place with the numbers given
        and the old one's for the rest; returns the desk's answer for the new order.

        ``qty`` is the new **total**: what the old order filled counts towards it, so the new order's own
        quantity is ``qty`` less that (by default the total stays as it was, and the new order's own
        quantity is the old one's leaves). The old order is closed (canceled, its text ``replaced by
        <new id>``) and the new one placed in one step at the venue; if the old one filled or closed
        meanwhile, or ``qty`` is not more than it filled, the new one is rejected and the old one stays
        as it was. Symbol, side and type stay; an exit of a bracket or OCO stays tied to the other exit.
        The new client order id is generated unless given. Raises ValueError for an order this strategy
        has no open record of.
        """
        ctx = self.context
        old = ctx.account.open_orders.get(client_order_id)
        if old is None:
            raise ValueError(f"no open order {client_order_id!r} to replace")
        if old.qty is None:
            raise ValueError(f"order {client_order_id!r} is a notional order; notional orders cannot be replaced")
        if new_client_order_id is None and ctx.new_client_order_id is not None:
            new_client_order_id = ctx.new_client_order_id()
        trailing = old.type == "trailing_stop"
        if trailing and trail_price is None and trail_percent is None:
            trail_price, trail_percent = old.trail_price, old.trail_percent
        request = build_order_request(
            ctx.strategy_id,
            old.symbol,
            old.side,
            qty=qty if qty is not None else old.qty,
            type=old.type,
            limit_price=limit_price if limit_price is not None else old.limit_price,
            stop_price=None if trailing else (stop_price if stop_price is not None else old.stop_price),
            time_in_force=time_in_force or old.time_in_force,
            client_order_id=new_client_order_id,
            trail_price=trail_price,
            trail_percent=trail_percent,
            replaces=client_order_id,
        )
        return await self._send(request)

    async def buy(
        self,
        symbol: str,
        qty: Number,
        *,
        type: str = "market",
        limit_price: Number | None = None,
        stop_price: Number | None = None,
        time_in_force: str = "day",
        client_order_id: str | None = None,
        trail_price: Number | None = None,
        trail_percent: Number | None = None,
        take_profit: Number | None = None,
        stop_loss: Number | None = None,
        stop_loss_limit: Number | None = None,
        order_class: str | None = None,
    ) -> OrderResult:
        """Buy ``qty`` of ``symbol`` (a market order unless ``type`` says otherwise); the other
        arguments are :meth:`submit_order`'s."""
        return await self.submit_order(
            symbol,
            "buy",
            qty,
            type=type,
            limit_price=limit_price,
            stop_price=stop_price,
            time_in_force=time_in_force,
            client_order_id=client_order_id,
            trail_price=trail_price,
            trail_percent=trail_percent,
            take_profit=take_profit,
            stop_loss=stop_loss,
            stop_loss_limit=stop_loss_limit,
            order_class=order_class,
        )

    async def sell(
        self,
        symbol: str,
        qty: Number,
        *,
        type: str = "market",
        limit_price: Number | None = None,
        stop_price: Number | None = None,
        time_in_force: str = "day",
        client_order_id: str | None = None,
        trail_price: Number | None = None,
        trail_percent: Number | None = None,
        take_profit: Number | None = None,
        stop_loss: Number | None = None,
        stop_loss_limit: Number | None = None,
        order_class: str | None = None,
    ) -> OrderResult:
        """Sell ``qty`` of ``symbol`` (a market order unless ``type`` says otherwise); the other
        arguments are :meth:`submit_order`'s."""
        return await self.submit_order(
            symbol,
            "sell",
            qty,
            type=type,
            limit_price=limit_price,
            stop_price=stop_price,
            time_in_force=time_in_force,
            client_order_id=client_order_id,
            trail_price=trail_price,
            trail_percent=trail_percent,
            take_profit=take_profit,
            stop_loss=stop_loss,
            stop_loss_limit=stop_loss_limit,
            order_class=order_class,
        )

    async def cancel(self, client_order_id: str) -> CancelResult:
        """Ask to cancel an open order; the outcome arrives as an :class:`OrderUpdate`."""
        return await self.context.gateway.cancel(client_order_id)
