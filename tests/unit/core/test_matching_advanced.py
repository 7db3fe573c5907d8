"""The sim engine's advanced orders: trailing stop, replace, bracket, OCO and OTO (fake clock, exact
Decimals, no I/O), and their restore after a crash."""

from __future__ import annotations

import itertools
from decimal import Decimal

import pytest

from desk.core.ids import order_id_for
from desk.core.matching import SimConfig, SimEngine
from desk.v1 import common_pb2, executions_pb2, marketdata_pb2, orders_pb2
from tests.unit.core.test_matching import DAY1, SEC, FakeClock, bar, kinds

E = executions_pb2
D = Decimal
BUY, SELL = common_pb2.SIDE_BUY, common_pb2.SIDE_SELL
MARKET, LIMIT, STOP = common_pb2.ORDER_TYPE_MARKET, common_pb2.ORDER_TYPE_LIMIT, common_pb2.ORDER_TYPE_STOP
TRAILING = common_pb2.ORDER_TYPE_TRAILING_STOP
GTC = common_pb2.TIME_IN_FORCE_GTC


@pytest.fixture
def engine() -> SimEngine:
    # no slippage, no fee: the prices below are the model's exactly
    return SimEngine(SimConfig(slippage_bps=D(0), fee_bps=D(0)), clock=FakeClock())


def oid(cid: str) -> str:
    return order_id_for("alpha", cid)


def routed(cid: str, **fields: object) -> orders_pb2.RoutedOrder:
    values: dict[str, object] = {"time_in_force": GTC, "qty": "10", "side": BUY, "type": MARKET} | fields
    request = orders_pb2.OrderRequest(strategy_id="alpha", client_order_id=cid, symbol="AAPL", **values)  # type: ignore[arg-type]
    return orders_pb2.RoutedOrder(order_id=oid(cid), strategy_id="alpha", member_id="m1", new_order=request)


def cancel(cid: str) -> orders_pb2.RoutedOrder:
    return orders_pb2.RoutedOrder(
        order_id=oid(cid),
        strategy_id="alpha",
        member_id="m1",
        cancel=orders_pb2.CancelRequest(strategy_id="alpha", client_order_id=cid),
    )


def trade(price: str, ts: int = 0) -> marketdata_pb2.Trade:
    return marketdata_pb2.Trade(symbol="AAPL", price=price, ts_ns=DAY1 + ts * SEC)


def by_cid(reports: list[executions_pb2.ExecutionReport]) -> list[tuple[str, str]]:
    return [(r.client_order_id, E.ExecType.Name(r.exec_type).removeprefix("EXEC_TYPE_")) for r in reports]


# --- trailing stop ----------------------------------------------------------------------------------


def test_a_sell_trailing_stop_ratchets_up_with_the_high_and_triggers_as_a_market_order(engine: SimEngine) -> None:
    engine.on_trade(trade("100"))
    new = engine.submit(routed("t1", side=SELL, type=TRAILING, trail_price="2"))
    assert kinds(new) == ["NEW"]
    assert (new[0].stop_price, new[0].hwm, new[0].trail_price) == ("98", "100", "2")
    assert engine.on_trade(trade("104", 1)) == []  # the stop moves up to 102
    assert engine.on_trade(trade("103", 2)) == []  # never down again
    assert engine.get(oid("t1")).stop_price == D(102)  # type: ignore[union-attr]
    fill = engine.on_trade(trade("101.5", 3))
    assert kinds(fill) == ["FILL"]
    assert (fill[0].fill_price, fill[0].stop_price, fill[0].hwm) == ("101.5", "102", "104")


def test_a_buy_trailing_stop_in_percent_follows_the_low(engine: SimEngine) -> None:
    engine.on_trade(trade("100"))
    engine.submit(routed("t1", side=BUY, type=TRAILING, trail_percent="5"))
    assert engine.get(oid("t1")).stop_price == D(105)  # type: ignore[union-attr]
    assert engine.on_trade(trade("90", 1)) == []
    assert engine.get(oid("t1")).stop_price == D("94.5")  # type: ignore[union-attr]
    fill = engine.on_trade(trade("95", 2))
    assert kinds(fill) == ["FILL"] and fill[0].fill_price == "95"


