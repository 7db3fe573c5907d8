"""The dashboard's performance math: drawdown, Sharpe, combined curves, buy-and-hold, ranking."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.dashboard import metrics
from services.dashboard.metrics import Performance

S = 1_000_000_000  # one second in ns


def d(*values: str | int) -> list[Decimal]:
    return [Decimal(v) for v in values]


def test_drawdown_is_the_largest_fall_from_a_running_peak_as_a_fraction_of_it() -> None:
    # Peak 120 -> 90 is 25 %; the later 110 -> 100 is only 9 %.
    assert metrics.max_drawdown(d(100, 120, 90, 110, 100)) == Decimal("0.25")


def test_drawdown_is_zero_for_a_curve_that_never_falls_or_is_too_short() -> None:
    assert metrics.max_drawdown(d(100, 101, 101, 105)) == 0
    assert metrics.max_drawdown(d(100)) == 0
    assert metrics.max_drawdown([]) == 0


def test_drawdown_counts_a_fall_below_the_start_and_a_new_peak_resets_it() -> None:
    assert metrics.max_drawdown(d(100, 80, 200, 190)) == Decimal("0.2")


def test_period_returns_are_simple_returns_between_snapshots() -> None:
    assert metrics.period_returns(d(100, 110, 99)) == [Decimal("0.1"), Decimal("-0.1")]


def test_median_interval_of_even_and_odd_gap_counts() -> None:
    assert metrics.median_interval_ns([0, 10, 30]) == 15
    assert metrics.median_interval_ns([0, 10, 20, 100]) == 10
    assert metrics.median_interval_ns([5]) == 0


def test_sharpe_is_mean_over_sample_std_annualised_by_snapshot_frequency() -> None:
    # Returns +10 % and -5 % (one-second snapshots): mean 0.025, sample std 0.10606...
    points = [(0, Decimal(100)), (S, Decimal(110)), (2 * S, Decimal("104.5"))]
    per_period = Decimal("0.025") / (Decimal("0.1") - Decimal("-0.05")).copy_abs() * Decimal(2).sqrt()
    expected = per_period * (Decimal(252 * 6.5 * 3600)).sqrt()
    assert metrics.sharpe_ratio(points, min_span_ns=0) == pytest.approx(expected, rel=Decimal("1e-20"))


def test_sharpe_scales_with_the_square_root_of_the_snapshot_frequency() -> None:
    fast = [(i * S, v) for i, v in enumerate(d(100, 110, "104.5", 107))]
    slow = [(i * 4 * S, v) for i, v in enumerate(d(100, 110, "104.5", 107))]
    ratio_fast, ratio_slow = metrics.sharpe_ratio(fast, min_span_ns=0), metrics.sharpe_ratio(slow, min_span_ns=0)
    assert ratio_fast is not None and ratio_slow is not None
    assert ratio_fast / ratio_slow == pytest.approx(Decimal(2))


def test_sharpe_is_undefined_without_enough_points_or_without_variation() -> None:
    assert metrics.sharpe_ratio([(0, Decimal(100)), (S, Decimal(101))], min_span_ns=0) is None
    assert metrics.sharpe_ratio([(i * S, Decimal(100)) for i in range(5)], min_span_ns=0) is None


def test_sharpe_needs_a_trading_day_of_snapshots() -> None:
    """Minutes of seconds-apart snapshots, annualised, gave figures like 348: no Sharpe below a day."""
    values = d(100, 110, "104.5", 107)
    short = [(i * 60 * S, v) for i, v in enumerate(values)]  # three minutes
    day = [(i * 7800 * S, v) for i, v in enumerate(values)]  # 3 x 2h10 = 6.5 hours
    assert metrics.sharpe_ratio(short) is None
    assert metrics.sharpe_ratio(day) == metrics.sharpe_ratio(day, min_span_ns=0) is not None
    assert metrics.MIN_SHARPE_SPAN_NS == 23_400 * S


def test_sharpe_is_negative_for_a_losing_curve() -> None:
    ratio = metrics.sharpe_ratio([(i * S, v) for i, v in enumerate(d(100, 98, 97, 93))], min_span_ns=0)
    assert ratio is not None and ratio < 0


def test_combined_curve_sums_the_latest_value_of_each_and_holds_late_starters_flat() -> None:
    combined = metrics.combine_series(
        {"a": [(1, Decimal(100)), (3, Decimal(110))], "b": [(2, Decimal(50)), (3, Decimal(40))]}
    )
    # At t=1 "b" has not started: it counts its first value (50), not zero.
    assert combined == [(1, Decimal(150)), (2, Decimal(150)), (3, Decimal(150))]


def test_combined_curve_of_nothing_is_empty() -> None:
    assert metrics.combine_series({"a": []}) == []


def test_price_at_takes_the_latest_price_at_or_before_the_time() -> None:
    prices = [(10, Decimal(1)), (20, Decimal(2))]
    assert metrics.price_at(prices, 5) is None
    assert metrics.price_at(prices, 10) == 1
    assert metrics.price_at(prices, 19) == 1
    assert metrics.price_at(prices, 25) == 2


def test_buy_and_hold_invests_the_equity_at_the_first_priced_snapshot() -> None:
    equity = [(5, Decimal(1000)), (10, Decimal(1000)), (20, Decimal(1100)), (30, Decimal(900))]
    prices = [(8, Decimal(50)), (18, Decimal(55)), (29, Decimal(45))]
    # t=5 has no price yet and is left out; at t=10 1000 buys 20 shares at 50.
    assert metrics.buy_and_hold(equity, prices) == [(10, Decimal(1000)), (20, Decimal(1100)), (30, Decimal(900))]


def test_buy_and_hold_without_prices_is_empty() -> None:
    assert metrics.buy_and_hold([(1, Decimal(1))], []) == []


def perf(key: str, ret: str, pnl: str, dd: str = "0") -> Performance:
    return Performance(key, "m", Decimal(0), Decimal(pnl), Decimal(ret), Decimal(dd), None, 1)


def test_rank_orders_by_return_then_pnl_then_drawdown_then_name() -> None:
    rows = [
        perf("c", "1", "5"),
        perf("a", "2", "1"),
        perf("b", "1", "5", "0.1"),
        perf("d", "1", "7"),
        perf("e", "1", "5"),
    ]
    assert [r.key for r in metrics.rank(rows)] == ["a", "d", "c", "e", "b"]
