"""The netting rule (services/broker_gateway/brokers/netting.py): scenarios of two strategies on one account."""

from __future__ import annotations

from decimal import Decimal

from services.broker_gateway.brokers.netting import (
    Cross,
    NetOrder,
    accepts,
    allocate,
    could_wash,
    effective_type,
    fair_price,
    plan,
    triggered,
)

D = Decimal


def order(
    oid: str,
    strategy: str,
    side: str,
    qty: str,
    kind: str = "market",
    limit: str | None = None,
    created: int = 0,
    symbol: str = "AAPL",
) -> NetOrder:
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


def test_a_limit_the_wrong_side_of_the_fair_price_is_pulled_for_a_market_order_not_a_lock_out() -> None:
    resting = [order("a1", "alpha", "buy", "5", "limit", "90")]
    result = plan(order("b1", "beta", "sell", "3"), resting, D("100"))
    assert (result.crosses, result.send_qty, result.pulls) == ((), D("3"), ("a1",))
    assert result.conflict is None and result.hold is None


def test_non_crossing_limits_on_both_sides_may_rest_together_at_the_broker() -> None:
    resting = [order("a1", "alpha", "buy", "5", "limit", "90")]
    result = plan(order("b1", "beta", "sell", "3", "limit", "110"), resting, D("100"))
    assert (result.crosses, result.send_qty, result.conflict, result.pulls) == ((), D("3"), None, ())


def test_a_strategy_never_crosses_itself_and_its_own_opposite_order_is_a_conflict_naming_it() -> None:
    resting = [order("a1", "alpha", "buy", "5", "limit", "101"), order("g1", "gamma", "buy", "5", "limit", "90")]
    result = plan(order("a2", "alpha", "sell", "5"), resting, D("100"))
    assert result.crosses == () and result.send_qty == 0 and result.pulls == ()
    assert result.conflict is not None and "this strategy's own resting buy limit 101 order a1" in result.conflict
    assert "cancel that order first" in result.conflict


def test_without_a_fair_price_nothing_is_crossed_and_a_market_order_pulls_the_resting_one() -> None:
    resting = [order("a1", "alpha", "buy", "5", "limit", "101")]
    result = plan(order("b1", "beta", "sell", "5"), resting, None)
    assert (result.crosses, result.send_qty, result.pulls, result.conflict) == ((), D("5"), ("a1",), None)


def test_without_a_fair_price_a_limit_that_could_meet_another_strategys_order_is_held_at_the_desk() -> None:
    resting = [order("a1", "alpha", "buy", "5", "limit", "101")]
    result = plan(order("b1", "beta", "sell", "5", "limit", "100"), resting, None)
    assert (result.crosses, result.send_qty, result.pulls, result.conflict) == ((), D(0), (), None)
    assert result.hold is not None and "no fresh Alpaca price" in result.hold and "alpha" in result.hold


def stop(oid: str, strategy: str, side: str, qty: str, stop_price: str, limit: str | None = None) -> NetOrder:
    kind = "stop_limit" if limit else "stop"
    return NetOrder(oid, strategy, "AAPL", side, kind, D(qty), D(limit) if limit else None, D(stop_price))


def test_a_resting_stop_is_never_crossed_but_pulled_for_a_market_order() -> None:
    resting = [stop("a1", "alpha", "sell", "5", "90")]
    result = plan(order("b1", "beta", "buy", "5"), resting, D("100"))
    assert (result.crosses, result.send_qty, result.pulls) == ((), D("5"), ("a1",))


def test_a_limit_that_would_rest_opposite_another_strategys_stop_is_held_not_refused() -> None:
    resting = [stop("a1", "alpha", "sell", "5", "90")]
    result = plan(order("b1", "beta", "buy", "5", "limit", "95"), resting, D("100"))
    assert (result.send_qty, result.pulls, result.conflict) == (D(0), (), None)
    assert result.hold is not None and "would rest at the fair price 100" in result.hold
    # once the fair price reaches its limit it executes now: the stop is pulled and it is sent
    ready = plan(order("b1", "beta", "buy", "5", "limit", "95"), resting, D("95"))
    assert (ready.send_qty, ready.pulls, ready.hold) == (D("5"), ("a1",), None)


def test_an_incoming_stop_is_held_until_triggered_then_crosses_as_a_market_order() -> None:
    resting = [order("a1", "alpha", "sell", "5", "limit", "99")]
    waiting = plan(stop("b1", "beta", "buy", "5", "105"), resting, D("100"))  # 99 accepts 100; the stop does not
    assert waiting.hold is not None and waiting.crosses == ()
    fired = plan(stop("b1", "beta", "buy", "5", "105"), resting, D("106"))
    assert fired.crosses == (Cross("b1", "a1", D("5"), D("106")),) and fired.send_qty == 0
    assert effective_type(stop("x", "s", "buy", "1", "105", "107"), D("106")) == "limit"
    assert not triggered(stop("x", "s", "sell", "1", "90"), D("91")) and triggered(
        stop("x", "s", "sell", "1", "90"), D("90")
    )


def test_partial_crosses_then_the_rest_pulls_what_still_blocks_it_and_keeps_leaves_exact() -> None:
    resting = [
        order("a1", "alpha", "sell", "4", "limit", "99", created=1),
        order("g1", "gamma", "sell", "10", "limit", "120", created=2),
    ]
    result = plan(order("b1", "beta", "buy", "10"), resting, D("100"))
    assert result.crosses == (Cross("b1", "a1", D("4"), D("100")),)
    assert (result.send_qty, result.pulls) == (D("6"), ("g1",))  # a1 has no leaves left: nothing to pull


def notional(oid: str, strategy: str, side: str, value: str) -> NetOrder:
    return NetOrder(oid, strategy, "AAPL", side, "market", D(0), notional=D(value))


def test_a_notional_order_is_converted_at_the_fair_price_and_its_rest_is_sent_by_value() -> None:
    resting = [order("a1", "alpha", "sell", "3", "limit", "99")]
    result = plan(notional("b1", "beta", "buy", "1000"), resting, D("100"))
    assert result.crosses == (Cross("b1", "a1", D("3"), D("100")),)
    assert (result.send_notional, result.pulls, result.sends) == (D("700.00"), (), True)
    # fully crossed: nothing sent; a resting order keeps whole-share leaves
    big = [order("a1", "alpha", "sell", "20", "limit", "99")]
    whole = plan(notional("b1", "beta", "buy", "1050"), big, D("100"))
    assert whole.crosses == (Cross("b1", "a1", D("10"), D("100")),) and whole.send_notional == D("50.00")
    exact = plan(notional("b1", "beta", "buy", "500"), big, D("100"))
    assert exact.crosses == (Cross("b1", "a1", D("5"), D("100")),) and not exact.sends


def test_a_notional_order_without_a_fair_price_is_not_crossed_and_pulls_what_it_could_meet() -> None:
    resting = [order("a1", "alpha", "sell", "3", "limit", "99")]
    result = plan(notional("b1", "beta", "buy", "1000"), resting, None)
    assert (result.crosses, result.send_notional, result.pulls) == ((), D("1000.00"), ("a1",))


def test_a_resting_notional_order_is_waited_for_not_pulled() -> None:
    resting = [notional("a1", "alpha", "sell", "500")]
    result = plan(order("b1", "beta", "buy", "5"), resting, D("100"))
    assert result.crosses == () and result.pulls == () and result.hold is not None and "notional" in result.hold


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