def test_a_bar_checks_the_trailing_stop_before_its_high_raises_it(engine: SimEngine) -> None:
    engine.on_trade(trade("100"))
    engine.submit(routed("t1", side=SELL, type=TRAILING, trail_price="2"))
    # high 110 would lift the stop to 108, low 99 is above the stop of 98: no trigger, then ratchet
    assert engine.on_bar(bar("100", "110", "99", "109")) == []
    assert engine.get(oid("t1")).stop_price == D(108)  # type: ignore[union-attr]
    gap = engine.on_bar(bar("105", "106", "104", "105", start_ns=DAY1 + 60 * SEC))
    assert gap[0].fill_price == "105"  # gapped through the stop: the open


def test_trailing_stop_fields_are_checked_at_the_venue(engine: SimEngine) -> None:
    both = engine.submit(routed("t1", side=SELL, type=TRAILING, trail_price="1", trail_percent="1"))
    assert kinds(both) == ["REJECTED"] and "exactly one of trail_price and trail_percent" in both[0].text
    stray = engine.submit(routed("t2", side=SELL, type=LIMIT, limit_price="100", trail_price="1"))
    assert kinds(stray) == ["REJECTED"] and "TRAILING_STOP orders only" in stray[0].text


def test_a_trailing_stop_is_restored_where_its_last_report_left_it() -> None:
    first = SimEngine(SimConfig(slippage_bps=D(0), fee_bps=D(0)), clock=FakeClock())
    first.on_trade(trade("100"))
    stored = first.submit(routed("t1", side=SELL, type=TRAILING, trail_price="2", qty="10"))
    second = SimEngine(SimConfig(slippage_bps=D(0), fee_bps=D(0)), clock=FakeClock())
    assert second.restore(stored) == []
    restored = second.get(oid("t1"))
    assert restored is not None and (restored.hwm, restored.stop_price, restored.trail_price) == (D(100), D(98), D(2))
    assert kinds(second.on_trade(trade("97.9", 1))) == ["FILL"]


# --- replace ------------------------------------------------------------------------------------------


def test_replace_closes_the_old_order_and_rests_the_new_one_with_the_rest_of_the_total(engine: SimEngine) -> None:
    engine.on_bar(bar("100", "100", "100", "100", volume="16"))  # 4 shares available per update
    first = engine.submit(routed("l1", type=LIMIT, limit_price="100"))
    assert kinds(first) == ["NEW", "PARTIAL_FILL"] and first[-1].cum_qty == "4"
    reports = engine.submit(routed("l2", type=LIMIT, limit_price="95", qty="12", replaces="l1"))
    assert by_cid(reports) == [("l1", "CANCELED"), ("l2", "NEW")]
    old, new = reports
    assert old.status == E.ORDER_STATUS_CANCELED and old.text == "replaced by l2" and old.cum_qty == "4"
    assert (new.order_qty, new.limit_price, new.replaces) == ("8", "95", oid("l1"))  # 12 in all, 4 filled
    assert [o.client_order_id for o in engine.open_orders()] == ["l2"]


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"replaces": "nope"}, "UNKNOWN_ORDER: no order nope"),
        ({"replaces": "done"}, "ORDER_CLOSED: order done is already filled"),
        ({"replaces": "l1", "qty": "4"}, "must be more than the 4 that l1 has filled"),
        ({"replaces": "l1", "side": SELL}, "keeps the symbol, side and type"),
    ],
)
def test_a_replace_that_cannot_be_done_is_rejected_and_the_old_order_stays(
    engine: SimEngine, fields: dict[str, object], text: str
) -> None:
    engine.on_bar(bar("100", "100", "100", "100", volume="16"))
    assert kinds(engine.submit(routed("done", qty="1"))) == ["NEW", "FILL"]
    engine.submit(routed("l1", type=LIMIT, limit_price="100"))  # 3 left of this update's 4: fills 3
    engine.on_bar(bar("100", "100", "100", "100", volume="4", start_ns=DAY1 + SEC))  # one more: 4 filled
    assert engine.get(oid("l1")).cum_qty == D(4)  # type: ignore[union-attr]
    request: dict[str, object] = {"type": LIMIT, "limit_price": "99"} | fields
    reports = engine.submit(routed("r1", **request))
    assert kinds(reports) == ["REJECTED"] and text in reports[0].text
    assert engine.get(oid("l1")).is_final is False  # type: ignore[union-attr]


