"""desk.backtest.metrics against values worked out by hand on small series, the edge cases
(no trades, flat equity, one bar, losing everything), the pinned JSON keys and the 1M-point speed."""

from __future__ import annotations

import json
import math
from decimal import Decimal as D

import numpy as np
import pytest

from desk.backtest.metrics import (
    BacktestData,
    PriceSeries,
    Trade,
    compute,
    compute_data,
    periods_per_year,
    round_trips,
    to_json,
)

S = 1_000_000_000
MIN = 60 * S
DAY = 86_400 * S
T0 = 1_735_776_000 * S  # 2025-01-02 00:00 UTC, a Thursday
EPS = 1e-9


def days(n: int) -> list[int]:
    return [T0 + i * DAY for i in range(n)]


def close(a: float | None, b: float, eps: float = EPS) -> bool:
    return a is not None and abs(a - b) <= eps * max(1.0, abs(b))


# Annualisation -----------------------------------------------------------------------------------------
def test_periods_per_year_follows_the_bar_spacing() -> None:
    assert periods_per_year(days(10)) == 252
    assert periods_per_year([T0 + i * MIN for i in range(10)]) == 252 * 390
    assert periods_per_year([T0 + i * 3600 * S for i in range(10)]) == 252 * 6.5
    assert periods_per_year([T0 + i * S for i in range(10)]) == 252 * 390 * 60
    assert periods_per_year([T0 + i * 7 * DAY for i in range(10)]) == pytest.approx(365.25 / 7)
    assert periods_per_year([T0]) == 252
    # weekdays only: the median spacing is one day, weekends do not change it
    weekdays = [T0 + d * DAY for d in range(30) if (d + 3) % 7 not in (5, 6)]
    assert periods_per_year(weekdays) == 252


# Return statistics --------------------------------------------------------------------------------------------
def test_returns_volatility_sharpe_sortino_drawdown_calmar_by_hand() -> None:
    # values 100 -> 110 -> 99 -> 118.8: returns +10 %, -10 %, +20 %
    m = compute([], days(3), [110, 99, 118.8], {}, 100)
    s = m.strategy
    assert m.bars == 3 and m.periods_per_year == 252
    assert close(s.total_return, 0.188)
    assert close(s.annualised_return, 1.188 ** (252 / 3) - 1)
    mean = 0.2 / 3
    std = math.sqrt(((0.1 - mean) ** 2 + (-0.1 - mean) ** 2 + (0.2 - mean) ** 2) / 2)
    assert close(std, math.sqrt(0.07 / 3))  # sum of squared deviations 0.14 / 3, over n - 1 = 2
    assert close(s.volatility, std * math.sqrt(252))
    assert close(s.sharpe, mean / std * math.sqrt(252))
    assert close(s.sortino, mean / math.sqrt(0.01 / 3) * math.sqrt(252))
    # peak 110 (first bar), trough 99 (second), back above 110 on the third: two days
    assert close(s.max_drawdown, -0.1)
    assert s.max_drawdown_duration_ns == 2 * DAY and s.max_drawdown_recovered
    assert close(s.calmar, (1.188**84 - 1) / 0.1)


def test_risk_free_rate_is_taken_per_bar() -> None:
    rf = 0.05
    m = compute([], days(3), [110, 99, 118.8], {}, 100, risk_free=rf)
    per_bar = 1.05 ** (1 / 252) - 1
    mean = 0.2 / 3
    std = math.sqrt(0.07 / 3)
    assert close(m.strategy.sharpe, (mean - per_bar) / std * math.sqrt(252))
    downside = math.sqrt(((-0.1 - per_bar) ** 2) / 3)
    assert close(m.strategy.sortino, (mean - per_bar) / downside * math.sqrt(252))
    assert to_json(m)["risk_free"] == rf


def test_drawdown_not_recovered_runs_to_the_end_and_takes_the_latest_peak() -> None:
    # 100, 120, 90, 120 (back at the peak), 108, 96: the worst is -25 % from the first 120
    m = compute([], days(5), [120, 90, 120, 108, 96], {}, 100)
    assert close(m.strategy.max_drawdown, -0.25)
    assert m.strategy.max_drawdown_duration_ns == 2 * DAY and m.strategy.max_drawdown_recovered
    # a deeper one later that does not recover: from the second 120 to the last bar
    m = compute([], days(5), [120, 100, 120, 96, 84], {}, 100)
    assert close(m.strategy.max_drawdown, -0.3)
    assert m.strategy.max_drawdown_duration_ns == 2 * DAY and not m.strategy.max_drawdown_recovered


