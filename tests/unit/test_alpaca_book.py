"""The alpaca venue's pure book: identity, deterministic execution ids, exactly-once reports; and reconcile."""

from __future__ import annotations

from decimal import Decimal

from desk import reconcile
from desk.core.ids import order_id_for
from desk.v1 import common_pb2, executions_pb2, ledger_pb2, orders_pb2
from services.broker_gateway.brokers.alpaca_book import (
    AlpacaBook,
    AlpacaOrder,
    Fill,
    alpaca_client_order_id,
    parse_client_order_id,
)

E = executions_pb2
D = Decimal


def snapshot(
    status: str = "new", filled: str = "0", alpaca_id: str = "a-1", client_id: str = "alpha.c1"
) -> AlpacaOrder:
    return AlpacaOrder(
        alpaca_id, client_id, "AAPL", "buy", "limit", "gtc", status, D(10), None, D(filled), D(100), None, 2_000, 1_000
    )


def routed() -> orders_pb2.RoutedOrder:
    return orders_pb2.RoutedOrder(
        order_id=order_id_for("alpha", "c1"),
        strategy_id="alpha",
        member_id="m1",
        new_order=orders_pb2.OrderRequest(
            strategy_id="alpha",
            client_order_id="c1",
            symbol="AAPL",
            side=common_pb2.SIDE_BUY,
            type=common_pb2.ORDER_TYPE_LIMIT,
            time_in_force=common_pb2.TIME_IN_FORCE_GTC,
            qty="10",
            limit_price="100",
        ),
    )


def test_client_order_ids_carry_the_strategy_and_split_back() -> None:
    assert alpaca_client_order_id("alpha", "c-1") == "alpha.c-1"
    assert alpaca_client_order_id("alpha", "c-1", 2) == "alpha.c-1.2"
    assert parse_client_order_id("alpha.c-1") == ("alpha", "c-1") == parse_client_order_id("alpha.c-1.3")
    assert parse_client_order_id("9f8b-uuid-from-the-web-ui") is None
    assert parse_client_order_id("a.b.c") is None


def test_a_fill_seen_on_the_stream_and_again_in_the_activities_is_reported_once() -> None:
    book = AlpacaBook(clock=lambda: 5)
    book.remember(routed())
    new = book.on_order(snapshot())
    assert [r.exec_type for r in new] == [E.EXEC_TYPE_NEW]
    from_stream = book.on_fill(snapshot("partially_filled", "4"), Fill("a-1", D(4), D(4), D("99.5"), 3_000, "x-1"))
    from_activities = book.on_fill(snapshot("partially_filled", "4"), Fill("a-1", D("4.0"), D(4), D("99.5"), 3_000))
    assert [(r.exec_type, r.fill_qty, r.cum_qty, r.leaves_qty) for r in from_stream] == [
        (E.EXEC_TYPE_PARTIAL_FILL, "4", "4", "6")
    ]
    assert from_activities == []
    assert book.on_order(snapshot("partially_filled", "4")) == []  # NEW is not repeated either


def test_a_new_process_makes_the_same_execution_ids_so_the_stream_dedups_them() -> None:
    first, second = AlpacaBook(clock=lambda: 1), AlpacaBook(clock=lambda: 2)
    a = first.on_order(snapshot()) + first.on_fill(snapshot("filled", "10"), Fill("a-1", D(10), D(10), D(100), 9))
    b = second.on_order(snapshot()) + second.on_fill(snapshot("filled", "10"), Fill("a-1", D(10), D(10), D(100), 9))
    assert [r.execution_id for r in a] == [r.execution_id for r in b]
    assert a[0].order_id == order_id_for("alpha", "c1") and a[1].status == E.ORDER_STATUS_FILLED


def test_a_cancel_is_reported_only_after_the_fills_before_it() -> None:
    book = AlpacaBook(clock=lambda: 1)
    book.on_order(snapshot())
    assert book.on_order(snapshot("canceled", "3")) == []  # the 3 filled are not in yet
    reports = book.on_fill(snapshot("canceled", "3"), Fill("a-1", D(3), D(3), D(100), 5))
    assert [(r.exec_type, r.status) for r in reports] == [
        (E.EXEC_TYPE_PARTIAL_FILL, E.ORDER_STATUS_PARTIALLY_FILLED),
        (E.EXEC_TYPE_CANCELED, E.ORDER_STATUS_CANCELED),
    ]
    assert reports[-1].leaves_qty == "0" and reports[-1].cum_qty == "3"


def test_orders_placed_outside_the_desk_are_ignored() -> None:
    book = AlpacaBook(clock=lambda: 1)
    assert book.on_order(snapshot(client_id="manual-order-from-the-web")) == []


def test_an_order_canceled_to_re_place_its_leaves_is_not_a_desk_cancel() -> None:
    book = AlpacaBook(clock=lambda: 1)
    book.on_order(snapshot())
    book.on_order(snapshot(alpaca_id="a-2", client_id="alpha.c1.2"))
    assert book.on_order(snapshot("canceled")) == []  # a-1 was superseded by a-2 (e.g. after a restart)
    assert [r.exec_type for r in book.on_order(snapshot("canceled", alpaca_id="a-2", client_id="alpha.c1.2"))] == [
        E.EXEC_TYPE_CANCELED
    ]


def test_reconcile_sums_strategies_per_symbol_and_names_every_difference() -> None:
    ledger = [
        ledger_pb2.Position(strategy_id="alpha", symbol="AAPL", qty="10"),
        ledger_pb2.Position(strategy_id="beta", symbol="AAPL", qty="-8"),
        ledger_pb2.Position(strategy_id="beta", symbol="MSFT", qty="5"),
    ]
    broker = [ledger_pb2.Position(symbol="AAPL", qty="2"), ledger_pb2.Position(symbol="TSLA", qty="1")]
    differences = reconcile.compare(ledger, broker)
    assert [(d.symbol, d.ledger_qty, d.broker_qty, d.delta) for d in differences] == [
        ("MSFT", D(5), D(0), D(-5)),
        ("TSLA", D(0), D(1), D(1)),
    ]
    lines = reconcile.format_differences(differences, "alpaca")
    assert lines[0] == "reconcile: 2 difference(s) between the ledger and alpaca:"
    assert lines[1] == "  MSFT: ledger 5 (beta 5), alpaca 0, difference -5"
    assert reconcile.compare(ledger[:2], broker[:1]) == []


def test_after_a_restart_the_re_placed_leaves_decide_the_desk_orders_state() -> None:
    # before the restart 6 of 10 were crossed inside the desk and the 4 left placed again as alpha.c1.2
    book = AlpacaBook(clock=lambda: 1)
    book.attach(snapshot("canceled"))
    replaced = AlpacaOrder(
        "a-2", "alpha.c1.2", "AAPL", "buy", "limit", "gtc", "filled", D(4), None, D(4), D(100), None, 3_000, 2_500
    )
    reports = book.on_fill(replaced, Fill("a-2", D(4), D(4), D("100.5"), 4_000))
    fill = reports[-1]
    assert (fill.exec_type, fill.fill_qty, fill.cum_qty, fill.leaves_qty) == (E.EXEC_TYPE_FILL, "4", "10", "0")
    assert book.on_order(snapshot("canceled")) == []  # the superseded original is not a cancel
