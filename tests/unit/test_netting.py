"""The netting rule (services/broker_gateway/brokers/netting.py): scenarios of two strategies on one account."""

from __future__ import annotations

from decimal import Decimal

from services.broker_gateway.brokers.netting import Cross, NetOrder, accepts, allocate, could_wash, fair_price, plan

D = Decimal


def order(oid: str, strategy: str, side: str, qty: str, kind: str = "market", limit: str | None = None,
          created: int = 0, symbol: str = "AAPL") -> NetOrder:
    return NetOrder(oid, strategy, symbol, side, kind, D(qty), D(limit) if limit else None, None, created)


def test_fair_price_is_the_mid_of_a_sane_quote_else_the_last_trade() -> None:
    assert fair_price(D("100"), D("99.9"), D("100.1")) == D("100")
    assert fair_price(D("100"), D("101"), D("100")) == D("100")  # crossed quote: not trusted
    assert fair_price(D("100")) == D("100")
    assert fair_price(None) is None


def test_a_market_sell_crosses_another_strategys_resting_buy_that_accepts_the_fair_price() -> None:
    resting = [order("a1", "alpha", "buy", "10", "limit", "101")]
    result = plan(order("b1", "beta", "sell", "6"), resting, D("100"))
    assert result.crosses == (Cross("b1", "a1", D("6"), D("100")),)
    assert (result.send_qty, result.conflict) == (D(0), None)


def test_the_net_of_a_bigger_order_goes_to_the_broker_once_nothing_opposite_rests() -> None:
    resting = [order("a1", "alpha", "buy", "4", "limit", "101")]
    result = plan(order("b1", "beta", "sell", "10"), resting, D("100"))
    assert result.crossed_qty == D("4") and result.send_qty == D("6") and result.conflict is None


def test_crossing_is_oldest_first_across_several_strategies() -> None:
    resting = [order("g1", "gamma", "buy", "3", created=2), order("a1", "alpha", "buy", "5", "limit", "100", created=1)]
    result = plan(order("b1", "beta", "sell", "7"), resting, D("100"))
    assert [(c.resting_order_id, c.qty) for c in result.crosses] == [("a1", D("5")), ("g1", D("2"))]


def test_a_limit_that_does_not_accept_the_fair_price_is_not_crossed_and_blocks_a_market_order() -> None:
    resting = [order("a1", "alpha", "buy", "5", "limit", "90")]
    result = plan(order("b1", "beta", "sell", "3"), resting, D("100"))
    assert result.crosses == () and result.send_qty == 0
    assert result.conflict is not None and "wash trade" in result.conflict and "alpha" in result.conflict


def test_non_crossing_limits_on_both_sides_may_rest_together_at_the_broker() -> None:
    resting = [order("a1", "alpha", "buy", "5", "limit", "90")]
    result = plan(order("b1", "beta", "sell", "3", "limit", "110"), resting, D("100"))
    assert (result.crosses, result.send_qty, result.conflict) == ((), D("3"), None)


def test_a_strategy_never_crosses_itself_and_its_own_opposite_order_is_a_conflict() -> None:
    resting = [order("a1", "alpha", "buy", "5", "limit", "101")]
    result = plan(order("a2", "alpha", "sell", "5"), resting, D("100"))
    assert result.crosses == () and result.conflict is not None and "its own" in result.conflict


def test_without_a_fair_price_nothing_is_crossed() -> None:
    resting = [order("a1", "alpha", "buy", "5", "limit", "101")]
    result = plan(order("b1", "beta", "sell", "5"), resting, None)
    assert result.crosses == () and result.conflict is not None


def test_other_symbols_and_same_side_orders_are_ignored() -> None:
    resting = [order("a1", "alpha", "buy", "5", "limit", "101", symbol="MSFT"), order("g1", "gamma", "sell", "5")]
    result = plan(order("b1", "beta", "sell", "5"), resting, D("100"))
    assert (result.crosses, result.send_qty, result.conflict) == ((), D("5"), None)


def test_acceptance_and_wash_rules() -> None:
    assert accepts(order("x", "s", "buy", "1", "limit", "100"), D("100"))
    assert not accepts(order("x", "s", "buy", "1", "limit", "99.99"), D("100"))
    assert accepts(order("x", "s", "sell", "1", "limit", "99"), D("100"))
    assert not accepts(NetOrder("x", "s", "AAPL", "sell", "stop", D(1), None, D(90)), D("100"))
    assert could_wash(order("x", "s", "buy", "1", "limit", "101"), order("y", "t", "sell", "1", "limit", "100"))
    assert not could_wash(order("x", "s", "buy", "1", "limit", "99"), order("y", "t", "sell", "1", "limit", "100"))
    assert not could_wash(order("x", "s", "buy", "1"), order("y", "t", "sell", "0", "limit", "100"))


def test_a_partial_fill_is_allocated_first_come_first_filled_and_exactly() -> None:
    assert allocate(D("7"), [("a", D("5")), ("b", D("5"))]) == [("a", D("5")), ("b", D("2"))]
    assert allocate(D("0.5"), [("a", D("0.25")), ("b", D("1"))]) == [("a", D("0.25")), ("b", D("0.25"))]
    assert sum(q for _, q in allocate(D("3"), [("a", D("1")), ("b", D("1"))])) == D("2")
