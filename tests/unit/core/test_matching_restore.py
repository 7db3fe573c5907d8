"""SimEngine.restore: the sim's book rebuilt from its stored execution reports (no I/O)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from desk.core.matching import SimConfig, SimEngine, SimOrder
from desk.v1 import common_pb2, executions_pb2, marketdata_pb2, orders_pb2

E = executions_pb2
D = Decimal
DAY1 = int(dt.datetime(2026, 3, 2, 15, 0, tzinfo=dt.UTC).timestamp() * 1e9)
DAY2 = int(dt.datetime(2026, 3, 3, 14, 30, tzinfo=dt.UTC).timestamp() * 1e9)
LIMIT, MARKET, STOP = common_pb2.ORDER_TYPE_LIMIT, common_pb2.ORDER_TYPE_MARKET, common_pb2.ORDER_TYPE_STOP
GTC, DAY, IOC = common_pb2.TIME_IN_FORCE_GTC, common_pb2.TIME_IN_FORCE_DAY, common_pb2.TIME_IN_FORCE_IOC


class FakeClock:
    def __init__(self, now: int = DAY1) -> None:
        self.now = now

    def __call__(self) -> int:
        self.now += 1
        return self.now


def engine(now: int = DAY1) -> SimEngine:
    return SimEngine(SimConfig(), clock=FakeClock(now))  # default ids: <order_id>-<n>


def order(
    order_id: str,
    *,
    type: common_pb2.OrderType = LIMIT,
    tif: common_pb2.TimeInForce = GTC,
    qty: str = "10",
    notional: str = "",
    limit: str = "",
    stop: str = "",
    side: common_pb2.Side = common_pb2.SIDE_BUY,
) -> orders_pb2.RoutedOrder:
    return orders_pb2.RoutedOrder(
        order_id=order_id,
        strategy_id="alpha",
        member_id="m1",
        new_order=orders_pb2.OrderRequest(
            strategy_id="alpha",
            client_order_id=f"c-{order_id}",
            symbol="AAPL",
            side=side,
            type=type,
            time_in_force=tif,
            qty=qty,
            notional=notional,
            limit_price=limit,
            stop_price=stop,
        ),
    )


def cancel(order_id: str) -> orders_pb2.RoutedOrder:
    return orders_pb2.RoutedOrder(
        order_id=order_id,
        strategy_id="alpha",
        member_id="m1",
        cancel=orders_pb2.CancelRequest(strategy_id="alpha", client_order_id=f"c-{order_id}"),
    )


def bar(o: str, h: str, lo: str, c: str, volume: str = "", start_ns: int = DAY1) -> marketdata_pb2.Bar:
    return marketdata_pb2.Bar(symbol="AAPL", open=o, high=h, low=lo, close=c, volume=volume, start_ns=start_ns)


def stripped(reports: list[executions_pb2.ExecutionReport]) -> list[executions_pb2.ExecutionReport]:
    """The reports without their clock readings (two engines read their clocks differently)."""
    out = []
    for report in reports:
        copy = E.ExecutionReport()
        copy.CopyFrom(report)
        copy.event_ns = copy.report_ns = 0
        out.append(copy)
    return out


def book_state(o: SimOrder) -> tuple[object, ...]:
    """Everything but ``submitted_ns`` (restored from the NEW's event_ns, a clock reading later)."""
    return (
        o.order_id,
        o.venue_order_id,
        o.strategy_id,
        o.member_id,
        o.client_order_id,
        o.symbol,
        o.side,
        o.type,
        o.tif,
        o.qty,
        o.notional,
        o.limit_price,
        o.stop_price,
        o.cum_qty,
        o.cost,
        o.status,
        o.reports,
        o.canceled_by_request,
    )


def test_partial_fills_are_restored_exactly_and_the_restored_engine_trades_as_the_first_one_would() -> None:
    first = engine()
    stored: list[executions_pb2.ExecutionReport] = []
    stored += first.submit(order("lim", limit="95"))
    stored += first.submit(order("lim2", limit="94.5", qty="3"))
    stored += first.on_bar(bar("96", "97", "94", "95", volume="16"))  # 4 offered: lim takes 4 at 95
    stored += first.on_bar(bar("95.5", "96", "94.75", "95", volume="8"))  # 2 more for lim at 95
    assert [r.exec_type for r in stored] == [E.EXEC_TYPE_NEW] * 2 + [E.EXEC_TYPE_PARTIAL_FILL] * 2
    original = {o.order_id: book_state(o) for o in first.open_orders()}
    assert first.get("lim") is not None and first.get("lim").cost == D("570")  # type: ignore[union-attr]

    second = engine(DAY1 + 10**9)
    assert second.restore(stored) == []
    assert {o.order_id: book_state(o) for o in second.open_orders()} == original
    restored = second.get("lim")
    assert restored is not None
    assert (restored.cum_qty, restored.cost, restored.reports, restored.status) == (
        D("6"),
        D("570"),
        3,
        E.ORDER_STATUS_PARTIALLY_FILLED,
    )
    assert restored.submitted_ns == stored[0].event_ns
    assert [o.order_id for o in second.open_orders()] == ["lim", "lim2"]  # time priority kept

    # the same next bar makes the same reports, numbered on from the stored ones
    later = bar("94", "94.2", "93", "93.5", volume="100")
    expected = stripped(first.on_bar(later))
    got = stripped(second.on_bar(later))
    assert got == expected
    assert [(r.execution_id, r.fill_qty, r.cum_qty, r.avg_price) for r in got] == [
        ("lim-4", "4", "10", "94.6"),
        ("lim2-2", "3", "3", "94"),
    ]
    assert second.open_orders() == []


def test_final_orders_are_not_restored_but_known_so_redeliveries_do_nothing() -> None:
    first = engine()
    stored: list[executions_pb2.ExecutionReport] = []
    stored += first.on_bar(bar("100", "101", "99", "100"))
    stored += first.submit(order("filled", type=MARKET, tif=DAY))
    stored += first.submit(order("canceled", limit="90"))
    stored += first.cancel(cancel("canceled"))
    stored += first.submit(order("rejected", qty="-1"))
    stored += first.submit(order("expires", limit="80", tif=DAY))
    stored += first.on_bar(bar("100", "101", "99", "100", start_ns=DAY2))  # the DAY order expires
    assert sorted(E.ExecType.Name(r.exec_type) for r in stored).count("EXEC_TYPE_EXPIRED") == 1

    second = engine(DAY2 + 10**9)
    assert second.restore(stored) == []
    assert second.open_orders() == []
    for order_id in ("filled", "canceled", "rejected", "expires"):
        assert second.submit(order(order_id, limit="90")) == [], order_id  # no second NEW
    assert second.cancel(cancel("canceled")) == []  # a redelivered cancel of a canceled order
    [rejected] = second.cancel(cancel("filled"))
    assert (rejected.exec_type, rejected.execution_id, rejected.text) == (
        E.EXEC_TYPE_CANCEL_REJECTED,
        "filled-3",
        "order is already filled",
    )
    # a new order takes the next venue order id, not one already used
    [new] = second.submit(order("fresh", limit="50"))
    assert (new.execution_id, new.venue_order_id) == ("fresh-1", "sim-00000005")


def test_report_numbering_continues_and_a_redelivered_open_order_is_known() -> None:
    first = engine()
    stored = first.submit(order("rest", limit="90"))
    stored += first.submit(order("stop", type=STOP, stop="120"))
    stored += first.submit(order("notional", type=MARKET, qty="", notional="1000"))  # no price yet: rests
    stored += first.cancel(cancel("ghost"))  # unknown order: skipped by the restore
    other = E.ExecutionReport()
    other.CopyFrom(stored[0])
    other.venue, other.order_id, other.execution_id = "alpaca", "elsewhere", "x-1"
    stored.append(other)

    second = engine()
    assert second.restore(stored) == []
    assert [o.order_id for o in second.open_orders()] == ["rest", "stop", "notional"]
    assert second.get("elsewhere") is None and second.get("ghost") is None
    assert second.submit(order("rest", limit="90")) == []
    [canceled] = second.cancel(cancel("rest"))
    assert (canceled.execution_id, canceled.status) == ("rest-2", E.ORDER_STATUS_CANCELED)
    fills = second.on_bar(bar("121", "125", "119", "122"))
    assert [(r.execution_id, r.exec_type, r.fill_qty) for r in fills] == [
        ("stop-2", E.EXEC_TYPE_FILL, "10"),
        ("notional-2", E.EXEC_TYPE_FILL, "8.262810247"),  # 1000 / (121 * 1.0002), rounded down
    ]


def test_an_ioc_order_left_open_by_a_crash_is_canceled_by_the_restore() -> None:
    first = engine()
    [new] = first.submit(order("ioc", type=LIMIT, tif=IOC, limit="90"))[:1]  # no price: CANCELED follows
    second = engine()
    [canceled] = second.restore([new])  # the process died before the CANCELED was stored
    assert (canceled.execution_id, canceled.exec_type, canceled.status) == (
        "ioc-2",
        E.EXEC_TYPE_CANCELED,
        E.ORDER_STATUS_CANCELED,
    )
    assert "restarted" in canceled.text and second.open_orders() == []


def test_an_unreadable_stored_report_is_counted_and_skipped() -> None:
    first = engine()
    stored = first.submit(order("good", limit="90"))
    bad = first.submit(order("bad", limit="91"))[0]
    bad.limit_price = "not a number"
    second = engine()
    assert second.restore([bad, *stored]) == []
    assert second.restore_skipped == 1
    assert [o.order_id for o in second.open_orders()] == ["good"]