def test_points_at_one_timestamp_count_as_one_bar() -> None:
    # a two-symbol backtest writes one equity point per symbol's bar: the last one of each instant counts
    ts = [T0, T0, T0 + DAY, T0 + DAY]
    m = compute([], ts, [101, 110, 95, 99], {}, 100)
    assert m.bars == 2
    assert m.final_equity == 99
    assert close(m.strategy.max_drawdown, 99 / 110 - 1)
    assert m.periods_per_year == 252


# Round trips, exposure, turnover, fees ---------------------------------------------------------------------------
def sample_trades() -> list[Trade]:
    return [
        Trade("A", "buy", D(10), D(100), D(1), T0 + DAY, "o1"),
        Trade("A", "sell", D(10), D(110), D(1), T0 + 2 * DAY, "o2"),
        Trade("A", "buy", D(5), D(100), D(0), T0 + 3 * DAY, "o3"),
        Trade("A", "sell", D(5), D(90), D(0), T0 + 4 * DAY, "o4"),
    ]


def test_round_trip_statistics_exposure_turnover_and_fees_by_hand() -> None:
    equity = [100000, 100000, 100098, 100098, 100048]
    prices = {"A": PriceSeries(days(5), [100, 105, 110, 100, 90])}
    m = compute(sample_trades(), days(5), equity, prices, 100000)
    # trips: +100 - 2 fees = 98, then -50
    assert m.round_trips == 2
    assert m.win_rate == 0.5
    assert close(m.profit_factor, 98 / 50)
    assert m.fills == 4
    # held during bars 1 and 3 of 0..4
    assert m.exposure == pytest.approx(2 / 5, abs=EPS)
    assert m.traded_notional == 1000 + 1100 + 500 + 450
    assert m.fees == 2
    average = (3 * 100000 + 2 * 100098 + 100048) / 6  # initial cash and the five bars
    assert close(m.turnover, 3050 / average)
    assert close(m.turnover_annualised, 3050 / average * 252 / 5)
    [a] = m.per_symbol
    assert (a.symbol, a.fills, a.round_trips, a.position) == ("A", 4, 2, 0)
    assert (a.realised_pnl, a.unrealised_pnl, a.fees, a.net_pnl) == (50, 0, 2, 48)
    assert (a.bought_qty, a.sold_qty) == (15, 15)


def test_fifo_matching_and_unrealised_pnl_at_the_last_close() -> None:
    trades = [
        Trade("A", "buy", D(10), D(100), D(0), T0),
        Trade("A", "buy", D(10), D(120), D(0), T0 + DAY),
        Trade("A", "sell", D(10), D(130), D(0), T0 + 2 * DAY),
    ]
    m = compute(trades, days(4), [100000] * 4, {"A": PriceSeries(days(4), [100, 120, 130, 125])}, 100000)
    [a] = m.per_symbol
    assert a.realised_pnl == 300  # FIFO: the lot bought at 100 is sold (LIFO would give 100)
    assert a.unrealised_pnl == 50  # 10 left from 120, marked at 125
    assert a.position == 10 and a.net_pnl == 350
    assert m.round_trips == 0 and m.win_rate is None and m.profit_factor is None
    assert m.exposure == 1.0


def test_a_fill_through_zero_closes_one_trip_and_opens_a_short_with_its_fee_split() -> None:
    trades = [
        Trade("A", "buy", D(10), D(100), D(1), T0),
        Trade("A", "sell", D(15), D(110), D("1.5"), T0 + DAY),  # 10 close the long, 5 open a short
        Trade("A", "buy", D(5), D(100), D("0.5"), T0 + 2 * DAY),
    ]
    trips = round_trips(trades)
    assert [(t.direction, t.open_ns, t.close_ns) for t in trips] == [
        ("long", T0, T0 + DAY),
        ("short", T0 + DAY, T0 + 2 * DAY),
    ]
    assert close(trips[0].pnl, 100 - 1 - 1.0)  # 10 of the 15 carry 1.0 of the 1.5 fee
    assert close(trips[1].pnl, 50 - 0.5 - 0.5)
    m = compute(trades, days(3), [100000] * 3, {}, 100000)
    assert m.win_rate == 1.0
    assert m.profit_factor is None  # no losing trip: undefined, not infinite
    assert m.per_symbol[0].realised_pnl == 150


