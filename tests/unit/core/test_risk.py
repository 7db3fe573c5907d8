"""Pre-trade risk on virtual accounts: buying power, notional limits, rate limit, shorts, reservations."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from desk.bus.errors import DeskError
from desk.core.orders import ValidOrder, validate_order
from desk.core.risk import Limits, VirtualAccount
from desk.v1 import common_pb2, executions_pb2, orders_pb2, strategy_pb2

DEFAULTS = Limits(
    max_order_notional=Decimal(25000), max_position_notional=Decimal(50000), max_orders_per_minute=60, allow_short=False
)
PRICE = Decimal(100)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _order(**fields: Any) -> ValidOrder:
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
    return validate_order(orders_pb2.OrderRequest(**base), "desk.order.submit.alpha")


def _fill(
    order_id: str, side: common_pb2.Side, qty: str, price: str, fee: str = "0", *, leaves: str = "0", eid: str = ""
) -> Any:
    status = executions_pb2.ORDER_STATUS_FILLED if leaves == "0" else executions_pb2.ORDER_STATUS_PARTIALLY_FILLED
    exec_type = executions_pb2.EXEC_TYPE_FILL if leaves == "0" else executions_pb2.EXEC_TYPE_PARTIAL_FILL
    return executions_pb2.ExecutionReport(
        execution_id=eid or f"{order_id}-{qty}-{leaves}",
        order_id=order_id,
        strategy_id="alpha",
        symbol="AAPL",
        side=side,
        exec_type=exec_type,
        status=status,
        fill_qty=qty,
        fill_price=price,
        fee=fee,
        leaves_qty=leaves,
    )


def _account(cash: str = "100000", clock: FakeClock | None = None) -> VirtualAccount:
    return VirtualAccount("alpha", Decimal(cash), clock=clock or FakeClock())


def _refusal(
    account: VirtualAccount, order: ValidOrder, limits: Limits = DEFAULTS, price: Decimal | None = PRICE
) -> str:
    with pytest.raises(DeskError) as refused:
        account.check(order, limits, price)
    assert refused.value.status in (403, 429, 503)
    return refused.value.code


def test_a_market_buy_is_valued_at_the_last_price_and_a_limit_at_its_limit() -> None:
    account = _account()
    assert account.check(_order(qty="10"), DEFAULTS, PRICE).notional == Decimal(1000)
    limit = _order(type=common_pb2.ORDER_TYPE_LIMIT, limit_price="90", qty="10")
    assert account.check(limit, DEFAULTS, PRICE).notional == Decimal(900)
    notional = _order(qty="", notional="500")
    reservation = account.check(notional, DEFAULTS, PRICE)
    assert (reservation.notional, reservation.qty) == (Decimal(500), Decimal(5))


def test_a_market_order_without_a_price_is_refused_no_market_price() -> None:
    assert _refusal(_account(), _order(), price=None) == "NO_MARKET_PRICE"


def test_a_buy_beyond_buying_power_is_refused_and_reservations_count() -> None:
    account = _account(cash="1500")
    assert _refusal(account, _order(qty="20")) == "INSUFFICIENT_BUYING_POWER"
    account.reserve("o1", account.check(_order(qty="10"), DEFAULTS, PRICE))
    assert account.buying_power == Decimal(500)
    assert _refusal(account, _order(qty="6")) == "INSUFFICIENT_BUYING_POWER"
    account.check(_order(qty="5"), DEFAULTS, PRICE)


def test_an_order_above_the_max_order_notional_is_refused_with_the_spec_limit_winning() -> None:
    account = _account()
    assert _refusal(account, _order(qty="251")) == "MAX_ORDER_NOTIONAL"
    tight = Limits.resolve(strategy_pb2.RiskLimits(max_order_notional="500"), DEFAULTS)
    assert tight.max_order_notional == Decimal(500)
    assert tight.max_position_notional == DEFAULTS.max_position_notional  # empty = desk default
    assert _refusal(account, _order(qty="6"), tight) == "MAX_ORDER_NOTIONAL"


def test_the_position_notional_limit_counts_the_position_and_open_buys() -> None:
    account = _account(cash="1000000")
    account.apply(_fill("o0", common_pb2.SIDE_BUY, "300", "100"))
    account.reserve("o1", account.check(_order(qty="150"), DEFAULTS, PRICE))
    assert _refusal(account, _order(qty="51")) == "MAX_POSITION_NOTIONAL"
    account.check(_order(qty="50"), DEFAULTS, PRICE)


def test_a_sell_beyond_the_position_is_a_short_and_is_refused_unless_allowed() -> None:
    account = _account()
    account.apply(_fill("o0", common_pb2.SIDE_BUY, "10", "100"))
    sell = _order(side=common_pb2.SIDE_SELL, qty="11")
    assert _refusal(account, sell) == "SHORT_NOT_ALLOWED"
    shorts = Limits.resolve(strategy_pb2.RiskLimits(allow_short=True, max_position_notional="1000"), DEFAULTS)
    assert account.check(sell, shorts, PRICE).qty == Decimal(11)
    big_short = _order(side=common_pb2.SIDE_SELL, qty="21")  # resulting -11 shares = 1100 > 1000
    assert _refusal(account, big_short, shorts) == "MAX_POSITION_NOTIONAL"


def test_open_sells_reserve_shares_so_two_sells_cannot_sell_the_position_twice() -> None:
    account = _account()
    account.apply(_fill("o0", common_pb2.SIDE_BUY, "10", "100"))
    account.reserve("s1", account.check(_order(side=common_pb2.SIDE_SELL, qty="6"), DEFAULTS, PRICE))
    assert _refusal(account, _order(side=common_pb2.SIDE_SELL, qty="5")) == "SHORT_NOT_ALLOWED"
    account.check(_order(side=common_pb2.SIDE_SELL, qty="4"), DEFAULTS, PRICE)


def test_the_rate_limit_is_a_sliding_sixty_second_window() -> None:
    clock = FakeClock()
    account = _account(clock=clock)
    limits = Limits.resolve(strategy_pb2.RiskLimits(max_orders_per_minute=2), DEFAULTS)
    for n in range(2):
        account.reserve(f"o{n}", account.check(_order(qty="1"), limits, PRICE))
        clock.now += 20
    assert _refusal(account, _order(qty="1"), limits) == "RATE_LIMIT"
    clock.now += 20.5  # the first order is now more than 60 s old
    account.check(_order(qty="1"), limits, PRICE)


def test_a_cancel_report_releases_the_reservation() -> None:
    account = _account(cash="1000")
    account.reserve("o1", account.check(_order(qty="10"), DEFAULTS, PRICE))
    assert account.buying_power == 0
    canceled = executions_pb2.ExecutionReport(
        execution_id="e-cancel",
        order_id="o1",
        strategy_id="alpha",
        symbol="AAPL",
        side=common_pb2.SIDE_BUY,
        exec_type=executions_pb2.EXEC_TYPE_CANCELED,
        status=executions_pb2.ORDER_STATUS_CANCELED,
    )
    assert account.apply(canceled)
    assert account.buying_power == Decimal(1000)
    assert account.is_closed("o1") and not account.is_open("o1")


def test_fills_move_cash_and_position_including_fees_and_release_the_reservation() -> None:
    account = _account(cash="10000")
    account.reserve("o1", account.check(_order(qty="10"), DEFAULTS, PRICE))
    account.apply(_fill("o1", common_pb2.SIDE_BUY, "4", "99", fee="1", leaves="6"))
    assert account.position("AAPL") == Decimal(4)
    assert account.cash == Decimal(10000 - 396 - 1)
    assert account.open_orders["o1"].remaining_qty == Decimal(6)
    assert account.reserved_buy_notional == Decimal(600)
    account.apply(_fill("o1", common_pb2.SIDE_BUY, "6", "101", fee="1.5"))
    assert account.position("AAPL") == Decimal(10)
    assert account.cash == Decimal(10000) - Decimal(396 + 606) - Decimal("2.5")
    assert account.reserved_buy_notional == 0 and account.is_closed("o1")

    account.apply(_fill("o2", common_pb2.SIDE_SELL, "10", "110", fee="2"))
    assert account.position("AAPL") == 0
    assert account.cash == Decimal(10000) - Decimal("1004.5") + Decimal(1100) - Decimal(2)


def test_a_report_applied_twice_changes_the_account_once() -> None:
    account = _account()
    fill = _fill("o1", common_pb2.SIDE_BUY, "10", "100", eid="e-1")
    assert account.apply(fill) is True
    assert account.apply(fill) is False
    assert account.position("AAPL") == Decimal(10)
    assert account.cash == Decimal(99000)


def test_an_order_accepted_elsewhere_is_reserved_from_its_new_report() -> None:
    account = _account(cash="1000")
    new = executions_pb2.ExecutionReport(
        execution_id="e-new",
        order_id="o-other",
        strategy_id="alpha",
        symbol="AAPL",
        side=common_pb2.SIDE_BUY,
        exec_type=executions_pb2.EXEC_TYPE_NEW,
        status=executions_pb2.ORDER_STATUS_NEW,
        order_qty="8",
        limit_price="100",
        leaves_qty="8",
    )
    account.apply(new)
    assert account.reserved_buy_notional == Decimal(800)
    account.reserve("o-other", account.check(_order(qty="1"), DEFAULTS, PRICE))  # our own ack comes later: no-op
    assert account.reserved_buy_notional == Decimal(800)


def test_the_initial_cash_can_be_learnt_after_fills() -> None:
    account = _account(cash="100000")
    account.apply(_fill("o1", common_pb2.SIDE_BUY, "10", "100"))
    account.initial_cash = Decimal(5000)
    assert account.cash == Decimal(4000)
