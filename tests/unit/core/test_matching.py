"""The sim venue's matching engine, with a fake clock and exact Decimals (no I/O)."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal

import pytest

from desk.bus.errors import DeskError
from desk.core.matching import SHUTDOWN_TEXT, SimConfig, SimEngine
from desk.v1 import common_pb2, executions_pb2, marketdata_pb2, orders_pb2

E = executions_pb2
D = Decimal
DAY1 = int(dt.datetime(2026, 3, 2, 15, 0, tzinfo=dt.UTC).timestamp() * 1e9)
DAY2 = int(dt.datetime(2026, 3, 3, 14, 30, tzinfo=dt.UTC).timestamp() * 1e9)
SEC = 1_000_000_000


class FakeClock:
    def __init__(self, now: int = DAY1) -> None:
        self.now = now

    def __call__(self) -> int:
        self.now += 1  # every reading is a distinct instant
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(clock: FakeClock) -> SimEngine:
    ids = itertools.count(1)
    return SimEngine(SimConfig(), clock=clock, new_execution_id=lambda: f"exec-{next(ids)}")


def order(
    order_id: str = "o1",
    *,
    side: common_pb2.Side = common_pb2.SIDE_BUY,
    type: common_pb2.OrderType = common_pb2.ORDER_TYPE_MARKET,
    tif: common_pb2.TimeInForce = common_pb2.TIME_IN_FORCE_DAY,
    qty: str = "10",
    notional: str = "",
    limit: str = "",
    stop: str = "",
    symbol: str = "AAPL",
) -> orders_pb2.RoutedOrder:
    return orders_pb2.RoutedOrder(
        order_id=order_id,
        strategy_id="alpha",
        member_id="m1",
        new_order=orders_pb2.OrderRequest(
            strategy_id="alpha",
            client_order_id=f"c-{order_id}",
            symbol=symbol,
            side=side,
            type=type,
            time_in_force=tif,
            qty=qty,
            notional=notional,
            limit_price=limit,
            stop_price=stop,
        ),
    )


def cancel(order_id: str = "o1") -> orders_pb2.RoutedOrder:
    return orders_pb2.RoutedOrder(
        order_id=order_id,
        strategy_id="alpha",
        member_id="m1",
        cancel=orders_pb2.CancelRequest(strategy_id="alpha", client_order_id=f"c-{order_id}"),
    )


def bar(
    o: str, h: str, lo: str, c: str, volume: str = "", start_ns: int = DAY1, symbol: str = "AAPL"
) -> marketdata_pb2.Bar:
    return marketdata_pb2.Bar(symbol=symbol, open=o, high=h, low=lo, close=c, volume=volume, start_ns=start_ns)


def kinds(reports: list[executions_pb2.ExecutionReport]) -> list[str]:
    return [E.ExecType.Name(r.exec_type).removeprefix("EXEC_TYPE_") for r in reports]


def test_market_buy_fills_at_once_with_slippage_and_fee(engine: SimEngine) -> None:
    engine.on_bar(bar("99", "101", "98", "100"))
    reports = engine.submit(order(qty="10"))
    assert kinds(reports) == ["NEW", "FILL"]
    new, fill = reports
    assert (new.status, new.order_qty, new.leaves_qty, new.cum_qty) == (E.ORDER_STATUS_NEW, "10", "10", "0")
    assert (new.symbol, new.side, new.type, new.time_in_force) == (
        "AAPL",
        common_pb2.SIDE_BUY,
        common_pb2.ORDER_TYPE_MARKET,
        common_pb2.TIME_IN_FORCE_DAY,
    )
    assert (new.strategy_id, new.member_id, new.client_order_id, new.venue) == ("alpha", "m1", "c-o1", "sim")
    assert new.venue_order_id and new.venue_order_id == fill.venue_order_id
    # 100 * (1 + 2/10000) = 100.02; fee 1 bp of 10 * 100.02 = 0.10002
    assert (fill.fill_qty, fill.fill_price, fill.fee) == ("10", "100.02", "0.10002")
    assert (fill.status, fill.cum_qty, fill.avg_price, fill.leaves_qty) == (E.ORDER_STATUS_FILLED, "10", "100.02", "0")
    assert fill.execution_id != new.execution_id
    assert fill.event_ns > 0


def test_market_sell_fills_below_the_reference_and_the_fee_has_a_minimum(clock: FakeClock) -> None:
    engine = SimEngine(SimConfig(fee_bps=D(0), fee_per_share=D("0.005"), fee_min=D("1")), clock=clock)
    engine.on_bar(bar("99", "101", "98", "100"))
    fill = engine.submit(order(side=common_pb2.SIDE_SELL, qty="10"))[-1]
    assert (fill.fill_price, fill.fee) == ("99.98", "1")  # 10 * 0.005 = 0.05 < minimum 1
    big = engine.submit(order("o2", side=common_pb2.SIDE_SELL, qty="1000"))[-1]
    assert big.fee == "5"


def test_market_order_uses_the_quote_when_one_is_known(engine: SimEngine) -> None:
    engine.on_bar(bar("99", "101", "98", "100"))
    engine.on_quote(marketdata_pb2.Quote(symbol="AAPL", bid_price="100.5", ask_price="101", ts_ns=DAY1))
    assert engine.submit(order(qty="1"))[-1].fill_price == "101.0202"
    assert engine.submit(order("o2", side=common_pb2.SIDE_SELL, qty="1"))[-1].fill_price == "100.4799"


def test_partial_fills_follow_participation_across_bars(engine: SimEngine) -> None:
    engine.on_bar(bar("100", "100", "100", "100", volume="400"))  # 25% -> 100 available
    first = engine.submit(order(qty="250", tif=common_pb2.TIME_IN_FORCE_GTC))
    assert kinds(first) == ["NEW", "PARTIAL_FILL"]
    assert (first[1].fill_qty, first[1].cum_qty, first[1].leaves_qty) == ("100", "100", "150")
    assert first[1].status == E.ORDER_STATUS_PARTIALLY_FILLED

    second = engine.on_bar(bar("110", "112", "109", "111", volume="400"))
    assert kinds(second) == ["PARTIAL_FILL"]
    assert (second[0].fill_qty, second[0].fill_price, second[0].cum_qty) == ("100", "110.022", "200")

    third = engine.on_bar(bar("120", "121", "119", "120", volume="400"))
    assert kinds(third) == ["FILL"]
    assert (third[0].fill_qty, third[0].fill_price, third[0].leaves_qty) == ("50", "120.024", "0")
    # VWAP exact in Decimal: (100*100.02 + 100*110.022 + 50*120.024) / 250
    expected = (D(100) * D("100.02") + D(100) * D("110.022") + D(50) * D("120.024")) / D(250)
    assert D(third[0].avg_price) == expected == D("108.0216")
    assert third[0].cum_qty == "250" and third[0].status == E.ORDER_STATUS_FILLED
    assert engine.open_orders() == []


def test_two_orders_share_the_liquidity_of_one_bar(engine: SimEngine) -> None:
    engine.on_bar(bar("100", "100", "100", "100", volume="400"))
    assert engine.submit(order("o1", qty="60"))[-1].fill_qty == "60"
    assert engine.submit(order("o2", qty="60"))[-1].fill_qty == "40"


def test_ioc_cancels_the_unfilled_remainder(engine: SimEngine) -> None:
    engine.on_bar(bar("100", "100", "100", "100", volume="400"))
    reports = engine.submit(order(qty="150", tif=common_pb2.TIME_IN_FORCE_IOC))
    assert kinds(reports) == ["NEW", "PARTIAL_FILL", "CANCELED"]
    canceled = reports[-1]
    assert (canceled.status, canceled.cum_qty, canceled.leaves_qty) == (E.ORDER_STATUS_CANCELED, "100", "0")
    assert "IOC" in canceled.text
    assert engine.open_orders() == []


def test_fok_fills_completely_or_cancels_without_any_fill(engine: SimEngine) -> None:
    engine.on_bar(bar("100", "100", "100", "100", volume="400"))
    refused = engine.submit(order("o1", qty="150", tif=common_pb2.TIME_IN_FORCE_FOK))
    assert kinds(refused) == ["NEW", "CANCELED"]
    assert refused[-1].cum_qty == "0" and "FOK" in refused[-1].text
    filled = engine.submit(order("o2", qty="100", tif=common_pb2.TIME_IN_FORCE_FOK))
    assert kinds(filled) == ["NEW", "FILL"]
    assert filled[-1].fill_qty == "100"


def test_marketable_limit_fills_at_once_at_the_better_of_limit_and_slipped_price(engine: SimEngine) -> None:
    engine.on_bar(bar("99", "101", "98", "100"))
    cheap = engine.submit(order("o1", type=common_pb2.ORDER_TYPE_LIMIT, limit="105"))
    assert kinds(cheap) == ["NEW", "FILL"] and cheap[-1].fill_price == "100.02"
    capped = engine.submit(order("o2", type=common_pb2.ORDER_TYPE_LIMIT, limit="100.01"))
    assert kinds(capped) == ["NEW", "FILL"] and capped[-1].fill_price == "100.01"
    assert capped[0].limit_price == "100.01"


def test_resting_buy_limit_fills_when_a_bar_low_reaches_it_and_a_gap_gives_the_open(engine: SimEngine) -> None:
    engine.on_bar(bar("99", "101", "98", "100"))
    resting = engine.submit(order("o1", type=common_pb2.ORDER_TYPE_LIMIT, limit="95", tif=common_pb2.TIME_IN_FORCE_GTC))
    gapper = engine.submit(order("o2", type=common_pb2.ORDER_TYPE_LIMIT, limit="97", tif=common_pb2.TIME_IN_FORCE_GTC))
    assert kinds(resting) == ["NEW"] and kinds(gapper) == ["NEW"]
    assert engine.on_bar(bar("99", "100", "97.5", "98")) == []  # neither low reached

    touched = engine.on_bar(bar("98", "98", "94", "96"))
    by_order = {r.order_id: r for r in touched}
    assert by_order["o1"].fill_price == "95"  # traded through the limit: the limit
    assert by_order["o2"].fill_price == "97"  # low 94 <= 97, open 98 above it: the limit
    engine.submit(order("o3", type=common_pb2.ORDER_TYPE_LIMIT, limit="90", tif=common_pb2.TIME_IN_FORCE_GTC))
    gap = engine.on_bar(bar("85", "86", "84", "85"))
    assert [(r.order_id, r.fill_price) for r in gap] == [("o3", "85")]  # gapped below: the better open


def test_resting_sell_limit_fills_on_a_bar_high(engine: SimEngine) -> None:
    engine.on_bar(bar("99", "101", "98", "100"))
    engine.submit(order(side=common_pb2.SIDE_SELL, type=common_pb2.ORDER_TYPE_LIMIT, limit="105"))
    assert engine.on_bar(bar("100", "104", "99", "103")) == []
    gap = engine.on_bar(bar("107", "108", "106", "107"))
    assert kinds(gap) == ["FILL"] and gap[0].fill_price == "107"


def test_ioc_limit_that_is_not_marketable_never_rests(engine: SimEngine) -> None:
    engine.on_bar(bar("99", "101", "98", "100"))
    reports = engine.submit(order(type=common_pb2.ORDER_TYPE_LIMIT, limit="90", tif=common_pb2.TIME_IN_FORCE_IOC))
    assert kinds(reports) == ["NEW", "CANCELED"]
    assert engine.open_orders() == []


def test_buy_stop_triggers_on_the_bar_high_and_fills_as_market(engine: SimEngine) -> None:
    engine.on_bar(bar("99", "101", "98", "100"))
    assert kinds(engine.submit(order("o1", type=common_pb2.ORDER_TYPE_STOP, stop="105"))) == ["NEW"]
    assert kinds(engine.submit(order("o2", type=common_pb2.ORDER_TYPE_STOP, stop="102"))) == ["NEW"]
    assert engine.on_bar(bar("100", "101.5", "99", "101")) == []
    triggered = {r.order_id: r for r in engine.on_bar(bar("101", "106", "100", "105"))}
    assert triggered["o1"].fill_price == "105.021"  # max(105, open 101) * 1.0002
    assert triggered["o2"].fill_price == "102.0204"
    assert triggered["o1"].stop_price == "105"


def test_sell_stop_gapping_through_fills_at_the_open(engine: SimEngine) -> None:
    engine.on_bar(bar("99", "101", "98", "100"))
    engine.submit(order(side=common_pb2.SIDE_SELL, type=common_pb2.ORDER_TYPE_STOP, stop="95"))
    gap = engine.on_bar(bar("90", "91", "89", "90"))
    assert kinds(gap) == ["FILL"] and gap[0].fill_price == "89.982"  # min(95, 90) * 0.9998


def test_stop_limit_triggers_then_waits_for_its_limit(engine: SimEngine) -> None:
    engine.on_bar(bar("99", "101", "98", "100"))
    engine.submit(
        order(type=common_pb2.ORDER_TYPE_STOP_LIMIT, stop="102", limit="102.5", tif=common_pb2.TIME_IN_FORCE_GTC)
    )
    # opens above the limit: triggered, but the limit is never reached on this bar
    assert engine.on_bar(bar("103", "104", "102.8", "103.5")) == []
    assert engine.get("o1") is not None and engine.get("o1").triggered  # type: ignore[union-attr]
    filled = engine.on_bar(bar("103", "103", "102", "102.2"))
    assert kinds(filled) == ["FILL"] and filled[0].fill_price == "102.5"


def test_stop_limit_fills_on_the_bar_that_triggers_it(engine: SimEngine) -> None:
    engine.on_bar(bar("99", "101", "98", "100"))
    engine.submit(order(type=common_pb2.ORDER_TYPE_STOP_LIMIT, stop="102", limit="103"))
    filled = engine.on_bar(bar("101", "104", "100.5", "103"))
    assert kinds(filled) == ["FILL"] and filled[0].fill_price == "102"  # triggered at the stop, under the limit


def test_day_order_expires_on_the_first_update_of_a_later_utc_date_and_gtc_survives(engine: SimEngine) -> None:
    engine.on_bar(bar("99", "101", "98", "100"))
    engine.submit(order("day", type=common_pb2.ORDER_TYPE_LIMIT, limit="90", tif=common_pb2.TIME_IN_FORCE_DAY))
    engine.submit(order("gtc", type=common_pb2.ORDER_TYPE_LIMIT, limit="90", tif=common_pb2.TIME_IN_FORCE_GTC))
    assert engine.on_bar(bar("99", "100", "98", "99", start_ns=DAY1 + 3600 * SEC)) == []
    expired = engine.on_bar(bar("99", "100", "98", "99", start_ns=DAY2, symbol="MSFT"))
    assert kinds(expired) == ["EXPIRED"]
    assert (expired[0].order_id, expired[0].status) == ("day", E.ORDER_STATUS_EXPIRED)
    assert "DAY" in expired[0].text
    assert [o.order_id for o in engine.open_orders()] == ["gtc"]


def test_cancel_of_a_resting_order_and_of_unknown_or_final_orders(engine: SimEngine) -> None:
    engine.on_bar(bar("99", "101", "98", "100"))
    engine.submit(order("rest", type=common_pb2.ORDER_TYPE_LIMIT, limit="90"))
    engine.submit(order("done", qty="1"))

    canceled = engine.cancel(cancel("rest"))
    assert kinds(canceled) == ["CANCELED"]
    assert (canceled[0].status, canceled[0].leaves_qty, canceled[0].client_order_id) == (
        E.ORDER_STATUS_CANCELED,
        "0",
        "c-rest",
    )
    assert engine.open_orders() == []
    assert engine.cancel(cancel("rest")) == []  # a redelivered cancel changes nothing

    unknown = engine.cancel(cancel("nope"))
    assert kinds(unknown) == ["CANCEL_REJECTED"] and "unknown order" in unknown[0].text
    assert unknown[0].strategy_id == "alpha"
    final = engine.cancel(cancel("done"))
    assert kinds(final) == ["CANCEL_REJECTED"] and final[0].text == "order is already filled"
    assert final[0].status == E.ORDER_STATUS_FILLED


def test_notional_market_order_buys_notional_over_price_rounded_down(engine: SimEngine) -> None:
    engine.on_bar(bar("99", "101", "98", "300"))
    reports = engine.submit(order(qty="", notional="1000"))
    assert kinds(reports) == ["NEW", "FILL"]
    fill = reports[-1]
    # 1000 / 300.06 = 3.33266680... -> 3.332666799 (rounded down to 9 decimals)
    assert fill.fill_qty == "3.332666799" and fill.order_qty == "3.332666799"
    assert fill.notional == "1000"
    assert D(fill.fill_qty) * D(fill.fill_price) <= D(1000)


def test_notional_order_without_a_price_waits_and_sizes_on_the_first_bar(engine: SimEngine) -> None:
    new = engine.submit(order(qty="", notional="1000"))
    assert kinds(new) == ["NEW"] and new[0].order_qty == "" and new[0].leaves_qty == ""
    fill = engine.on_bar(bar("250", "251", "249", "250"))
    assert kinds(fill) == ["FILL"] and fill[0].fill_price == "250.05" and fill[0].fill_qty == "3.999200159"


def test_duplicate_submit_of_the_same_order_id_is_ignored(engine: SimEngine) -> None:
    engine.on_bar(bar("99", "101", "98", "100"))
    assert kinds(engine.submit(order("o1", type=common_pb2.ORDER_TYPE_LIMIT, limit="90"))) == ["NEW"]
    assert engine.submit(order("o1", type=common_pb2.ORDER_TYPE_LIMIT, limit="90")) == []
    assert len(engine.open_orders()) == 1


def test_avg_price_and_cum_qty_are_exact_decimals(engine: SimEngine) -> None:
    engine.on_trade(marketdata_pb2.Trade(symbol="AAPL", price="0.1", size="4", ts_ns=DAY1))  # 1 available per trade
    engine.submit(order(qty="3", tif=common_pb2.TIME_IN_FORCE_GTC))
    engine.on_trade(marketdata_pb2.Trade(symbol="AAPL", price="0.2", size="4", ts_ns=DAY1))
    last = engine.on_trade(marketdata_pb2.Trade(symbol="AAPL", price="0.3", size="4", ts_ns=DAY1))[-1]
    assert last.cum_qty == "3"
    # fills 1 @ 0.10002, 1 @ 0.20004, 1 @ 0.30006: floats would not give this exactly
    assert D(last.avg_price) == D("0.20004")


def test_market_order_without_any_price_rests_until_the_first_price(engine: SimEngine) -> None:
    assert kinds(engine.submit(order(qty="5"))) == ["NEW"]
    fills = engine.on_trade(marketdata_pb2.Trade(symbol="AAPL", price="50", ts_ns=DAY1))
    assert kinds(fills) == ["FILL"] and fills[0].fill_price == "50.01"


def test_ioc_without_any_price_is_canceled(engine: SimEngine) -> None:
    assert kinds(engine.submit(order(qty="5", tif=common_pb2.TIME_IN_FORCE_IOC))) == ["NEW", "CANCELED"]


def test_order_with_bad_fields_is_rejected_with_a_reason(engine: SimEngine) -> None:
    reports = engine.submit(order(type=common_pb2.ORDER_TYPE_LIMIT))  # no limit price
    assert kinds(reports) == ["REJECTED"]
    assert reports[0].status == E.ORDER_STATUS_REJECTED and "limit_price is required" in reports[0].text


def test_routed_order_without_an_action_is_malformed(engine: SimEngine) -> None:
    with pytest.raises(DeskError) as err:
        engine.submit(orders_pb2.RoutedOrder(order_id="x", strategy_id="alpha"))
    assert err.value.code == "MALFORMED"


def test_expire_all_expires_every_resting_order_for_a_shutdown(engine: SimEngine) -> None:
    engine.on_bar(bar("99", "101", "98", "100"))
    engine.submit(order("a", type=common_pb2.ORDER_TYPE_LIMIT, limit="90", tif=common_pb2.TIME_IN_FORCE_GTC))
    engine.submit(order("b", qty="1"))
    reports = engine.expire_all()
    assert [(r.order_id, r.exec_type, r.text) for r in reports] == [("a", E.EXEC_TYPE_EXPIRED, SHUTDOWN_TEXT)]
    assert engine.open_orders() == []


def test_an_engine_that_forgets_final_orders_reports_the_same_and_still_ignores_their_ids() -> None:
    """retain_final (the backtester's memory bound) changes what is held, not what is reported."""

    def run(retain: int | None) -> tuple[SimEngine, list[bytes]]:
        ids = itertools.count(1)
        engine = SimEngine(
            SimConfig(), clock=FakeClock(), new_execution_id=lambda: f"exec-{next(ids)}", retain_final=retain
        )
        made: list[executions_pb2.ExecutionReport] = []
        for i in range(40):
            made += engine.on_bar(bar("100", "101", "99", str(100 + i % 3), volume="1000"))
            made += engine.submit(order(f"o{i}", side=common_pb2.SIDE_BUY if i % 2 else common_pb2.SIDE_SELL))
            made += engine.submit(
                order(f"l{i}", type=common_pb2.ORDER_TYPE_LIMIT, limit="99.5", tif=common_pb2.TIME_IN_FORCE_GTC)
            )
            if i % 4 == 0:
                made += engine.cancel(cancel(f"l{i}"))
        return engine, [r.SerializeToString() for r in made]

    keep_all, reports_all = run(None)
    forgetful, reports = run(3)
    assert reports == reports_all and len(reports) > 120
    assert len(forgetful._orders) < len(keep_all._orders) // 4
    assert forgetful.get("o0") is None and keep_all.get("o0") is not None
    assert forgetful.submit(order("o0")) == []  # a forgotten order's id is still known: not traded twice
    (rejected,) = forgetful.cancel(cancel("o0"))
    assert rejected.exec_type == E.EXEC_TYPE_CANCEL_REJECTED and rejected.text == "order o0 is already final"
