"""The Alpaca book's exits of bracket / OCO orders: made once with the sim's ids, tied as OCO, the
stop-loss armed at the desk and its trigger record both known again after a restart (EXECUTIONS)."""

from __future__ import annotations

from decimal import Decimal

from desk.core.ids import order_id_for
from desk.v1 import common_pb2, executions_pb2, orders_pb2
from services.broker_gateway.brokers.alpaca_book import AlpacaBook

E = executions_pb2


def bracket(book: AlpacaBook) -> tuple[str, str, str]:
    routed = orders_pb2.RoutedOrder(
        order_id=order_id_for("alpha", "c1"),
        strategy_id="alpha",
        member_id="m1",
        new_order=orders_pb2.OrderRequest(
            strategy_id="alpha",
            client_order_id="c1",
            symbol="AAPL",
            side=common_pb2.SIDE_BUY,
            type=common_pb2.ORDER_TYPE_MARKET,
            time_in_force=common_pb2.TIME_IN_FORCE_GTC,
            qty="10",
            order_class=orders_pb2.ORDER_CLASS_BRACKET,
            take_profit_limit_price="110",
            stop_loss_stop_price="95",
            stop_loss_limit_price="94",
        ),
    )
    entry = book.remember(routed)
    entry.cum_qty = Decimal(10)
    tp = book.exit_leg(entry, "-tp", Decimal(10))
    sl = book.exit_leg(entry, "-sl", Decimal(10))
    return entry.order_id, tp.order_id, sl.order_id


def test_a_brackets_exits_have_the_sims_ids_sides_and_prices_and_are_each_others_oco_partner() -> None:
    book = AlpacaBook(lambda: 1)
    entry, tp_id, sl_id = bracket(book)
    tp, sl = book.orders[tp_id], book.orders[sl_id]
    assert (tp_id, sl_id) == (order_id_for("alpha", "c1-tp"), order_id_for("alpha", "c1-sl"))
    assert (tp.side, tp.type, tp.limit_price, tp.parent_order_id) == (
        common_pb2.SIDE_SELL,
        common_pb2.ORDER_TYPE_LIMIT,
        Decimal(110),
        entry,
    )
    assert (sl.type, sl.stop_price, sl.limit_price) == (common_pb2.ORDER_TYPE_STOP_LIMIT, Decimal(95), Decimal(94))
    assert book.partner(tp) is sl and book.partner(sl) is tp
    assert book.exit_leg(book.orders[entry], "-tp", Decimal(3)) is tp  # made once


def test_an_armed_stop_loss_and_its_trigger_are_known_again_after_a_restart() -> None:
    book = AlpacaBook(lambda: 1)
    _, tp_id, sl_id = bracket(book)
    tp, sl = book.orders[tp_id], book.orders[sl_id]
    armed = book.arm(sl, tp)
    assert len(armed) == 1 and "armed at the desk" in armed[0].text and armed[0].parent_order_id
    assert book.is_armed(sl) and book.open_orders()  # in the gateway's book while armed
    again = AlpacaBook(lambda: 2)
    again.restore(armed)
    assert again.is_armed(again.orders[sl_id])
    assert again.orders[sl_id].stop_loss is None and again.orders[sl_id].stop_price == Decimal(95)

    triggered = book.trigger(sl, "alpaca quote mid 94.5: 94.5 reached the stop 95")
    assert triggered[0].text.startswith("stop-loss triggered: ") and not book.is_armed(sl)
    assert tp.canceled_text == "OCO: c1-sl triggered"  # what its Alpaca cancel will say
    later = AlpacaBook(lambda: 3)
    later.restore([*book_reports_of(book, tp_id), *armed, *triggered])
    assert later.orders[sl_id].triggered and not later.is_armed(later.orders[sl_id])
    assert later.orders[tp_id].canceled_text == "OCO: c1-sl triggered"


def book_reports_of(book: AlpacaBook, order_id: str) -> list[executions_pb2.ExecutionReport]:
    """A NEW of ``order_id`` as the book would report it (its exit's fields on it)."""
    order = book.orders[order_id]
    return book._emit(order, "new-" + order_id, E.EXEC_TYPE_NEW, E.ORDER_STATUS_NEW, event_ns=1)


def test_an_exit_ended_at_the_desk_closes_at_what_it_filled() -> None:
    book = AlpacaBook(lambda: 1)
    _, tp_id, sl_id = bracket(book)
    sl = book.orders[sl_id]
    book.arm(sl, book.orders[tp_id])
    ended = book.end_at_desk(sl, "OCO: c1-tp filled")
    assert (ended[0].exec_type, ended[0].order_qty, ended[0].leaves_qty, ended[0].text) == (
        E.EXEC_TYPE_CANCELED,
        "0",
        "0",
        "OCO: c1-tp filled",
    )
    assert not book.is_armed(sl) and book.open_orders() == []