# --- OCO, bracket, OTO ---------------------------------------------------------------------------------


def test_an_oco_rests_both_exits_and_a_fill_of_one_cancels_the_other(engine: SimEngine) -> None:
    engine.on_trade(trade("100"))
    reports = engine.submit(
        routed(
            "x1",
            side=SELL,
            type=LIMIT,
            order_class=orders_pb2.ORDER_CLASS_OCO,
            take_profit_limit_price="110",
            stop_loss_stop_price="95",
        )
    )
    assert by_cid(reports) == [("x1", "NEW"), ("x1-sl", "NEW")]
    take_profit, stop_loss = reports
    assert (take_profit.limit_price, stop_loss.type, stop_loss.stop_price) == ("110", STOP, "95")
    assert stop_loss.parent_order_id == oid("x1") and stop_loss.side == SELL
    hit = engine.on_trade(trade("94", 1))
    assert by_cid(hit) == [("x1-sl", "FILL"), ("x1", "CANCELED")]
    assert hit[1].text == "OCO: x1-sl filled"
    assert engine.open_orders() == []


def test_a_partial_fill_of_one_oco_exit_reduces_the_other(engine: SimEngine) -> None:
    engine.on_trade(trade("100"))
    engine.submit(
        routed(
            "x1",
            side=SELL,
            type=LIMIT,
            order_class=orders_pb2.ORDER_CLASS_OCO,
            take_profit_limit_price="110",
            stop_loss_stop_price="95",
        )
    )
    part = engine.on_trade(marketdata_pb2.Trade(symbol="AAPL", price="111", size="16", ts_ns=DAY1 + SEC))
    assert by_cid(part) == [("x1", "PARTIAL_FILL")] and part[0].fill_qty == "4"
    stop_loss = engine.get(oid("x1-sl"))
    assert stop_loss is not None and stop_loss.qty == D(6)
    rest = engine.on_trade(trade("94", 2))
    assert by_cid(rest) == [("x1-sl", "FILL"), ("x1", "CANCELED")]
    assert rest[0].fill_qty == "6"  # 4 + 6 = the 10 of the position, never more


def test_canceling_one_oco_exit_cancels_both(engine: SimEngine) -> None:
    engine.on_trade(trade("100"))
    engine.submit(
        routed(
            "x1",
            side=SELL,
            type=LIMIT,
            order_class=orders_pb2.ORDER_CLASS_OCO,
            take_profit_limit_price="110",
            stop_loss_stop_price="95",
        )
    )
    assert by_cid(engine.cancel(cancel("x1-sl"))) == [("x1-sl", "CANCELED"), ("x1", "CANCELED")]
    assert engine.open_orders() == []


def test_a_bracket_places_its_exits_when_the_entry_fills_and_they_are_oco(engine: SimEngine) -> None:
    engine.on_trade(trade("100"))
    reports = engine.submit(
        routed(
            "b1",
            type=LIMIT,
            limit_price="99",
            order_class=orders_pb2.ORDER_CLASS_BRACKET,
            take_profit_limit_price="105",
            stop_loss_stop_price="95",
            stop_loss_limit_price="94",
        )
    )
    assert by_cid(reports) == [("b1", "NEW")]  # exits wait for the entry
    assert reports[0].take_profit_limit_price == "105" and reports[0].order_class == orders_pb2.ORDER_CLASS_BRACKET
    assert engine.on_trade(trade("120", 1)) == []  # the take-profit does not exist yet
    filled = engine.on_trade(trade("99", 2))
    assert by_cid(filled) == [("b1", "FILL"), ("b1-tp", "NEW"), ("b1-sl", "NEW")]
    tp, sl = filled[1], filled[2]
    assert (tp.side, tp.type, tp.limit_price, tp.order_qty) == (SELL, LIMIT, "105", "10")
    assert (sl.type, sl.stop_price, sl.limit_price) == (common_pb2.ORDER_TYPE_STOP_LIMIT, "95", "94")
    assert tp.parent_order_id == sl.parent_order_id == oid("b1")
    exit_ = engine.on_trade(trade("106", 3))
    assert by_cid(exit_) == [("b1-tp", "FILL"), ("b1-sl", "CANCELED")]
    assert exit_[0].fill_price == "106"