def test_round_trips_are_per_symbol() -> None:
    trades = [
        Trade("A", "buy", D(1), D(10), D(0), T0),
        Trade("B", "buy", D(1), D(20), D(0), T0),
        Trade("A", "sell", D(1), D(12), D(0), T0 + DAY),
        Trade("B", "sell", D(1), D(15), D(0), T0 + DAY),
    ]
    m = compute(trades, days(2), [100, 97], {}, 100)
    assert m.round_trips == 2 and m.win_rate == 0.5 and close(m.profit_factor, 2 / 5)
    assert [(p.symbol, p.net_pnl) for p in m.per_symbol] == [("A", 2), ("B", -5)]


# Benchmark -------------------------------------------------------------------------------------------------------
def test_benchmark_is_equal_weight_buy_and_hold_of_the_traded_symbols() -> None:
    prices = {
        "A": PriceSeries(days(3), [100, 110, 120]),
        "B": PriceSeries([T0, T0 + 2 * DAY], [50, 25]),  # no price on day 1: the last one holds
        "C": PriceSeries(days(3), [1, 100, 1000]),  # not traded: not in the benchmark
    }
    trades = [Trade("A", "buy", D(1), D(100), D(0), T0), Trade("B", "buy", D(1), D(50), D(0), T0)]
    m = compute(trades, days(3), [1000, 1000, 1000], prices, 1000)
    b = m.benchmark
    assert b is not None and m.benchmark_symbols == ("A", "B")
    # 5 A and 10 B: 1000, 550 + 500 = 1050, 600 + 250 = 850
    assert close(b.total_return, -0.15)
    assert close(b.max_drawdown, 850 / 1050 - 1)
    assert not b.max_drawdown_recovered and b.max_drawdown_duration_ns == DAY
    returns = [0.0, 0.05, 850 / 1050 - 1]
    mean = sum(returns) / 3
    std = math.sqrt(sum((r - mean) ** 2 for r in returns) / 2)
    assert close(b.sharpe, mean / std * math.sqrt(252))
    assert close(b.volatility, std * math.sqrt(252))


def test_benchmark_without_trades_holds_every_priced_symbol_and_none_without_prices() -> None:
    m = compute([], days(2), [100, 100], {"A": PriceSeries(days(2), [10, 11])}, 100)
    assert m.benchmark_symbols == ("A",) and m.benchmark is not None and close(m.benchmark.total_return, 0.1)
    assert compute([], days(2), [100, 100], {}, 100).benchmark is None


# Edge cases -------------------------------------------------------------------------------------------------------
def test_no_trades() -> None:
    m = compute([], days(3), [100, 100, 100], {}, 100)
    assert (m.round_trips, m.fills, m.win_rate, m.profit_factor) == (0, 0, None, None)
    assert m.exposure == 0 and m.fees == 0 and m.traded_notional == 0 and m.turnover == 0
    assert m.per_symbol == ()


def test_flat_equity_has_no_sharpe_rather_than_inf_or_nan() -> None:
    m = compute([], days(5), [100.0] * 5, {}, 100)
    s = m.strategy
    assert s.total_return == 0 and s.annualised_return == 0
    assert s.volatility == 0
    assert s.sharpe is None and s.sortino is None and s.calmar is None
    assert s.max_drawdown == 0 and s.max_drawdown_duration_ns == 0 and s.max_drawdown_recovered
    json.dumps(to_json(m), allow_nan=False)


def test_one_bar() -> None:
    m = compute([], [T0], [D(101)], {}, D(100))
    s = m.strategy
    assert m.bars == 1 and m.periods_per_year == 252
    assert close(s.total_return, 0.01)
    assert close(s.annualised_return, 1.01**252 - 1)
    assert s.volatility is None and s.sharpe is None and s.sortino is None
    assert s.max_drawdown == 0 and s.calmar is None
    json.dumps(to_json(m), allow_nan=False)


def test_losing_everything() -> None:
    m = compute([], days(4), [50, 0, 0, 0], {}, 100)
    s = m.strategy
    assert s.total_return == -1 and s.annualised_return == -1
    assert s.max_drawdown == -1 and not s.max_drawdown_recovered
    assert s.max_drawdown_duration_ns == 3 * DAY  # from the initial cash to the last bar
    assert s.calmar == -1
    # returns -50 %, -100 %, then 0 (nothing left): finite
    returns = [-0.5, -1.0, 0.0, 0.0]
    mean = sum(returns) / 4
    std = math.sqrt(sum((r - mean) ** 2 for r in returns) / 3)
    assert close(s.sharpe, mean / std * math.sqrt(252))
    json.dumps(to_json(m), allow_nan=False)


