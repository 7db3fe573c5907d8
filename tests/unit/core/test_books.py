"""The pure books (desk.core.books): average cost, realized P&L, flips, fees, cash, exact decimals."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from desk.core.books import Account, Position, Side


def test_a_buy_on_a_flat_book_opens_a_long_at_the_fill_price() -> None:
    p = Position("AAPL")
    assert p.apply_fill(Side.BUY, D(10), D(100), D(0)) == 0
    assert (p.qty, p.avg_cost, p.cost_basis) == (D(10), D(100), D(1000))


def test_a_second_buy_averages_the_cost_by_quantity() -> None:
    p = Position("AAPL")
    p.apply_fill(Side.BUY, D(10), D(100), D(0))
    p.apply_fill(Side.BUY, D(30), D(120), D(0))
    assert p.qty == D(40)
    assert p.avg_cost == D(115)  # (1000 + 3600) / 40


def test_a_partial_sell_realizes_exactly_and_keeps_the_average() -> None:
    p = Position("AAPL")
    p.apply_fill(Side.BUY, D(10), D(100), D(0))
    p.apply_fill(Side.BUY, D(10), D(110), D(0))
    realized = p.apply_fill(Side.SELL, D(5), D("120.50"), D(0))
    assert realized == D("77.50")  # (120.50 - 105) * 5
    assert (p.qty, p.avg_cost, p.realized_pnl) == (D(15), D(105), D("77.50"))


def test_selling_to_flat_realizes_the_whole_round_trip_and_clears_the_cost() -> None:
    p = Position("AAPL")
    p.apply_fill(Side.BUY, D(1), D(10), D(0))
    p.apply_fill(Side.BUY, D(1), D(10), D(0))
    p.apply_fill(Side.BUY, D(1), D(11), D(0))  # average 31/3, not a finite decimal
    p.apply_fill(Side.SELL, D(1), D(12), D(0))
    p.apply_fill(Side.SELL, D(2), D(12), D(0))
    assert p.qty == 0 and p.cost_basis == 0 and p.avg_cost == 0
    assert p.realized_pnl == D(5)  # 36 - 31, exact despite the repeating average


def test_a_sell_larger_than_the_long_flips_to_a_short_at_the_fill_price() -> None:
    p = Position("AAPL")
    p.apply_fill(Side.BUY, D(10), D(100), D(0))
    realized = p.apply_fill(Side.SELL, D(15), D(110), D(0))
    assert realized == D(100)  # closes 10 long at +10 each
    assert (p.qty, p.avg_cost, p.cost_basis) == (D(-5), D(110), D(-550))


def test_a_buy_larger_than_the_short_flips_to_a_long_at_the_fill_price() -> None:
    p = Position("AAPL")
    p.apply_fill(Side.SELL, D(4), D(50), D(0))
    realized = p.apply_fill(Side.BUY, D(10), D(45), D(0))
    assert realized == D(20)  # covers 4 short at +5 each
    assert (p.qty, p.avg_cost) == (D(6), D(45))


def test_covering_a_short_realizes_entry_minus_exit() -> None:
    p = Position("TSLA")
    p.apply_fill(Side.SELL, D(10), D(200), D(0))
    p.apply_fill(Side.SELL, D(10), D(210), D(0))
    assert (p.qty, p.avg_cost) == (D(-20), D(205))
    assert p.apply_fill(Side.BUY, D(5), D(190), D(0)) == D(75)
    assert p.apply_fill(Side.BUY, D(15), D(215), D(0)) == D(-150)
    assert p.qty == 0 and p.realized_pnl == D(-75)


def test_buying_reduces_cash_by_notional_plus_fee_and_selling_adds_notional_minus_fee() -> None:
    a = Account(initial_cash=D(100), cash=D(100))
    a.apply_fill(Side.BUY, D(2), D("10.5"), D("0.1"), D(0))
    assert a.cash == D("78.9")
    a.apply_fill(Side.SELL, D(1), D(11), D("0.1"), D("0.5"))
    assert a.cash == D("89.8")


def test_unrealized_pnl_is_signed_for_longs_and_shorts() -> None:
    long, short = Position("A"), Position("B")
    long.apply_fill(Side.BUY, D(10), D(100), D(0))
    short.apply_fill(Side.SELL, D(10), D(100), D(0))
    assert long.unrealized_pnl(D(103)) == D(30)
    assert short.unrealized_pnl(D(103)) == D(-30)
    assert short.market_value(D(103)) == D(-1030)
    assert long.unrealized_pnl(None) == 0 and long.market_value(None) == D(1000)  # marked at cost


def test_decimal_arithmetic_is_exact_where_floats_are_not() -> None:
    p = Position("X")
    a = Account(initial_cash=D("0.3"), cash=D("0.3"))
    for qty, price in ((D("0.1"), D(1)), (D("0.2"), D(1))):
        p.apply_fill(Side.BUY, qty, price, D(0))
        a.apply_fill(Side.BUY, qty, price, D(0), D(0))
    assert p.qty == D("0.3") and a.cash == 0  # 0.1 + 0.2 == 0.3 exactly
    realized = p.apply_fill(Side.SELL, D("0.3"), D("1.1"), D(0))
    assert realized == D("0.03")
    assert all(type(v) is D for v in (p.qty, p.cost_basis, p.realized_pnl, p.avg_cost, a.cash))


def test_invalid_fills_are_refused() -> None:
    with pytest.raises(ValueError):
        Position("X").apply_fill(Side.BUY, D(0), D(1), D(0))
    with pytest.raises(ValueError):
        Position("X").apply_fill(Side.BUY, D(1), D(-1), D(0))
