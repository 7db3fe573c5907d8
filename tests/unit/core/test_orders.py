"""Order words, rules and validation (desk.core.orders): every bad field gets INVALID_FIELD (or its
own reason) and a message."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from desk.bus.errors import DeskError
from desk.core.ids import order_id_for
from desk.core.orders import (
    ORDER_TYPE_WORDS,
    REQUIRED_PRICES,
    SIDE_WORDS,
    TIME_IN_FORCE_WORDS,
    check_known,
    needs_limit_price,
    needs_stop_price,
    reject_reason,
    validate_cancel,
    validate_halt,
    validate_order,
)
from desk.v1 import common_pb2, orders_pb2

SUBJECT = "desk.order.submit.alpha"


def _order(**fields: Any) -> orders_pb2.OrderRequest:
    base: dict[str, Any] = {
        "strategy_id": "alpha",
        "client_order_id": "c-1",
        "symbol": "AAPL",
        "side": common_pb2.SIDE_BUY,
        "type": common_pb2.ORDER_TYPE_MARKET,
        "time_in_force": common_pb2.TIME_IN_FORCE_DAY,
        "qty": "10",
    }
    base.update(fields)
    return orders_pb2.OrderRequest(**base)


def test_a_plain_market_order_is_valid_and_parsed_to_decimals() -> None:
    order = validate_order(_order(qty="1.5"), SUBJECT)
    assert order.qty == Decimal("1.5")
    assert order.notional is None and order.limit_price is None
    assert order.is_buy


def test_a_stop_limit_order_keeps_both_prices() -> None:
    order = validate_order(
        _order(type=common_pb2.ORDER_TYPE_STOP_LIMIT, limit_price="101.25", stop_price="100", time_in_force=2), SUBJECT
    )
    assert (order.limit_price, order.stop_price) == (Decimal("101.25"), Decimal(100))


def test_a_notional_market_day_order_is_valid() -> None:
    order = validate_order(_order(qty="", notional="250.50"), SUBJECT)
    assert order.notional == Decimal("250.50") and order.qty is None


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"qty": "0"}, "positive"),
        ({"qty": "-1"}, "positive"),
        ({"qty": "NaN"}, "finite"),
        ({"qty": "inf"}, "finite"),
        ({"qty": "1e20"}, "larger than the limit"),
        ({"qty": "ten"}, "not a decimal"),
        ({"qty": "0.0000000001"}, "decimal places"),
        ({"qty": "", "notional": ""}, "exactly one of qty and notional"),
        ({"qty": "1", "notional": "100"}, "exactly one of qty and notional"),
        ({"qty": "", "notional": "100", "type": common_pb2.ORDER_TYPE_LIMIT, "limit_price": "10"}, "notional orders"),
        ({"qty": "", "notional": "100", "time_in_force": common_pb2.TIME_IN_FORCE_GTC}, "notional orders"),
        ({"qty": "", "notional": "100.001"}, "decimal places"),
        ({"type": common_pb2.ORDER_TYPE_LIMIT}, "limit_price is required"),
        ({"type": common_pb2.ORDER_TYPE_STOP_LIMIT, "stop_price": "10"}, "limit_price is required"),
        ({"type": common_pb2.ORDER_TYPE_STOP}, "stop_price is required"),
        ({"limit_price": "10"}, "limit_price is not allowed"),
        ({"stop_price": "10"}, "stop_price is not allowed on MARKET"),
        ({"type": common_pb2.ORDER_TYPE_LIMIT, "limit_price": "0"}, "positive"),
        ({"type": common_pb2.ORDER_TYPE_LIMIT, "limit_price": "-5"}, "positive"),
        ({"type": common_pb2.ORDER_TYPE_LIMIT, "limit_price": "Infinity"}, "finite"),
        ({"type": common_pb2.ORDER_TYPE_LIMIT, "limit_price": "10.1234567"}, "decimal places"),
        ({"type": common_pb2.ORDER_TYPE_STOP, "stop_price": "nan"}, "finite"),
        ({"symbol": "aapl"}, "symbol"),
        ({"symbol": ""}, "symbol"),
        ({"symbol": "AAPL>"}, "symbol"),
        ({"client_order_id": ""}, "client_order_id is required"),
        ({"client_order_id": "bad id!"}, "client_order_id"),
        ({"client_order_id": "x" * 65}, "client_order_id"),
        ({"side": common_pb2.SIDE_UNSPECIFIED}, "side"),
        ({"side": 7}, "side"),
        ({"type": common_pb2.ORDER_TYPE_UNSPECIFIED}, "type"),
        ({"time_in_force": common_pb2.TIME_IN_FORCE_UNSPECIFIED}, "time_in_force"),
        ({"extended_hours": True}, "extended_hours"),
    ],
)
def test_each_bad_field_is_refused_as_invalid_field(fields: dict[str, Any], words: str) -> None:
    with pytest.raises(DeskError) as refused:
        validate_order(_order(**fields), SUBJECT)
    assert refused.value.code == "INVALID_FIELD"
    assert refused.value.status == 400
    assert words in refused.value.message


def test_an_order_for_another_strategys_subject_is_wrong_subject() -> None:
    with pytest.raises(DeskError) as refused:
        validate_order(_order(strategy_id="beta"), SUBJECT)
    assert refused.value.code == "WRONG_SUBJECT"


def test_an_invalid_strategy_id_is_refused_even_on_a_matching_subject() -> None:
    with pytest.raises(DeskError) as refused:
        validate_order(_order(strategy_id="Alpha"), "desk.order.submit.Alpha")
    assert refused.value.code == "INVALID_FIELD"


def test_unknown_strategy_and_unknown_symbol_have_their_own_reasons() -> None:
    order = validate_order(_order(), SUBJECT)
    with pytest.raises(DeskError) as no_strategy:
        check_known(order, strategies={"beta"}, symbols={"AAPL"})
    assert (no_strategy.value.code, no_strategy.value.status) == ("UNKNOWN_STRATEGY", 404)
    with pytest.raises(DeskError) as no_symbol:
        check_known(order, strategies={"alpha"}, symbols={"MSFT"})
    assert (no_symbol.value.code, no_symbol.value.status) == ("UNKNOWN_SYMBOL", 404)
    check_known(order, strategies={"alpha"}, symbols={"AAPL"})


def test_order_id_is_deterministic_per_strategy_and_client_order_id() -> None:
    assert order_id_for("alpha", "c-1") == order_id_for("alpha", "c-1")
    assert order_id_for("alpha", "c-1") != order_id_for("beta", "c-1")
    assert validate_order(_order(), SUBJECT).order_id == order_id_for("alpha", "c-1")


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("MALFORMED", orders_pb2.REJECT_REASON_MALFORMED),
        ("WRONG_TYPE", orders_pb2.REJECT_REASON_MALFORMED),
        ("PAYLOAD_TOO_LARGE", orders_pb2.REJECT_REASON_PAYLOAD_TOO_LARGE),
        ("INVALID_FIELD", orders_pb2.REJECT_REASON_INVALID_FIELD),
        ("HALTED", orders_pb2.REJECT_REASON_HALTED),
        ("SOMETHING_NEW", orders_pb2.REJECT_REASON_INTERNAL),
    ],
)
def test_desk_error_codes_map_to_reject_reasons(code: str, reason: int) -> None:
    assert reject_reason(code) == reason


def test_cancel_and_halt_requests_are_checked() -> None:
    request = orders_pb2.CancelRequest(strategy_id="alpha", client_order_id="c-1")
    assert validate_cancel(request, "desk.order.cancel.alpha") == order_id_for("alpha", "c-1")
    with pytest.raises(DeskError) as wrong:
        validate_cancel(request, "desk.order.cancel.beta")
    assert wrong.value.code == "WRONG_SUBJECT"
    validate_halt(orders_pb2.HaltRequest())
    with pytest.raises(DeskError) as bad_halt:
        validate_halt(orders_pb2.HaltRequest(strategy_id="no spaces"))
    assert bad_halt.value.code == "INVALID_FIELD"


def test_every_wire_value_has_one_word_and_every_order_type_its_required_prices() -> None:
    for enum, words in (
        (common_pb2.Side, SIDE_WORDS),
        (common_pb2.OrderType, ORDER_TYPE_WORDS),
        (common_pb2.TimeInForce, TIME_IN_FORCE_WORDS),
    ):
        values = {v for v in enum.values() if v != 0}  # 0 is *_UNSPECIFIED
        assert set(words) == values
        for value in values:  # the word is the enum's name without its prefix, in lower case
            assert enum.Name(value).lower().endswith("_" + words[value])
    assert set(REQUIRED_PRICES) == set(ORDER_TYPE_WORDS)
    assert [t for t in ORDER_TYPE_WORDS if needs_limit_price(t)] == [
        common_pb2.ORDER_TYPE_LIMIT,
        common_pb2.ORDER_TYPE_STOP_LIMIT,
    ]
    assert [t for t in ORDER_TYPE_WORDS if needs_stop_price(t)] == [
        common_pb2.ORDER_TYPE_STOP,
        common_pb2.ORDER_TYPE_STOP_LIMIT,
    ]
    assert not needs_limit_price(common_pb2.ORDER_TYPE_UNSPECIFIED)