def test_no_bars_at_all() -> None:
    m = compute([], [], [], {}, 100)
    assert m.bars == 0 and m.final_equity == 100 and m.strategy.total_return == 0
    assert m.strategy.annualised_return is None and m.exposure == 0
    json.dumps(to_json(m), allow_nan=False)


def test_an_annualised_return_too_large_for_a_float_is_none() -> None:
    # doubling in one second of 1-second bars: 2 ** 5.9 million
    m = compute([], [T0, T0 + S], [100, 200], {}, 100)
    assert m.strategy.annualised_return is None and m.strategy.calmar is None
    json.dumps(to_json(m), allow_nan=False)


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="points"):
        compute([], days(3), [1, 2], {}, 100)


# JSON ------------------------------------------------------------------------------------------------------------
STATS_KEYS = [
    "total_return",
    "annualised_return",
    "volatility",
    "sharpe",
    "sortino",
    "max_drawdown",
    "max_drawdown_duration_s",
    "max_drawdown_recovered",
    "calmar",
]


def test_json_keys_are_pinned() -> None:
    prices = {"A": PriceSeries(days(5), [100, 105, 110, 100, 90])}
    out = to_json(compute(sample_trades(), days(5), [100000, 100000, 100098, 100098, 100048], prices, 100000))
    assert list(out) == [
        "bars",
        "periods_per_year",
        "start_ns",
        "end_ns",
        "initial_cash",
        "final_equity",
        *STATS_KEYS,
        "round_trips",
        "win_rate",
        "profit_factor",
        "fills",
        "exposure",
        "turnover",
        "turnover_annualised",
        "traded_notional",
        "fees",
        "risk_free",
        "benchmark",
        "per_symbol",
    ]
    assert list(out["benchmark"]) == ["symbols", *STATS_KEYS]
    assert list(out["per_symbol"][0]) == [
        "symbol",
        "fills",
        "round_trips",
        "bought_qty",
        "sold_qty",
        "position",
        "realised_pnl",
        "unrealised_pnl",
        "fees",
        "net_pnl",
    ]
    assert out["max_drawdown_duration_s"] == 86400.0
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text) == out
    assert all(
        isinstance(v, (int, float, bool, type(None))) for k, v in out.items() if k not in ("benchmark", "per_symbol")
    )


# From the SDK's backtester ----------------------------------------------------------------------------------------
def test_from_an_sdk_backtest_result() -> None:
    from strategy_sdk import Strategy
    from strategy_sdk.testing import make_bars, run_backtest

    class BuyOnce(Strategy):
        async def on_bar(self, bar):
            if self.position(bar.symbol) == 0 and not self.open_orders:
                await self.buy(bar.symbol, 10)

    bars = make_bars("AAPL", ["100", "101", "102", "104"])
    result = run_backtest(BuyOnce(), bars, slippage_bps=0, fee_bps=0)
    data = BacktestData.from_result(result, bars, name="buy once")
    m = compute_data(data)
    assert m.fills == 1 and m.round_trips == 0
    assert m.final_equity == float(result.final_equity)
    assert m.per_symbol[0].unrealised_pnl == pytest.approx(10 * (104 - 100.01))  # bought at bar 0's ask
    assert m.exposure == 0.75  # the fill is stamped at bar 0's end, the second bar's start
    assert m.periods_per_year == 252 * 390


# Size (speed is measured by `make bench`, never asserted in a test) -----------------------------------------------
def test_a_million_points_compute_to_finite_figures() -> None:
    n = 1_000_000
    rng = np.random.default_rng(1)
    ts = T0 + np.arange(n, dtype=np.int64) * MIN
    equity = (100000 * np.cumprod(1 + rng.normal(0, 0.0005, n))).astype(np.float64)
    prices = {"A": PriceSeries(ts, (100 * np.cumprod(1 + rng.normal(0, 0.0005, n))).astype(np.float64))}
    m = compute([], ts, equity, prices, 100000)
    assert m.bars == n and m.strategy.sharpe is not None and m.benchmark is not None
    assert math.isfinite(m.strategy.sharpe) and math.isfinite(m.strategy.max_drawdown)
