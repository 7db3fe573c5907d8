"""Validation (desk.core.orders) and pre-trade risk (desk.core.risk) of the advanced orders: trailing
stop, replace, bracket, OCO and OTO."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from desk.bus.errors import DeskError
from desk.core.ids import order_id_for
from desk.core.orders import ORDER_CLASSES, ORDER_TYPES, validate_order
from desk.core.risk import DEFAULT_LIMITS, VirtualAccount
from desk.v1 import common_pb2, executions_pb2, orders_pb2
from tests.unit.core.test_orders import SUBJECT, _order

SELL = common_pb2.SIDE_SELL
TRAILING = common_pb2.ORDER_TYPE_TRAILING_STOP
LIMIT = common_pb2.ORDER_TYPE_LIMIT
BRACKET, OCO, OTO = orders_pb2.ORDER_CLASS_BRACKET, orders_pb2.ORDER_CLASS_OCO, orders_pb2.ORDER_CLASS_OTO


def _refused(**fields: Any) -> str:
    with pytest.raises(DeskError) as refused:
        validate_order(_order(**fields), SUBJECT)
    assert refused.value.code == "INVALID_FIELD" and refused.value.status == 400
    return refused.value.message


def test_the_words_of_the_new_type_and_classes() -> None:
    assert ORDER_TYPES["trailing_stop"] == TRAILING
    assert list(ORDER_CLASSES) == ["simple", "bracket", "oco", "oto"]


def test_a_trailing_stop_takes_exactly_one_trail() -> None:
    order = validate_order(_order(side=SELL, type=TRAILING, trail_percent="1.5"), SUBJECT)
    assert (order.trail_percent, order.trail_price, order.stop_price) == (Decimal("1.5"), None, None)
    assert "exactly one of trail_price and trail_percent" in _refused(type=TRAILING)
    assert "exactly one" in _refused(type=TRAILING, trail_price="1", trail_percent="1")
    assert "below 100" in _refused(type=TRAILING, trail_percent="100")
    assert "DAY or GTC" in _refused(type=TRAILING, trail_price="1", time_in_force=common_pb2.TIME_IN_FORCE_IOC)
    assert "stop_price is not allowed" in _refused(type=TRAILING, trail_price="1", stop_price="99")
    assert "TRAILING_STOP orders only" in _refused(type=LIMIT, limit_price="1", trail_price="1")


def test_a_replace_names_another_order_and_carries_qty() -> None:
    order = validate_order(_order(client_order_id="c-2", replaces="c-1", type=LIMIT, limit_price="99"), SUBJECT)
    assert order.replaces == "c-1"
    assert "its own" in _refused(replaces="c-1")
    assert "must match" in _refused(client_order_id="c-2", replaces="no spaces")
    assert "needs qty" in _refused(client_order_id="c-2", replaces="c-1", qty="", notional="100")


def test_a_bracket_needs_both_exits_on_the_right_sides() -> None:
    order = validate_order(
        _order(order_class=BRACKET, take_profit_limit_price="110", stop_loss_stop_price="95", time_in_force=2), SUBJECT
    )
    assert (order.take_profit, order.stop_loss, order.stop_loss_limit) == (Decimal(110), Decimal(95), None)
    assert "both" in _refused(order_class=BRACKET, take_profit_limit_price="110")
    assert "above stop_loss" in _refused(order_class=BRACKET, take_profit_limit_price="90", stop_loss_stop_price="95")
    sell = {"side": SELL, "order_class": BRACKET}
    assert "below stop_loss" in _refused(**sell, take_profit_limit_price="110", stop_loss_stop_price="95")
    assert "MARKET or LIMIT" in _refused(
        order_class=BRACKET,
        type=common_pb2.ORDER_TYPE_STOP,
        stop_price="100",
        take_profit_limit_price="110",
        stop_loss_stop_price="95",
    )
    assert "at most 61" in _refused(
        client_order_id="c" * 62, order_class=BRACKET, take_profit_limit_price="110", stop_loss_stop_price="95"
    )
    assert "order_class BRACKET, OCO or OTO" in _refused(take_profit_limit_price="110")


def test_an_oco_is_a_limit_exit_whose_limit_is_the_take_profit_and_an_oto_has_one_exit() -> None:
    oco = validate_order(
        _order(side=SELL, type=LIMIT, order_class=OCO, take_profit_limit_price="110", stop_loss_stop_price="95"),
        SUBJECT,
    )
    assert oco.limit_price == Decimal(110)
    assert "LIMIT orders" in _refused(order_class=OCO, take_profit_limit_price="110", stop_loss_stop_price="95")
    assert "exactly one" in _refused(order_class=OTO, take_profit_limit_price="110", stop_loss_stop_price="95")
    assert "needs stop_loss_stop_price" in _refused(order_class=OTO, stop_loss_limit_price="94")


def test_a_replace_is_checked_with_the_new_numbers_in_place_of_the_old() -> None:
    account = VirtualAccount("alpha", Decimal(1000))
    old = validate_order(_order(type=LIMIT, limit_price="90", qty="10"), SUBJECT)  # 900 of 1000
    account.reserve(old.order_id, account.check(old, DEFAULT_LIMITS, Decimal(90)))
    bigger = validate_order(_order(client_order_id="c-2", replaces="c-1", type=LIMIT, limit_price="95"), SUBJECT)
    # 950 alone fits the 1000 (the old 900 is not counted twice)
    assert account.check(bigger, DEFAULT_LIMITS, Decimal(90)).notional == Decimal(950)
    assert account.is_open(old.order_id)  # still reserved until its final report
    too_big = validate_order(_order(client_order_id="c-3", replaces="c-1", type=LIMIT, limit_price="101"), SUBJECT)
    with pytest.raises(DeskError) as refused:
        account.check(too_big, DEFAULT_LIMITS, Decimal(90))
    assert refused.value.code == "INSUFFICIENT_BUYING_POWER"
    account.apply(
        executions_pb2.ExecutionReport(
            execution_id="x",
            order_id=old.order_id,
            strategy_id="alpha",
            symbol="AAPL",
            exec_type=executions_pb2.EXEC_TYPE_CANCELED,
            status=executions_pb2.ORDER_STATUS_CANCELED,
        )
    )
    with pytest.raises(DeskError) as closed:
        account.check(bigger, DEFAULT_LIMITS, Decimal(90))
    assert closed.value.code == "ORDER_CLOSED"


def test_the_two_exits_of_one_position_hold_its_shares_once() -> None:
    account = VirtualAccount("alpha", Decimal(100000))
    account.positions["AAPL"] = Decimal(10)
    parent = order_id_for("alpha", "b1")

    def new(cid: str, **fields: Any) -> executions_pb2.ExecutionReport:
        return executions_pb2.ExecutionReport(
            execution_id=f"{cid}-1",
            order_id=order_id_for("alpha", cid),
            strategy_id="alpha",
            symbol="AAPL",
            side=SELL,
            exec_type=executions_pb2.EXEC_TYPE_NEW,
            status=executions_pb2.ORDER_STATUS_NEW,
            order_qty="10",
            leaves_qty="10",
            cum_qty="0",
            parent_order_id=parent,
            **fields,
        )

    account.apply(new("b1-tp", limit_price="110"))
    account.apply(new("b1-sl", stop_price="95"))
    assert account.reserved_qty("AAPL", SELL) == Decimal(10)
