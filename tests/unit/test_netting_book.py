"""The netting rule's bookkeeping in the alpaca venue's pure book: orders held at the desk (made,
restored after a restart, canceled), and orders by value crossed in full."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from desk.core.ids import order_id_for
from desk.v1 import common_pb2, executions_pb2, orders_pb2
from services.broker_gateway.brokers.alpaca import net_view
from services.broker_gateway.brokers.alpaca_book import AlpacaBook, AlpacaOrder

E = executions_pb2
D = Decimal


def routed(strategy: str, client_id: str, **fields: Any) -> orders_pb2.RoutedOrder:
    request: dict[str, Any] = {
        "strategy_id": strategy,
        "client_order_id": client_id,
        "symbol": "AAPL",
        "side": common_pb2.SIDE_BUY,
        "type": common_pb2.ORDER_TYPE_LIMIT,
        "time_in_force": common_pb2.TIME_IN_FORCE_GTC,
        "qty": "3",
        "limit_price": "95",
    }
    request.update(fields)
    return orders_pb2.RoutedOrder(
        order_id=order_id_for(strategy, client_id),
        strategy_id=strategy,
        member_id="m1",
        new_order=orders_pb2.OrderRequest(**request),
    )


REASON = "3 AAPL held at the desk: it could trade against strategy alpha's resting sell stop 90 ..."


def test_a_held_order_is_new_with_the_reason_open_at_the_desk_and_restored_as_held() -> None:
    book = AlpacaBook(clock=lambda: 5)
    order = book.remember(routed("beta", "b1"))
    reports = book.hold(order, REASON)
    assert [(r.exec_type, r.status, r.text) for r in reports] == [(E.EXEC_TYPE_NEW, E.ORDER_STATUS_NEW, REASON)]
    assert book.hold(order, REASON) == []  # worked again and still held: nothing new
    assert book.is_held(order) and [o.order_id for o in book.held_orders()] == [order.order_id]
    assert [r.order_id for r in book.open_orders()] == [order.order_id]

    after = AlpacaBook(clock=lambda: 6)  # a restart: EXECUTIONS replayed
    after.restore(reports)
    again = after.orders[order.order_id]
    assert after.is_held(again) and again.limit_price == D(95)

    # sent to Alpaca later: no longer held, and no second NEW
    placed = AlpacaOrder("x-1", "beta.b1", "AAPL", "buy", "limit", "gtc", "new", D(3), None, D(0), D(95), None, 7, 7)
    assert after.on_order(placed) == [] and not after.is_held(again) and after.held_orders() == []


def test_a_held_order_after_partial_crosses_gets_a_record_not_a_second_new() -> None:
    book = AlpacaBook(clock=lambda: 5)
    resting = book.remember(routed("alpha", "a1", side=common_pb2.SIDE_SELL, qty="10", limit_price="99"))
    order = book.remember(routed("beta", "b1", qty="5", limit_price="100"))
    book.cross(order, resting, D(2), D(100))
    reports = book.hold(order, REASON)
    assert [(r.exec_type, r.status, r.cum_qty) for r in reports] == [
        (E.EXEC_TYPE_NEW, E.ORDER_STATUS_PARTIALLY_FILLED, "2")
    ]
    after = AlpacaBook(clock=lambda: 6)
    after.restore([*book_reports(book, order), *reports])
    assert after.is_held(after.orders[order.order_id])


def book_reports(book: AlpacaBook, order: object) -> list[executions_pb2.ExecutionReport]:
    """The reports a cross made (rebuilt: the book hands them out once)."""
    fresh = AlpacaBook(clock=lambda: 5)
    resting = fresh.remember(routed("alpha", "a1", side=common_pb2.SIDE_SELL, qty="10", limit_price="99"))
    incoming = fresh.remember(routed("beta", "b1", qty="5", limit_price="100"))
    return [r for r in fresh.cross(incoming, resting, D(2), D(100)) if r.order_id == incoming.order_id]


def test_a_held_order_canceled_by_its_strategy_ends_canceled() -> None:
    book = AlpacaBook(clock=lambda: 5)
    order = book.remember(routed("beta", "b1"))
    book.hold(order, REASON)
    (ended,) = book.cancel_held(order)
    assert (ended.exec_type, ended.status) == (E.EXEC_TYPE_CANCELED, E.ORDER_STATUS_CANCELED)
    assert not book.is_held(order) and book.open_orders() == []


def test_an_order_by_value_crossed_for_all_its_dollars_is_filled_and_netting_sees_what_is_left() -> None:
    book = AlpacaBook(clock=lambda: 5)
    resting = book.remember(routed("alpha", "a1", side=common_pb2.SIDE_SELL, qty="10", limit_price="99"))
    order = book.remember(
        routed(
            "beta",
            "b1",
            type=common_pb2.ORDER_TYPE_MARKET,
            qty="",
            limit_price="",
            time_in_force=common_pb2.TIME_IN_FORCE_DAY,
            notional="500",
        )
    )
    (new, part) = book.cross(order, resting, D(3), D(100))[2:]  # resting's NEW and fill, then the order's
    assert (part.exec_type, part.cum_qty) == (E.EXEC_TYPE_PARTIAL_FILL, "3")
    assert net_view(order).notional == D(200) and net_view(order).leaves == 0
    last = [r for r in book.cross(order, resting, D(2), D(100)) if r.order_id == order.order_id]
    assert (last[-1].exec_type, last[-1].status) == (E.EXEC_TYPE_FILL, E.ORDER_STATUS_FILLED)
    assert net_view(resting).leaves == D(5) and net_view(resting).notional is None
    assert new.order_id == order.order_id
