"""The advanced orders at the Alpaca venue: real alpaca-py against the fake Alpaca, real nats-server.

A trailing stop goes to Alpaca as one (its trail, Alpaca's hwm and stop in the reports) and takes
part in netting as a stop; a replace cancels the old order's Alpaca order and places the new one for
the rest of its total, through netting; a bracket's / OTO's entry and a take-profit go to Alpaca as
plain orders with the desk's ids, a bracket's / OCO's stop-loss is armed at the desk and sent as a
market order when the Alpaca price reaches its stop, after its take-profit is canceled."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from nats.aio.client import Client

from desk import reconcile
from desk.bus.testing import NatsServer
from desk.v1 import common_pb2, executions_pb2, orders_pb2
from tests.fakes.alpaca import FakeAlpaca
from tests.integration import test_alpaca_gateway as harness
from tests.integration import test_reconcile
from tests.integration.test_alpaca_gateway import (
    Gateway,
    Reports,
    cancel,
    no_wash_refusal,
    oid,
    positions_agree,
    quote,
    route,
    routed,
    until,
)

# the Alpaca gateway suite's fixtures: the fake, a gateway in process, the EXECUTIONS reader
fake = harness.fake
gateway = harness.gateway
reports = harness.reports
desk = test_reconcile.desk  # the ledger (SQLite) and the gateway in process, for desk reconcile

pytestmark = pytest.mark.integration

E = executions_pb2
SELL = common_pb2.SIDE_SELL
TRAILING = common_pb2.ORDER_TYPE_TRAILING_STOP
GTC = common_pb2.TIME_IN_FORCE_GTC


async def test_a_trailing_stop_is_placed_at_alpaca_and_its_stop_and_hwm_are_reported(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    await route(nc, routed("buy", qty="5"))
    assert await reports.kinds(2) == ["NEW", "FILL"]
    await route(nc, routed("trail", side=SELL, type=TRAILING, trail_percent="2", time_in_force=GTC, qty="5"))
    new = await reports.next()
    assert (new.exec_type, new.type, new.trail_percent, new.hwm, new.stop_price) == (
        E.EXEC_TYPE_NEW,
        TRAILING,
        "2",
        "100",
        "98",
    )
    placed = fake.order("alpha.c-trail")
    assert (placed.type, placed.trail_percent, placed.stop_price) == ("trailing_stop", Decimal(2), Decimal(98))
    fake.set_price("AAPL", "110")  # Alpaca ratchets it: hwm 110, stop 107.8
    fake.fill("alpha.c-trail", "5", "107.8")
    fill = await reports.until(lambda r: r.order_id == oid("trail") and bool(r.fill_qty))
    assert (fill.exec_type, fill.fill_price, fill.hwm, fill.stop_price) == (E.EXEC_TYPE_FILL, "107.8", "110", "107.8")
    await positions_agree(nc)


async def test_a_market_buy_pulls_another_strategys_trailing_stop_and_it_is_placed_again(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    await quote(nc, gateway, "AAPL", "99.5", "100.5")
    await route(nc, routed("a-buy", strategy="alpha", qty="5"))
    await route(
        nc, routed("a-trail", strategy="alpha", side=SELL, type=TRAILING, trail_price="3", time_in_force=GTC, qty="5")
    )
    assert await reports.kinds(3) == ["NEW", "FILL", "NEW"]
    await route(nc, routed("b-buy", strategy="beta", qty="2"))  # a buy opposite a trailing stop: Alpaca's 42210000
    bought = await reports.until(lambda r: r.order_id == oid("b-buy", "beta") and bool(r.fill_qty))
    assert (bought.exec_type, bought.fill_qty) == (E.EXEC_TYPE_FILL, "2")
    await until(
        lambda: fake.call(lambda: any(o.client_order_id == "alpha.c-a-trail.2" for o in fake.orders.values())),
        "alpha's trailing stop placed again",
    )
    again = fake.order("alpha.c-a-trail.2")
    assert (again.status, again.type, again.qty, again.trail_price) == ("new", "trailing_stop", 5, 3)
    assert no_wash_refusal(fake)
    await positions_agree(nc)


async def test_a_replace_of_an_unknown_order_is_rejected_with_the_reason(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    await route(nc, routed("adv", time_in_force=GTC, replaces="c-other"))
    rejected = await reports.next()
    assert (rejected.exec_type, rejected.status) == (E.EXEC_TYPE_REJECTED, E.ORDER_STATUS_REJECTED)
    assert "UNKNOWN_ORDER: no order c-other of this strategy to replace" in rejected.text
    assert fake.call(lambda: [o for o in fake.orders.values() if o.client_order_id.startswith("alpha.c-adv")]) == []


async def test_a_replace_cancels_the_old_alpaca_order_and_places_the_rest_of_the_new_total(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    limit: dict[str, Any] = {"type": common_pb2.ORDER_TYPE_LIMIT, "time_in_force": GTC}
    await route(nc, routed("bid", limit_price="95", **limit))
    assert await reports.kinds(1) == ["NEW"]
    fake.fill("alpha.c-bid", "4", "95")
    part = await reports.next()
    assert (part.exec_type, part.fill_qty) == (E.EXEC_TYPE_PARTIAL_FILL, "4")

    await route(nc, routed("bid2", limit_price="96", qty="12", replaces="c-bid", **limit))
    new = await reports.until(lambda r: r.order_id == oid("bid2"))
    assert (new.exec_type, new.order_qty, new.replaces) == (E.EXEC_TYPE_NEW, "8", oid("bid"))  # 12 in all, 4 filled
    old = await reports.until(lambda r: r.order_id == oid("bid"))
    assert (old.exec_type, old.cum_qty, old.text) == (E.EXEC_TYPE_CANCELED, "4", "replaced by c-bid2")
    await until(
        lambda: fake.call(lambda: any(o.client_order_id == "alpha.c-bid2" for o in fake.orders.values())),
        "the new order at Alpaca",
    )
    placed = fake.order("alpha.c-bid2")
    assert (placed.qty, placed.limit_price, fake.order("alpha.c-bid").status) == (8, 96, "canceled")
    fake.fill("alpha.c-bid2", "8", "96")
    filled = await reports.until(lambda r: r.order_id == oid("bid2") and bool(r.fill_qty))
    assert (filled.exec_type, filled.cum_qty) == (E.EXEC_TYPE_FILL, "8")
    assert no_wash_refusal(fake)
    await positions_agree(nc)


async def test_a_replace_of_a_filled_order_is_rejected_and_nothing_is_placed(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    await route(nc, routed("done", qty="3"))
    assert await reports.kinds(2) == ["NEW", "FILL"]
    await route(nc, routed("again", qty="5", replaces="c-done"))
    rejected = await reports.next()
    assert (rejected.order_id, rejected.exec_type) == (oid("again"), E.EXEC_TYPE_REJECTED)
    assert rejected.text == "ORDER_CLOSED: order c-done is already filled; nothing to replace"
    assert fake.call(lambda: [o for o in fake.orders.values() if o.client_order_id == "alpha.c-again"]) == []


async def test_a_replace_cut_off_by_a_gateway_stop_after_the_cancel_is_finished_by_the_next_gateway(
    nats_server: NatsServer, nc: Client, fake: FakeAlpaca, reports: Reports
) -> None:
    limit: dict[str, Any] = {"type": common_pb2.ORDER_TYPE_LIMIT, "time_in_force": GTC}
    first = await harness.start_gateway(nats_server, fake, alpaca_timeout=1, alpaca_retry_budget=1)
    await route(nc, routed("bid", limit_price="95", **limit))
    assert await reports.kinds(1) == ["NEW"]
    old_alpaca_id = fake.order("alpha.c-bid").id
    # the cancel reaches Alpaca, its reply never reaches the gateway: the gateway stops not knowing
    gate = fake.hold("DELETE", path=f"/v2/orders/{old_alpaca_id}", commit=True)
    await route(nc, routed("bid2", limit_price="96", qty="10", replaces="c-bid", **limit))
    record = await reports.until(lambda r: r.order_id == oid("bid2"))
    assert (record.exec_type, record.replaces) == (E.EXEC_TYPE_NEW, oid("bid"))
    await asyncio.to_thread(gate.reached.wait, 10)
    await first.service.stop()
    fake.release(gate, proceed=False)
    assert fake.order("alpha.c-bid").status == "canceled"

    second = await harness.start_gateway(nats_server, fake)
    try:
        old = await reports.until(lambda r: r.order_id == oid("bid") and r.exec_type == E.EXEC_TYPE_CANCELED)
        assert old.text == "replaced by c-bid2"
        await until(
            lambda: fake.call(lambda: any(o.client_order_id == "alpha.c-bid2" for o in fake.orders.values())),
            "the redelivered replace placed",
        )
        assert (fake.order("alpha.c-bid2").qty, fake.order("alpha.c-bid2").limit_price) == (10, 96)
    finally:
        await second.service.stop()
    stored = await harness.stream_reports(nc)
    assert len({r.execution_id for r in stored}) == len(stored)
    assert [r.order_id for r in stored if r.exec_type == E.EXEC_TYPE_NEW].count(oid("bid2")) == 1


# --- bracket, OCO and OTO: the entry and the take-profit at Alpaca, the stop-loss armed at the desk --------

BRACKET: dict[str, Any] = {
    "order_class": orders_pb2.ORDER_CLASS_BRACKET,
    "take_profit_limit_price": "110",
    "stop_loss_stop_price": "95",
    "time_in_force": GTC,
}


def at_fake(fake: FakeAlpaca, client_order_id: str) -> bool:
    return fake.call(lambda: any(o.client_order_id == client_order_id for o in fake.orders.values()))


async def bracket_resting(nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports) -> None:
    """alpha's bracket buy of 10 filled at 100: its take-profit rests at Alpaca, its stop-loss is armed."""
    await quote(nc, gateway, "AAPL", "99.5", "100.5")
    await route(nc, routed("br", **BRACKET))
    filled = await reports.until(lambda r: r.order_id == oid("br") and r.exec_type == E.EXEC_TYPE_FILL)
    assert (filled.cum_qty, filled.order_class) == ("10", orders_pb2.ORDER_CLASS_BRACKET)
    armed = await reports.until(lambda r: r.order_id == oid("br-sl"))
    assert (armed.exec_type, armed.parent_order_id, armed.stop_price, armed.order_qty) == (
        E.EXEC_TYPE_NEW,
        oid("br"),
        "95",
        "10",
    )
    assert "armed at the desk" in armed.text
    take_profit = await reports.until(lambda r: r.order_id == oid("br-tp"))
    assert (take_profit.exec_type, take_profit.parent_order_id, take_profit.limit_price) == (
        E.EXEC_TYPE_NEW,
        oid("br"),
        "110",
    )
    placed = fake.order("alpha.c-br-tp")
    assert (placed.side, placed.type, placed.qty, placed.limit_price) == ("sell", "limit", 10, 110)
    assert not at_fake(fake, "alpha.c-br-sl")  # one exit holds the shares at Alpaca, never two


