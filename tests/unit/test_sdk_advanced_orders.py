"""The SDK's advanced orders in a backtest on the desk's engine: a bracket's exits happen, a trailing
stop follows the price, a replace amends a resting order; and the SDK's argument checks."""

from __future__ import annotations

from decimal import Decimal

import pytest

from strategy_sdk import Bar, OrderUpdate, Strategy
from strategy_sdk.orders import build_order_request
from strategy_sdk.testing import make_bars, run_backtest

D = Decimal


class Bracket(Strategy):
    """Buys 10 on the first bar with a take-profit at 12 and a stop-loss at 8."""

    def on_start(self) -> None:
        self.answers: list[bool] = []

    async def on_bar(self, bar: Bar) -> None:
        if not self.answers:
            result = await self.buy(bar.symbol, 10, take_profit="12", stop_loss="8", time_in_force="gtc")
            self.answers.append(result.accepted)


def test_a_bracket_strategy_exits_at_its_take_profit() -> None:
    result = run_backtest(
        Bracket(), make_bars("AAPL", ["10", "10.5", "11", "11.5", "12.5", "13"]), slippage_bps=0, fee_bps=0
    )
    assert [(f.side, f.qty, f.price) for f in result.fills] == [("buy", D(10), D("10.01")), ("sell", D(10), D(12))]
    assert result.positions == {}
    by_id = {o.client_order_id: o for o in result.orders}
    entry = next(cid for cid in by_id if not cid.endswith(("-tp", "-sl")))
    assert by_id[entry + "-tp"].status == "filled" and by_id[entry + "-sl"].status == "canceled"
    assert result.errors == 0


def test_a_bracket_strategy_exits_at_its_stop_loss() -> None:
    result = run_backtest(
        Bracket(), make_bars("AAPL", ["10", "9.5", "9", "8.5", "7.5", "7"]), slippage_bps=0, fee_bps=0
    )
    assert [(f.side, f.price) for f in result.fills] == [("buy", D("10.01")), ("sell", D(8))]
    assert result.positions == {}
    assert sorted(o.status for o in result.orders) == ["canceled", "filled", "filled"]


class Trailer(Strategy):
    """Buys 10, then protects them with a trailing stop 1 below the best price."""

    async def on_bar(self, bar: Bar) -> None:
        if self.position(bar.symbol) == 0 and not self.open_orders and not getattr(self, "done", False):
            await self.buy(bar.symbol, 10)
        elif self.position(bar.symbol) > 0 and not self.open_orders:
            await self.sell(bar.symbol, 10, type="trailing_stop", trail_price="1", time_in_force="gtc")
            self.done = True


def test_a_trailing_stop_sells_once_the_price_falls_its_trail_from_the_high() -> None:
    result = run_backtest(
        Trailer(), make_bars("AAPL", ["10", "11", "13", "14", "13.5", "12.5", "12"]), slippage_bps=0, fee_bps=0
    )
    # placed at bar 1 (bid 10.99); the stop trails to 13 under bar 3's high of 14; bar 5 (13.5 -> 12.5) hits it
    assert [(f.side, f.price) for f in result.fills] == [("buy", D("10.01")), ("sell", D(13))]


class Replacer(Strategy):
    """Bids 9 for 10 shares on the first bar, then raises the bid to 10.5 (and the total to 12)."""

    def on_start(self) -> None:
        self.updates: list[OrderUpdate] = []

    async def on_bar(self, bar: Bar) -> None:
        if not self.updates and not self.open_orders:
            await self.buy(bar.symbol, 10, type="limit", limit_price="9", time_in_force="gtc")
        elif len(self.open_orders) == 1 and not hasattr(self, "replaced"):
            (cid,) = self.open_orders
            self.replaced = await self.replace_order(cid, qty=12, limit_price="10.5")

    def on_order_update(self, update: OrderUpdate) -> None:
        self.updates.append(update)


def test_a_replace_amends_a_resting_limit_and_the_new_order_fills() -> None:
    strategy = Replacer()
    result = run_backtest(strategy, make_bars("AAPL", ["10", "10", "10", "10"]), slippage_bps=0, fee_bps=0)
    assert strategy.replaced.accepted
    assert [(f.qty, f.price) for f in result.fills] == [(D(12), D("10.01"))]
    old = next(u for u in strategy.updates if u.status == "canceled")
    assert old.text == f"replaced by {strategy.replaced.client_order_id}"


def test_the_sdk_checks_the_advanced_arguments_with_the_routers_rules() -> None:
    bracket = build_order_request("alpha", "AAPL", "buy", 10, take_profit="12", stop_loss="8")
    assert (bracket.take_profit_limit_price, bracket.stop_loss_stop_price) == ("12", "8")
    assert bracket.order_class == 1  # bracket, from the two exits
    oto = build_order_request("alpha", "AAPL", "buy", 10, stop_loss="8")
    assert oto.order_class == 3
    oco = build_order_request(
        "alpha", "AAPL", "sell", 10, type="limit", order_class="oco", take_profit="12", stop_loss="8"
    )
    assert oco.limit_price == "" and oco.take_profit_limit_price == "12"
    with pytest.raises(ValueError, match="exactly one of trail_price and trail_percent"):
        build_order_request("alpha", "AAPL", "sell", 10, type="trailing_stop")
    with pytest.raises(ValueError, match="above stop_loss"):
        build_order_request("alpha", "AAPL", "buy", 10, take_profit="8", stop_loss="12")
    with pytest.raises(ValueError, match="order_class must be one of"):
        build_order_request("alpha", "AAPL", "buy", 10, order_class="basket")
