"""strategy_sdk.testing: the in-process backtest members use in their own unit tests."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from desk.v1 import common_pb2, executions_pb2
from strategy_sdk import Bar, Fill, OrderUpdate, Strategy
from strategy_sdk.orders import Account
from strategy_sdk.testing import make_bars, run_backtest, run_backtest_async, to_bar


class Crossover(Strategy):
    """Fast 2 / slow 3 SMA crossover, market orders of 10."""

    def on_start(self) -> None:
        self.closes: list[Decimal] = []
        self.above: bool | None = None

    async def on_bar(self, bar: Bar) -> None:
        self.closes.append(bar.close)
        if len(self.closes) < 3:
            return
        fast = sum(self.closes[-2:], Decimal(0)) / 2
        slow = sum(self.closes[-3:], Decimal(0)) / 3
        above, was = fast > slow, self.above
        self.above = above
        if was is None or above == was:
            return
        if above and self.position(bar.symbol) == 0:
            await self.buy(bar.symbol, 10)
        elif not above and self.position(bar.symbol) > 0:
            await self.sell(bar.symbol, self.position(bar.symbol))


CROSSING = ["10", "10", "10", "9", "8", "9", "11", "12", "11", "9", "8", "8"]


def test_crossover_fills_market_orders_at_once_against_the_bars_own_quote() -> None:
    result = run_backtest(Crossover(), make_bars("AAPL", CROSSING), slippage_bps=0, fee_bps=0)

    # Golden cross on bar 6 (close 11): bought at once at that tick's ask, 11 + 1 cent; death cross on
    # bar 9 (close 9): sold at its bid, 8.99. 10 shares fit in the 25 (= 25 % of the trade's 100) offered.
    assert [(f.side, f.qty, f.price, f.fee) for f in result.fills] == [
        ("buy", Decimal(10), Decimal("11.01"), Decimal(0)),
        ("sell", Decimal(10), Decimal("8.99"), Decimal(0)),
    ]
    assert result.positions == {}
    assert result.cash == Decimal(100000) - Decimal("110.1") + Decimal("89.9")
    assert result.errors == 0
    assert len(result.equity_curve) == len(CROSSING)
    assert result.equity_curve[7][1] == Decimal(100000) - Decimal("110.1") + 10 * 12  # marked at bar 7's close
    assert result.final_equity == result.cash


def test_the_sim_gateways_default_slippage_and_fee_apply_unless_told_otherwise() -> None:
    result = run_backtest(Crossover(), make_bars("AAPL", CROSSING))
    buy, sell = result.fills
    # SIM_SLIPPAGE_BPS=2, SIM_FEE_BPS=1: ask * 1.0002, bid * 0.9998, fee 1 bp of the fill's value.
    assert (buy.price, sell.price) == (Decimal("11.01") * Decimal("1.0002"), Decimal("8.99") * Decimal("0.9998"))
    assert (buy.fee, sell.fee) == (10 * buy.price / 10000, 10 * sell.price / 10000)
    assert result.final_equity == result.cash == Decimal(100000) - 10 * buy.price - buy.fee + 10 * sell.price - sell.fee


def test_fees_and_slippage_are_charged_on_market_fills() -> None:
    result = run_backtest(Crossover(), make_bars("AAPL", CROSSING), fee_bps=10, slippage_bps=100)
    buy, sell = result.fills
    assert (buy.price, sell.price) == (Decimal("11.1201"), Decimal("8.9001"))  # 11.01 * 1.01, 8.99 * 0.99
    assert buy.fee == Decimal("0.111201")
    assert result.cash == (
        Decimal(100000) - Decimal("111.201") - Decimal("0.111201") + Decimal("89.001") - Decimal("0.089001")
    )


def test_an_order_larger_than_the_participation_fills_partially_and_the_rest_on_the_next_bar() -> None:
    class BuySixty(Strategy):
        async def on_bar(self, bar: Bar) -> None:
            if not self.context.orders_sent:
                await self.buy(bar.symbol, 60)

    result = run_backtest(BuySixty(), make_bars("AAPL", ["100", "100", "100"]), slippage_bps=0)
    # Bar 0's tick offers 25 (25 % of the trade's 100) at the ask 100.01; the rest (DAY) rests. Bar 1
    # (volume 100) offers 25 at its open 100, then its quote 25 more at the ask: the last 10.
    assert [(f.qty, f.price, f.order_status) for f in result.fills] == [
        (Decimal(25), Decimal("100.01"), "partially_filled"),
        (Decimal(25), Decimal(100), "partially_filled"),
        (Decimal(10), Decimal("100.01"), "filled"),
    ]
    assert [f.fee for f in result.fills] == [Decimal("0.250025"), Decimal("0.25"), Decimal("0.10001")]
    assert [u.exec_type for u in result.updates] == ["new", "partial_fill", "partial_fill", "fill"]
    assert result.orders[0].status == "filled" and result.orders[0].filled_qty == 60
    assert result.positions == {"AAPL": Decimal(60)}


class LimitThenCancel(Strategy):
    """Bar 0: a buy limit at 98.50 and a far-away buy limit at 50; bar 2: cancel the far one."""

    def on_start(self) -> None:
        self.updates: list[OrderUpdate] = []
        self.fills: list[Fill] = []
        self.bars = 0
        self.cancel_results: list[Any] = []

    async def on_bar(self, bar: Bar) -> None:
        self.bars += 1
        if self.bars == 1:
            await self.buy(bar.symbol, 5, type="limit", limit_price="98.50", client_order_id="near")
            await self.buy(bar.symbol, 5, type="limit", limit_price=Decimal(50), client_order_id="far")
        if self.bars == 3:
            self.cancel_results.append(await self.cancel("far"))
            self.cancel_results.append(await self.cancel("far"))
            self.cancel_results.append(await self.cancel("nobody"))

    def on_fill(self, fill: Fill) -> None:
        self.fills.append(fill)

    def on_order_update(self, update: OrderUpdate) -> None:
        self.updates.append(update)


def test_limit_orders_fill_only_when_a_later_bar_crosses_and_cancels_work() -> None:
    strategy = LimitThenCancel()
    # closes 100, 100, 99, 97, 98 -> bar 3 opens at 99 and trades down to 97: the 98.50 bid fills at 98.50.
    result = run_backtest(strategy, make_bars("AAPL", ["100", "100", "99", "97", "98"]))

    # Not marketable at the ask (100.01), both rest; bar 3 trades down to 97: the 98.50 bid fills at 98.50.
    assert [(f.client_order_id, f.price, f.qty) for f in result.fills] == [("near", Decimal("98.50"), Decimal(5))]
    assert strategy.fills == result.fills
    assert result.positions == {"AAPL": Decimal(5)}
    assert result.cash == Decimal(100000) - 5 * Decimal("98.50") - Decimal("0.04925")  # fee: 1 bp
    by_id = {o.client_order_id: o for o in result.orders}
    assert (by_id["near"].status, by_id["far"].status) == ("filled", "canceled")
    assert [(u.client_order_id, u.exec_type) for u in strategy.updates] == [
        ("near", "new"),
        ("far", "new"),
        ("far", "canceled"),
        ("near", "fill"),
    ]
    accepted, again, unknown = strategy.cancel_results
    assert accepted.accepted and not again.accepted and not unknown.accepted
    assert (again.reason, unknown.reason) == ("ORDER_CLOSED", "UNKNOWN_ORDER")


def test_a_limit_order_that_gaps_through_fills_at_the_better_open() -> None:
    class GapBuyer(Strategy):
        async def on_bar(self, bar: Bar) -> None:
            if not self.open_orders and self.position(bar.symbol) == 0:
                await self.buy(bar.symbol, 1, type="limit", limit_price="95")

    bars = [
        to_bar({"symbol": "MSFT", "open": "100", "high": "100", "low": "99", "close": "100"}),
        to_bar({"symbol": "MSFT", "open": "90", "high": "91", "low": "89", "close": "90"}),
    ]
    result = run_backtest(GapBuyer, bars)
    assert [f.price for f in result.fills] == [Decimal(90)]


class Fragile(Strategy):
    def on_start(self) -> None:
        self.seen = 0

    def on_bar(self, bar: Bar) -> None:
        self.seen += 1
        if bar.close < 100:
            raise RuntimeError(f"cannot handle {bar.close}")


def test_hook_exceptions_are_counted_and_the_backtest_goes_on() -> None:
    strategy = Fragile()
    result = run_backtest(strategy, make_bars("AAPL", ["101", "99", "102", "98", "103"]))
    assert strategy.seen == 5
    assert result.errors == 2
    assert "cannot handle 99" in result.error_messages[0]


def test_an_exception_in_on_start_is_raised_to_the_test() -> None:
    class Broken(Strategy):
        def on_start(self) -> None:
            raise KeyError("missing param")

    with pytest.raises(KeyError, match="missing param"):
        run_backtest(Broken(), make_bars("AAPL", ["1"]))


class Greedy(Strategy):
    def on_start(self) -> None:
        self.results: list[Any] = []

    async def on_bar(self, bar: Bar) -> None:
        if len(self.results) == 0:
            self.results.append(await self.buy(bar.symbol, 600))  # 60000 of 100000
            self.results.append(await self.buy(bar.symbol, 600))  # 60000 more
            self.results.append(await self.sell(bar.symbol, 100))  # only 25 held (the first buy's fill)


def test_orders_beyond_buying_power_or_position_are_refused_like_the_router_does() -> None:
    config = {"risk": {"max_order_notional": "100000", "max_position_notional": "200000"}}
    strategy = Greedy()
    run_backtest(strategy, make_bars("AAPL", ["100", "100"]), config=config)
    assert [r.accepted for r in strategy.results] == [True, False, False]
    assert [r.reason for r in strategy.results[1:]] == ["INSUFFICIENT_BUYING_POWER", "SHORT_NOT_ALLOWED"]


def test_the_routers_default_limits_apply_when_the_config_sets_none() -> None:
    strategy = Greedy()
    result = run_backtest(strategy, make_bars("AAPL", ["100", "100"]))
    assert strategy.results[0].reason == "MAX_ORDER_NOTIONAL"  # 60000 > ROUTER_DEFAULT_MAX_ORDER_NOTIONAL 25000
    assert [o.status for o in result.orders] == ["rejected", "rejected", "rejected"]


def test_the_configs_symbols_initial_cash_and_allow_short_are_honoured() -> None:
    class ShortEverything(Strategy):
        def on_start(self) -> None:
            self.seen: list[str] = []

        async def on_bar(self, bar: Bar) -> None:
            self.seen.append(bar.symbol)
            if self.position(bar.symbol) == 0 and not self.open_orders:
                await self.sell(bar.symbol, 10)

    bars = [
        b for pair in zip(make_bars("AAPL", ["100", "101"]), make_bars("MSFT", ["50", "51"]), strict=True) for b in pair
    ]
    config = {"symbols": ["MSFT"], "initial_cash": "5000", "risk": {"allow_short": True}}
    strategy = ShortEverything()
    result = run_backtest(strategy, bars, config=config, slippage_bps=0, fee_bps=0)
    assert strategy.seen == ["MSFT", "MSFT"]
    assert len(result.equity_curve) == 2
    assert result.positions == {"MSFT": Decimal(-10)}
    assert result.cash == Decimal(5000) + 10 * Decimal("49.99")  # sold at the bid
    assert result.final_equity == result.cash - 10 * 51


def test_bars_may_be_dicts_or_csv_rows_with_iso_timestamps() -> None:
    rows: list[dict[str, Any]] = [
        {
            "symbol": "AAPL",
            "open": "1.5",
            "high": "2",
            "low": "1",
            "close": "1.75",
            "volume": "10",
            "timestamp": "2026-01-02T14:30:00Z",
        },
        {"symbol": "AAPL", "open": 2, "high": 2, "low": 2, "close": 2},
    ]
    result = run_backtest(Crossover, rows)
    assert result.errors == 0
    assert to_bar(rows[0]).timestamp.isoformat() == "2026-01-02T14:30:00+00:00"
    assert to_bar(rows[0]).close == Decimal("1.75")


async def test_backtests_also_run_from_async_tests() -> None:
    bars = make_bars("AAPL", CROSSING)
    from_thread = run_backtest(Crossover(), bars)
    awaited = await run_backtest_async(Crossover(), bars)

    def trades(fills: list[Fill]) -> list[tuple[str, Decimal, Decimal]]:
        return [(f.side, f.qty, f.price) for f in fills]

    assert (
        trades(from_thread.fills)
        == trades(awaited.fills)
        == [("buy", Decimal(10), Decimal("11.012202")), ("sell", Decimal(10), Decimal("8.988202"))]
    )


def test_account_books_each_execution_once_even_when_repeated() -> None:
    account = Account(cash=Decimal(1000))
    report = executions_pb2.ExecutionReport(
        execution_id="e1",
        client_order_id="c1",
        order_id="o1",
        symbol="AAPL",
        side=common_pb2.SIDE_BUY,
        exec_type=executions_pb2.EXEC_TYPE_FILL,
        status=executions_pb2.ORDER_STATUS_FILLED,
        fill_qty="2",
        fill_price="10.5",
        fee="0.01",
        cum_qty="2",
        leaves_qty="0",
    )
    assert account.apply(report) is not None
    assert account.apply(report) is None
    assert (account.position("AAPL"), account.cash) == (Decimal(2), Decimal("978.99"))


def test_history_gives_the_recent_bars_of_a_symbol_oldest_first_the_current_one_included() -> None:
    seen: list[list[str]] = []

    class Looks(Strategy):
        def on_bar(self, bar: Bar) -> None:
            seen.append([str(b.close) for b in self.history(bar.symbol, 3)])
            assert self.history(bar.symbol, 0) == [] and self.history("NOPE") == []
            assert self.history(bar.symbol)[-1] is bar

    run_backtest(Looks(), make_bars("AAPL", ["1", "2", "3", "4", "5"]))
    assert seen == [["1"], ["1", "2"], ["1", "2", "3"], ["2", "3", "4"], ["3", "4", "5"]]


def test_history_keeps_what_config_says_and_refuses_a_bad_size_or_n() -> None:
    lengths: list[int] = []

    class Counts(Strategy):
        def on_bar(self, bar: Bar) -> None:
            lengths.append(len(self.history(bar.symbol)))
            with pytest.raises(ValueError, match="n must be 0 or more"):
                self.history(bar.symbol, -1)

    result = run_backtest(Counts(), make_bars("AAPL", ["1", "2", "3", "4"]), config={"history": 2})
    assert lengths == [1, 2, 2, 2] and result.errors == 0
    with pytest.raises(ValueError, match="config history must be a whole number"):
        run_backtest(Counts(), make_bars("AAPL", ["1"]), config={"history": 0})