def test_a_bracket_entry_canceled_after_a_partial_fill_protects_what_it_bought(engine: SimEngine) -> None:
    engine.on_trade(marketdata_pb2.Trade(symbol="AAPL", price="100", size="12", ts_ns=DAY1))  # 3 available
    engine.submit(
        routed(
            "b1", order_class=orders_pb2.ORDER_CLASS_BRACKET, take_profit_limit_price="105", stop_loss_stop_price="95"
        )
    )
    reports = engine.cancel(cancel("b1"))
    assert by_cid(reports) == [("b1", "CANCELED"), ("b1-tp", "NEW"), ("b1-sl", "NEW")]
    assert reports[1].order_qty == reports[2].order_qty == "3"


def test_an_oto_places_its_one_exit_on_the_entry_fill(engine: SimEngine) -> None:
    engine.on_trade(trade("100"))
    reports = engine.submit(routed("o1", order_class=orders_pb2.ORDER_CLASS_OTO, stop_loss_stop_price="90"))
    assert by_cid(reports) == [("o1", "NEW"), ("o1", "FILL"), ("o1-sl", "NEW")]
    assert engine.get(oid("o1-sl")).oco_with == ""  # type: ignore[union-attr]


def test_a_replaced_exit_keeps_its_oco_partner(engine: SimEngine) -> None:
    engine.on_trade(trade("100"))
    engine.submit(
        routed(
            "b1", order_class=orders_pb2.ORDER_CLASS_BRACKET, take_profit_limit_price="105", stop_loss_stop_price="95"
        )
    )
    moved = engine.submit(routed("b1-sl2", side=SELL, type=STOP, stop_price="98", replaces="b1-sl"))
    assert by_cid(moved) == [("b1-sl", "CANCELED"), ("b1-sl2", "NEW")]
    assert by_cid(engine.on_trade(trade("97", 1))) == [("b1-sl2", "FILL"), ("b1-tp", "CANCELED")]


def test_a_restart_restores_the_oco_ties_and_places_exits_a_crash_left_unplaced() -> None:
    ids = itertools.count(1)
    first = SimEngine(
        SimConfig(slippage_bps=D(0), fee_bps=D(0)), clock=FakeClock(), new_execution_id=lambda: f"e{next(ids)}"
    )
    first.on_trade(trade("100"))
    stored = first.submit(
        routed(
            "b1", order_class=orders_pb2.ORDER_CLASS_BRACKET, take_profit_limit_price="105", stop_loss_stop_price="95"
        )
    )
    assert by_cid(stored) == [("b1", "NEW"), ("b1", "FILL"), ("b1-tp", "NEW"), ("b1-sl", "NEW")]

    whole = SimEngine(SimConfig(slippage_bps=D(0), fee_bps=D(0)), clock=FakeClock())
    assert whole.restore(stored) == []
    assert by_cid(whole.on_trade(trade("94", 1))) == [("b1-sl", "FILL"), ("b1-tp", "CANCELED")]

    crashed = SimEngine(SimConfig(slippage_bps=D(0), fee_bps=D(0)), clock=FakeClock())
    made = crashed.restore(stored[:2])  # the exits' NEW reports never reached EXECUTIONS
    assert by_cid(made) == [("b1-tp", "NEW"), ("b1-sl", "NEW")]
    assert [r.execution_id for r in made] == [f"{oid('b1-tp')}-1", f"{oid('b1-sl')}-1"]