async def test_a_brackets_take_profit_fills_and_its_stop_loss_is_canceled(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    await bracket_resting(nc, fake, gateway, reports)
    fake.fill("alpha.c-br-tp", "10", "110")
    tp = await reports.until(lambda r: r.order_id == oid("br-tp") and bool(r.fill_qty))
    assert (tp.exec_type, tp.fill_price) == (E.EXEC_TYPE_FILL, "110")
    sl = await reports.until(lambda r: r.order_id == oid("br-sl") and r.exec_type != E.EXEC_TYPE_NEW)
    assert (sl.exec_type, sl.text, sl.cum_qty) == (E.EXEC_TYPE_CANCELED, "OCO: c-br-tp filled", "0")
    assert not at_fake(fake, "alpha.c-br-sl")
    assert no_wash_refusal(fake)
    await positions_agree(nc)


async def test_a_brackets_stop_loss_triggers_on_the_alpaca_price_and_the_take_profit_is_canceled(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    await bracket_resting(nc, fake, gateway, reports)
    await quote(nc, gateway, "AAPL", "96", "97")  # mid 96.5: above the stop, nothing happens
    fake.fill("alpha.c-br-tp", "3", "110")  # 3 of the take-profit fill first: the stop-loss sells the other 7
    part = await reports.until(lambda r: r.order_id == oid("br-tp") and bool(r.fill_qty))
    assert part.exec_type == E.EXEC_TYPE_PARTIAL_FILL
    fake.set_price("AAPL", "94.5")
    await quote(nc, gateway, "AAPL", "94", "95")  # mid 94.5 reaches the stop 95
    tp = await reports.until(lambda r: r.order_id == oid("br-tp") and r.exec_type == E.EXEC_TYPE_CANCELED)
    assert (tp.text, tp.cum_qty) == ("OCO: c-br-sl triggered", "3")
    sl = await reports.until(lambda r: r.order_id == oid("br-sl") and bool(r.fill_qty))
    assert (sl.exec_type, sl.fill_qty, sl.cum_qty) == (E.EXEC_TYPE_FILL, "7", "7")
    sent = fake.order("alpha.c-br-sl")
    assert (sent.side, sent.type, sent.qty, fake.order("alpha.c-br-tp").status) == ("sell", "market", 7, "canceled")
    assert no_wash_refusal(fake)
    await positions_agree(nc)
    stored = await harness.stream_reports(nc)
    triggered = [r for r in stored if r.order_id == oid("br-sl") and r.text.startswith("stop-loss triggered")]
    assert len(triggered) == 1 and "reached the stop 95" in triggered[0].text


async def test_canceling_an_armed_stop_loss_cancels_its_take_profit_at_alpaca_and_the_other_way_round(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    await bracket_resting(nc, fake, gateway, reports)
    await route(nc, cancel("br-sl"))
    sl = await reports.until(lambda r: r.order_id == oid("br-sl") and r.exec_type == E.EXEC_TYPE_CANCELED)
    assert "canceled on request" in sl.text
    tp = await reports.until(lambda r: r.order_id == oid("br-tp") and r.exec_type == E.EXEC_TYPE_CANCELED)
    assert (tp.text, fake.order("alpha.c-br-tp").status) == ("OCO: c-br-sl was canceled", "canceled")

    await route(nc, routed("br2", **BRACKET))
    await reports.until(lambda r: r.order_id == oid("br2-tp") and r.exec_type == E.EXEC_TYPE_NEW)
    await route(nc, cancel("br2-tp"))
    armed = await reports.until(lambda r: r.order_id == oid("br2-sl") and r.exec_type == E.EXEC_TYPE_CANCELED)
    assert armed.text == "OCO: c-br2-tp was canceled"
    assert not at_fake(fake, "alpha.c-br2-sl")
    await positions_agree(nc)


async def test_an_oco_order_rests_its_take_profit_and_its_stop_loss_sells_what_is_left(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    await quote(nc, gateway, "AAPL", "99.5", "100.5")
    await route(nc, routed("buy", qty="5"))
    assert await reports.kinds(2) == ["NEW", "FILL"]
    oco = {**BRACKET, "order_class": orders_pb2.ORDER_CLASS_OCO, "type": common_pb2.ORDER_TYPE_LIMIT}
    await route(nc, routed("oco", side=SELL, qty="5", **oco))
    armed = await reports.until(lambda r: r.order_id == oid("oco-sl"))
    assert (armed.side, armed.parent_order_id, "armed at the desk" in armed.text) == (SELL, oid("oco"), True)
    await reports.until(lambda r: r.order_id == oid("oco") and r.exec_type == E.EXEC_TYPE_NEW)
    assert (fake.order("alpha.c-oco").type, fake.order("alpha.c-oco").limit_price) == ("limit", 110)
    fake.set_price("AAPL", "94")
    await quote(nc, gateway, "AAPL", "93.5", "94.5")
    sl = await reports.until(lambda r: r.order_id == oid("oco-sl") and bool(r.fill_qty))
    assert (sl.exec_type, sl.cum_qty) == (E.EXEC_TYPE_FILL, "5")
    assert fake.order("alpha.c-oco").status == "canceled"
    assert no_wash_refusal(fake)
    await positions_agree(nc)


async def test_an_oto_places_its_one_exit_at_alpaca_once_the_entry_fills(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    oto: dict[str, Any] = {
        "order_class": orders_pb2.ORDER_CLASS_OTO,
        "stop_loss_stop_price": "90",
        "time_in_force": GTC,
    }
    await route(nc, routed("oto", qty="4", **oto))
    exit_new = await reports.until(lambda r: r.order_id == oid("oto-sl"))
    assert (exit_new.exec_type, exit_new.parent_order_id, exit_new.order_qty) == (E.EXEC_TYPE_NEW, oid("oto"), "4")
    placed = fake.order("alpha.c-oto-sl")
    assert (placed.side, placed.type, placed.stop_price, placed.qty) == ("sell", "stop", 90, 4)  # rests at Alpaca
    fake.fill("alpha.c-oto-sl", "4", "90")
    done = await reports.until(lambda r: r.order_id == oid("oto-sl") and bool(r.fill_qty))
    assert done.exec_type == E.EXEC_TYPE_FILL
    await positions_agree(nc)


async def test_another_members_market_buy_while_a_take_profit_rests_both_trade_without_a_wash_trade(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    await bracket_resting(nc, fake, gateway, reports)
    await route(nc, routed("b-buy", strategy="beta", qty="3"))  # opposite alpha's resting sell limit 110
    bought = await reports.until(lambda r: r.order_id == oid("b-buy", "beta") and bool(r.fill_qty))
    assert (bought.exec_type, bought.cum_qty) == (E.EXEC_TYPE_FILL, "3")
    await until(lambda: at_fake(fake, "alpha.c-br-tp.2"), "alpha's take-profit placed again")
    assert (fake.order("alpha.c-br-tp.2").qty, fake.order("alpha.c-br-tp.2").limit_price) == (10, 110)
    assert no_wash_refusal(fake)
    fake.fill("alpha.c-br-tp.2", "10", "110")
    sl = await reports.until(lambda r: r.order_id == oid("br-sl") and r.exec_type == E.EXEC_TYPE_CANCELED)
    assert sl.text == "OCO: c-br-tp filled"
    await positions_agree(nc)


async def test_a_bracket_across_a_gateway_restart_is_attributed_again_and_its_stop_loss_sells_once(
    nats_server: NatsServer, nc: Client, fake: FakeAlpaca, reports: Reports
) -> None:
    first = await harness.start_gateway(nats_server, fake)
    try:
        await bracket_resting(nc, fake, first, reports)
    finally:
        await first.service.stop()
    fake.fill("alpha.c-br-tp", "2", "110")  # while no gateway runs
    second = await harness.start_gateway(nats_server, fake)
    try:
        part = await reports.until(lambda r: r.order_id == oid("br-tp") and bool(r.fill_qty))
        assert (part.exec_type, part.cum_qty) == (E.EXEC_TYPE_PARTIAL_FILL, "2")
        fake.set_price("AAPL", "94")
        await quote(nc, second, "AAPL", "93.5", "94.5")
        sl = await reports.until(lambda r: r.order_id == oid("br-sl") and bool(r.fill_qty))
        assert (sl.exec_type, sl.cum_qty) == (E.EXEC_TYPE_FILL, "8")
        await positions_agree(nc)
    finally:
        await second.service.stop()
    stored = await harness.stream_reports(nc)
    assert len({r.execution_id for r in stored}) == len(stored)
    for leg in ("br", "br-tp", "br-sl"):
        news = [r for r in stored if r.exec_type == E.EXEC_TYPE_NEW and not r.text.startswith("stop-loss triggered")]
        assert [r.order_id for r in news].count(oid(leg)) == 1
    assert sum(Decimal(r.fill_qty) for r in stored if r.order_id == oid("br-sl") and r.fill_qty) == 8
    assert fake.call(lambda: [o.client_order_id for o in fake.orders.values()].count("alpha.c-br-sl")) == 1


async def test_brackets_both_ways_and_another_members_order_reconcile_clean(
    desk: test_reconcile.Desk, fake: FakeAlpaca, reports: Reports
) -> None:
    code, out = await desk.cli("--set-baseline")
    assert code == 0, out
    assert desk.gateway is not None
    nc = desk.nc
    await bracket_resting(nc, fake, desk.gateway, reports)
    await route(nc, routed("b-buy", strategy="beta", qty="3"))  # pulls alpha's take-profit, placed again as .2
    await reports.until(lambda r: r.order_id == oid("b-buy", "beta") and r.exec_type == E.EXEC_TYPE_FILL)
    await until(lambda: at_fake(fake, "alpha.c-br-tp.2"), "alpha's take-profit placed again")
    fake.fill("alpha.c-br-tp.2", "4", "110")
    await reports.until(lambda r: r.order_id == oid("br-tp") and r.exec_type == E.EXEC_TYPE_PARTIAL_FILL)
    fake.set_price("AAPL", "94")
    await quote(nc, desk.gateway, "AAPL", "93.5", "94.5")  # the stop-loss sells the other 6
    await reports.until(lambda r: r.order_id == oid("br-sl") and r.exec_type == E.EXEC_TYPE_FILL)
    await desk.booked()
    result = await desk.check(reconcile.Baseline.load(desk.baseline))
    assert result.findings == [] and result.not_checked == []
    code, out = await desk.cli("--json")
    assert code == 0, out
