"""The broker gateway with BROKER=alpaca: real alpaca-py against the fake Alpaca, real nats-server."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from desk import reconcile
from desk.bus import codec, subjects
from desk.bus import kv as desk_kv
from desk.bus.request import request
from desk.bus.testing import InProcessService, NatsServer, run_in_process
from desk.core.ids import order_id_for
from desk.v1 import common_pb2, executions_pb2, ledger_pb2, marketdata_pb2, orders_pb2, strategy_pb2
from services.broker_gateway.brokers.alpaca import AlpacaBroker, alpaca_config
from services.broker_gateway.service import NAME, BrokerGatewayService
from services.broker_gateway.settings import Settings
from tests.fakes.alpaca import FakeAlpaca
from tests.support import poll, watch_logs

pytestmark = pytest.mark.integration

E = executions_pb2
ORDERS_SUBJECT = subjects.broker_orders("alpaca")
TIMEOUT = 15.0


class Reports:
    """Every execution report in EXECUTIONS, in stream order."""

    def __init__(self, sub: JetStreamContext.PushSubscription) -> None:
        self.sub = sub
        self.seen: list[executions_pb2.ExecutionReport] = []

    async def next(self) -> executions_pb2.ExecutionReport:
        msg = await self.sub.next_msg(timeout=TIMEOUT)
        report = codec.decode(msg.data, E.ExecutionReport, msg.headers)
        assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == report.execution_id
        self.seen.append(report)
        return report

    async def until(
        self, predicate: Callable[[executions_pb2.ExecutionReport], bool]
    ) -> executions_pb2.ExecutionReport:
        while True:
            report = await self.next()
            if predicate(report):
                return report

    async def kinds(self, count: int) -> list[str]:
        return [E.ExecType.Name((await self.next()).exec_type).removeprefix("EXEC_TYPE_") for _ in range(count)]


@pytest.fixture
def fake() -> Iterator[FakeAlpaca]:
    with FakeAlpaca.serving(prices={"AAPL": "100"}) as server:
        yield server


def settings_for(nats_server: NatsServer, fake: FakeAlpaca, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "nats_url": nats_server.url,
        "drain_timeout": 5,
        "broker": "alpaca",
        "alpaca_api_key": fake.key,
        "alpaca_secret_key": fake.secret,
        "alpaca_rest_url": fake.rest_url,
        "alpaca_stream_url": fake.stream_url,
        "alpaca_retry_backoff": 0.05,
        "alpaca_retry_budget": 10,
        "alpaca_reconnect_backoff": 0.05,
        "gateway_ack_wait": 5,
    }
    values.update(overrides)
    return Settings(**values)


class Gateway:
    def __init__(self, service: InProcessService, broker: AlpacaBroker) -> None:
        self.service, self.broker = service, broker


async def start_gateway(nats_server: NatsServer, fake: FakeAlpaca, **overrides: Any) -> Gateway:
    settings = settings_for(nats_server, fake, **overrides)
    broker = AlpacaBroker(alpaca_config(settings))
    service = await run_in_process(NAME, settings, BrokerGatewayService(settings, broker).start)
    return Gateway(service, broker)


@pytest.fixture
async def gateway(nats_server: NatsServer, nc: Client, fake: FakeAlpaca) -> AsyncIterator[Gateway]:
    gw = await start_gateway(nats_server, fake)
    try:
        yield gw
    finally:
        await gw.service.stop()


@pytest.fixture
async def reports(nc: Client) -> AsyncIterator[Reports]:
    sub = await nc.jetstream().subscribe("desk.exec.>", ordered_consumer=True)
    try:
        yield Reports(sub)
    finally:
        await sub.unsubscribe()


def oid(name: str, strategy: str = "alpha") -> str:
    """The router's order id for client order id ``c-<name>``."""
    return order_id_for(strategy, f"c-{name}")


def routed(name: str, strategy: str = "alpha", **fields: Any) -> orders_pb2.RoutedOrder:
    request_fields: dict[str, Any] = {
        "strategy_id": strategy,
        "client_order_id": f"c-{name}",
        "symbol": "AAPL",
        "side": common_pb2.SIDE_BUY,
        "type": common_pb2.ORDER_TYPE_MARKET,
        "time_in_force": common_pb2.TIME_IN_FORCE_DAY,
        "qty": "10",
    }
    request_fields.update(fields)
    return orders_pb2.RoutedOrder(
        order_id=oid(name, strategy),
        strategy_id=strategy,
        member_id="m1",
        routed_ns=1,
        new_order=orders_pb2.OrderRequest(**request_fields),
    )


def cancel(name: str, strategy: str = "alpha") -> orders_pb2.RoutedOrder:
    return orders_pb2.RoutedOrder(
        order_id=oid(name, strategy),
        strategy_id=strategy,
        member_id="m1",
        cancel=orders_pb2.CancelRequest(strategy_id=strategy, client_order_id=f"c-{name}"),
    )


async def route(nc: Client, message: orders_pb2.RoutedOrder) -> None:
    data, headers = codec.encode(message)
    if message.HasField("new_order"):
        headers["Nats-Msg-Id"] = message.order_id
    await nc.jetstream().publish(ORDERS_SUBJECT, data, headers=headers)


async def stream_reports(nc: Client) -> list[executions_pb2.ExecutionReport]:
    """Everything EXECUTIONS holds now (to prove nothing was stored twice)."""
    sub = await nc.jetstream().subscribe("desk.exec.>", ordered_consumer=True)
    info = await nc.jetstream().stream_info(subjects.STREAM_EXECUTIONS)
    got = []
    try:
        for _ in range(info.state.messages):
            msg = await sub.next_msg(timeout=TIMEOUT)
            got.append(codec.decode(msg.data, E.ExecutionReport, msg.headers))
    finally:
        await sub.unsubscribe()
    return got


async def test_market_order_goes_to_alpaca_with_the_strategys_client_order_id_and_fills(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    with watch_logs() as logs:
        await route(nc, routed("o1"))
        new, fill = await reports.next(), await reports.next()
        await logs.wait_for("order.filled")  # logged once JetStream has acknowledged the report
    assert fake.secret not in repr(logs.entries) and fake.key not in repr(logs.entries)
    assert (new.exec_type, new.order_id, new.venue, new.order_qty) == (E.EXEC_TYPE_NEW, oid("o1"), "alpaca", "10")
    assert (fill.exec_type, fill.status, fill.fill_qty, fill.fill_price, fill.cum_qty, fill.leaves_qty) == (
        E.EXEC_TYPE_FILL,
        E.ORDER_STATUS_FILLED,
        "10",
        "100",
        "10",
        "0",
    )
    placed = fake.order("alpha.c-o1")
    assert fill.venue_order_id == placed.id and (placed.status, placed.filled_qty) == ("filled", 10)
    assert fill.text.startswith("alpaca execution ") and fill.text.split()[-1] in fake.activities[0]["id"]
    assert (fill.strategy_id, fill.member_id, fill.client_order_id) == ("alpha", "m1", "c-o1")


async def test_partial_fills_then_a_cancel_are_reported_in_order(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    await route(nc, routed("lim", type=common_pb2.ORDER_TYPE_LIMIT, limit_price="95"))
    assert await reports.kinds(1) == ["NEW"]
    fake.fill("alpha.c-lim", "3", "95")
    fake.fill("alpha.c-lim", "4", "94.5")
    first, second = await reports.next(), await reports.next()
    assert [(r.exec_type, r.fill_qty, r.fill_price, r.cum_qty, r.leaves_qty) for r in (first, second)] == [
        (E.EXEC_TYPE_PARTIAL_FILL, "3", "95", "3", "7"),
        (E.EXEC_TYPE_PARTIAL_FILL, "4", "94.5", "7", "3"),
    ]
    assert second.avg_price == "94.71428571428571428571428571"
    await route(nc, cancel("lim"))
    canceled = await reports.next()
    assert (canceled.exec_type, canceled.status, canceled.cum_qty, canceled.leaves_qty) == (
        E.EXEC_TYPE_CANCELED,
        E.ORDER_STATUS_CANCELED,
        "7",
        "0",
    )
    assert fake.order("alpha.c-lim").status == "canceled"


async def test_refusals_from_alpaca_become_rejected_reports_with_its_code(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    await route(nc, routed("huge", qty="100000"))  # 10 M$ against 1 M$ of buying power
    rejected = await reports.next()
    assert (rejected.exec_type, rejected.status) == (E.EXEC_TYPE_REJECTED, E.ORDER_STATUS_REJECTED)
    assert rejected.text == "alpaca 403 40310000: insufficient buying power"
    await route(nc, cancel("ghost"))
    cancel_rejected = await reports.next()
    assert cancel_rejected.exec_type == E.EXEC_TYPE_CANCEL_REJECTED and "40410000" in cancel_rejected.text
    # the gateway keeps working
    await route(nc, routed("ok", qty="1"))
    assert await reports.kinds(2) == ["NEW", "FILL"]


async def test_a_post_whose_reply_was_lost_is_retried_refused_as_duplicate_and_looked_up(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    fake.inject(504, method="POST", path_prefix="/v2/orders", after_commit=True)
    await route(nc, routed("lost", qty="2"))
    await route(nc, routed("next", qty="1"))
    # orders are handled one at a time: once "next" is reported, "lost" is done with
    await reports.until(lambda r: r.order_id == oid("next"))
    assert [E.ExecType.Name(r.exec_type) for r in reports.seen if r.order_id == oid("lost")] == [
        "EXEC_TYPE_NEW",
        "EXEC_TYPE_FILL",
    ]
    assert (422, 40010001) in fake.refusals and (504, 50400000) in fake.refusals
    assert ("GET", "/v2/orders:by_client_order_id") in fake.requests
    assert [o.client_order_id for o in fake.call(lambda: list(fake.orders.values()))] == [
        "alpha.c-lost",
        "alpha.c-next",
    ]
    assert len(fake.activities) == 2


async def test_rate_limited_calls_are_retried_with_backoff_then_succeed(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    fake.inject(429, count=2, method="POST")
    fake.inject(503, method="GET", path_prefix="/v2/orders/")
    await route(nc, routed("slow", type=common_pb2.ORDER_TYPE_LIMIT, limit_price="90"))
    assert await reports.kinds(1) == ["NEW"]
    await route(nc, cancel("slow"))  # DELETE, then a GET that first meets a 503
    assert await reports.kinds(1) == ["CANCELED"]
    await route(nc, routed("next", qty="1"))
    await reports.until(lambda r: r.order_id == oid("next"))
    assert fake.refusals.count((429, 42910000)) == 2 and (503, 50300000) in fake.refusals
    assert gateway.broker.rest.retries == 3


async def test_fills_made_while_the_stream_was_down_are_reported_once_after_it_reconnects(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    await route(nc, routed("gap", type=common_pb2.ORDER_TYPE_LIMIT, limit_price="99", qty="9"))
    assert await reports.kinds(1) == ["NEW"]
    reconciles = gateway.broker.reconciles
    fake.drop_trade_streams(refuse_reconnect=True)
    fake.fill("alpha.c-gap", "2", "99")  # no stream to carry these two
    fake.fill("alpha.c-gap", "3", "98")
    fake.allow_trade_streams()
    first, second = await reports.next(), await reports.next()
    assert [(r.fill_qty, r.cum_qty) for r in (first, second)] == [("2", "2"), ("3", "5")]
    assert gateway.broker.reconciles > reconciles
    fake.fill("alpha.c-gap", "4", "97")  # after the reconnect: through the stream again
    last = await reports.next()
    assert (last.exec_type, last.fill_qty, last.cum_qty) == (E.EXEC_TYPE_FILL, "4", "9")
    stored = [r for r in await stream_reports(nc) if r.order_id == oid("gap")]
    fills = [r for r in stored if r.fill_qty]
    assert [r.fill_qty for r in fills] == ["2", "3", "4"]
    assert len({r.execution_id for r in stored}) == len(stored) == 4


async def test_a_restarted_gateway_reconciles_what_happened_while_it_was_down(
    nats_server: NatsServer, nc: Client, fake: FakeAlpaca, reports: Reports
) -> None:
    first = await start_gateway(nats_server, fake)
    await route(nc, routed("rest1", type=common_pb2.ORDER_TYPE_LIMIT, limit_price="99", qty="5"))
    await route(nc, routed("rest2", type=common_pb2.ORDER_TYPE_LIMIT, limit_price="98", qty="5"))
    await route(nc, routed("done", qty="1"))
    assert await reports.kinds(4) == ["NEW", "NEW", "NEW", "FILL"]
    assert await first.service.stop() == 0
    fake.fill("alpha.c-rest1", "5", "99")  # nobody listening
    fake.call(lambda: fake._cancel(fake._by_client_id("alpha.c-rest2").id))

    second = await start_gateway(nats_server, fake)
    try:
        got = {(r.order_id, E.ExecType.Name(r.exec_type)) for r in [await reports.next(), await reports.next()]}
        assert got == {(oid("rest1"), "EXEC_TYPE_FILL"), (oid("rest2"), "EXEC_TYPE_CANCELED")}
        await route(nc, routed("after", qty="1"))
        assert await reports.kinds(2) == ["NEW", "FILL"]
    finally:
        await second.service.stop()
    stored = await stream_reports(nc)
    assert len({r.execution_id for r in stored}) == len(stored) == 8  # republished NEWs were deduplicated
    assert sorted(r.order_id for r in stored if r.fill_qty) == sorted([oid("after"), oid("done"), oid("rest1")])


async def test_book_and_positions_endpoints_answer_from_alpaca(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    await route(nc, routed("p1", qty="3"))
    await route(nc, routed("p2", type=common_pb2.ORDER_TYPE_LIMIT, limit_price="50", qty="1"))
    assert await reports.kinds(3) == ["NEW", "FILL", "NEW"]
    reply = await request(nc, "desk.broker.alpaca.positions", ledger_pb2.LedgerQuery(), ledger_pb2.PositionsReply)
    assert [(p.symbol, p.qty, p.avg_cost) for p in reply.positions] == [("AAPL", "3", "100")]
    book = await request(nc, "desk.broker.alpaca.book", ledger_pb2.LedgerQuery(), ledger_pb2.OrdersReply)
    assert [(o.order_id, o.limit_price, o.venue) for o in book.orders] == [(oid("p2"), "50", "alpaca")]


def run_gateway(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "BROKER"))}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "services.broker_gateway"],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_without_keys_the_alpaca_gateway_exits_2_with_one_line() -> None:
    result = run_gateway({"BROKER": "alpaca", "NATS_URL": "nats://127.0.0.1:1"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "broker_gateway: BROKER=alpaca needs ALPACA_API_KEY and ALPACA_SECRET_KEY (paper keys)"
    ]


def test_a_wrong_key_exits_2_with_one_line_that_does_not_show_the_secret(fake: FakeAlpaca) -> None:
    result = run_gateway(
        {
            "BROKER": "alpaca",
            "NATS_URL": "nats://127.0.0.1:1",
            "ALPACA_API_KEY": fake.key,
            "ALPACA_SECRET_KEY": "wrong-secret-value",
            "ALPACA_REST_URL": fake.rest_url,
        }
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "broker_gateway: Alpaca refused ALPACA_API_KEY/ALPACA_SECRET_KEY (HTTP 401); check the paper keys"
    ]
    assert "wrong-secret-value" not in result.stdout + result.stderr
    assert (401, 40110000) in fake.refusals


async def test_orders_wait_for_the_stream_and_the_loop_stays_free_during_a_slow_call(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    # while a POST is being retried (two 429s) in a worker thread, the loop keeps answering requests
    fake.inject(429, count=2, method="POST")
    await route(nc, routed("bg", qty="1"))
    book = await request(nc, "desk.broker.alpaca.book", ledger_pb2.LedgerQuery(), ledger_pb2.OrdersReply)
    assert isinstance(book, ledger_pb2.OrdersReply)
    assert await reports.kinds(2) == ["NEW", "FILL"]
    await asyncio.wait_for(gateway.broker.wait_ready(), TIMEOUT)


# --- one account, many strategies ------------------------------------------------------------------


async def put_price(nc: Client, symbol: str, price: str, source: str = "synthetic") -> None:
    """A last price in DESK_PRICES (what the router and ledger value with): never a cross's price."""
    trade = marketdata_pb2.Trade(symbol=symbol, price=price, size="1", ts_ns=time.time_ns(), source=source)
    await desk_kv.put(nc.jetstream(), subjects.KV_PRICES, symbol, trade)


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Poll the in-process broker's state (another connection's message has no completion to wait on)."""
    await poll(predicate, what, timeout=TIMEOUT, every=0.01)


async def market_data(nc: Client, gateway: Gateway, message: marketdata_pb2.Quote | marketdata_pb2.Trade) -> None:
    """Publish one md.quote|trade message as marketdata does; return once the gateway has taken it."""
    market = gateway.broker.market
    kind = "quote" if isinstance(message, marketdata_pb2.Quote) else "trade"
    table = market.quotes if kind == "quote" else market.trades
    ignored = sum(market.ignored.values())
    data, headers = codec.encode(message)
    await nc.publish(f"md.{kind}.{message.symbol}", data, headers=headers)

    def taken() -> bool:
        seen = table.get(message.symbol)
        return sum(market.ignored.values()) > ignored or (seen is not None and seen.ts_ns == message.ts_ns)

    await until(taken, f"the gateway to take md.{kind}.{message.symbol}")


async def quote(
    nc: Client, gateway: Gateway, symbol: str, bid: str, ask: str, *, age: float = 0.0, source: str = "alpaca"
) -> None:
    ts = time.time_ns() - int(age * 1e9)
    await market_data(
        nc,
        gateway,
        marketdata_pb2.Quote(
            symbol=symbol, bid_price=bid, bid_size="100", ask_price=ask, ask_size="100", ts_ns=ts, source=source
        ),
    )


async def trade(
    nc: Client, gateway: Gateway, symbol: str, price: str, *, age: float = 0.0, source: str = "alpaca"
) -> None:
    ts = time.time_ns() - int(age * 1e9)
    await market_data(nc, gateway, marketdata_pb2.Trade(symbol=symbol, price=price, size="5", ts_ns=ts, source=source))


def ledger_positions(stored: list[executions_pb2.ExecutionReport]) -> list[ledger_pb2.Position]:
    """Per-strategy positions from the fills, as the ledger books them (signed qty per strategy and symbol)."""
    totals: dict[tuple[str, str], Decimal] = {}
    for r in stored:
        if r.fill_qty:
            sign = 1 if r.side == common_pb2.SIDE_BUY else -1
            key = (r.strategy_id, r.symbol)
            totals[key] = totals.get(key, Decimal(0)) + sign * Decimal(r.fill_qty)
    return [ledger_pb2.Position(strategy_id=s, symbol=sym, qty=str(q)) for (s, sym), q in sorted(totals.items())]


async def test_two_strategies_cross_inside_the_desk_without_a_wash_trade_and_books_reconcile(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    await quote(nc, gateway, "AAPL", "99.5", "100.5")  # the Alpaca feed's quote: mid 100
    await put_price(nc, "AAPL", "120")  # a synthetic last price is never a cross's price
    await route(nc, routed("a-buy", strategy="alpha", type=common_pb2.ORDER_TYPE_LIMIT, limit_price="101", qty="10"))
    assert await reports.kinds(1) == ["NEW"]
    # beta sells 6 at market: at Alpaca it would meet alpha's resting buy (422, 42210000); the desk
    # crosses 6 at the fair price 100 and places alpha's remaining 4 again
    await route(nc, routed("b-sell", strategy="beta", side=common_pb2.SIDE_SELL, qty="6"))
    alpha_fill = await reports.until(lambda r: r.order_id == oid("a-buy") and bool(r.fill_qty))
    beta_fill = await reports.until(lambda r: r.order_id == oid("b-sell", "beta") and bool(r.fill_qty))
    assert (alpha_fill.exec_type, alpha_fill.fill_qty, alpha_fill.fill_price, alpha_fill.leaves_qty) == (
        E.EXEC_TYPE_PARTIAL_FILL,
        "6",
        "100",
        "4",
    )
    assert (beta_fill.exec_type, beta_fill.fill_qty, beta_fill.fill_price) == (E.EXEC_TYPE_FILL, "6", "100")
    assert "internal cross" in beta_fill.text and "alpha" in beta_fill.text
    assert fake.order("alpha.c-a-buy").status == "canceled" and fake.order("alpha.c-a-buy.2").qty == 4
    # Alpaca fills alpha's re-placed 4 in two parts; they are alpha's
    fake.fill("alpha.c-a-buy.2", "1", "100.5")
    fake.fill("alpha.c-a-buy.2", "3", "100.25")
    assert [(r.fill_qty, r.cum_qty) for r in [await reports.next(), await reports.next()]] == [("1", "7"), ("3", "10")]
    # beta sells 2 more with nothing opposite resting: straight to Alpaca
    await route(nc, routed("b-sell2", strategy="beta", side=common_pb2.SIDE_SELL, qty="2"))
    assert await reports.kinds(2) == ["NEW", "FILL"]

    assert all(code != 42210000 for _, code in fake.refusals)
    stored = await stream_reports(nc)
    books = ledger_positions(stored)
    assert [(p.strategy_id, p.qty) for p in books] == [("alpha", "10"), ("beta", "-8")]
    broker = await request(nc, "desk.broker.alpaca.positions", ledger_pb2.LedgerQuery(), ledger_pb2.PositionsReply)
    assert [(p.symbol, p.qty) for p in broker.positions] == [("AAPL", "2")]
    assert reconcile.compare(books, broker.positions) == []
    assert reconcile.format_differences([], "alpaca") == ["reconcile: ledger and alpaca agree on every position"]


def no_wash_refusal(fake: FakeAlpaca) -> bool:
    return all(code != 42210000 for _, code in fake.refusals)


async def positions_agree(nc: Client) -> None:
    """The strategies' positions from EXECUTIONS summed per symbol = the account's at Alpaca."""
    books = ledger_positions(await stream_reports(nc))
    broker = await request(nc, "desk.broker.alpaca.positions", ledger_pb2.LedgerQuery(), ledger_pb2.PositionsReply)
    assert reconcile.compare(books, broker.positions) == []


def fills_once(stored: list[executions_pb2.ExecutionReport]) -> None:
    ids = [r.execution_id for r in stored if r.fill_qty]
    assert len(ids) == len(set(ids))


async def test_a_market_buy_against_another_strategys_far_sell_pulls_it_sends_and_places_it_again(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    """The lock-out of issue 13: alpha's sell far above the market no longer blocks beta's buy."""
    await quote(nc, gateway, "AAPL", "99.5", "100.5")
    await route(nc, routed("a-buy", strategy="alpha", qty="10"))
    await route(
        nc,
        routed(
            "a-sell",
            strategy="alpha",
            side=common_pb2.SIDE_SELL,
            type=common_pb2.ORDER_TYPE_LIMIT,
            limit_price="150",
            time_in_force=common_pb2.TIME_IN_FORCE_GTC,
            qty="10",
        ),
    )
    assert await reports.kinds(3) == ["NEW", "FILL", "NEW"]
    fake.fill("alpha.c-a-sell", "3", "150")  # alpha's sell fills 3 of 10 at Alpaca first
    assert (await reports.next()).cum_qty == "3"
    await route(nc, routed("b-buy", strategy="beta", qty="4"))  # at Alpaca: 42210000 while alpha's rests
    beta_fill = await reports.until(lambda r: r.order_id == oid("b-buy", "beta") and bool(r.fill_qty))
    assert (beta_fill.exec_type, beta_fill.fill_qty, beta_fill.fill_price) == (E.EXEC_TYPE_FILL, "4", "100")
    assert "alpaca execution" in beta_fill.text  # filled at Alpaca, not crossed
    await until(
        lambda: fake.call(lambda: any(o.client_order_id == "alpha.c-a-sell.2" for o in fake.orders.values())),
        "alpha's leaves placed again",
    )
    again = fake.order("alpha.c-a-sell.2")
    assert (again.status, again.qty, again.limit_price, again.time_in_force) == ("new", 7, 150, "gtc")
    assert fake.order("alpha.c-a-sell").status == "canceled" and fake.order("beta.c-b-buy").status == "filled"
    assert no_wash_refusal(fake)
    # alpha's order is alive, with its fills: never canceled for alpha; Alpaca fills its 7 later
    fake.fill("alpha.c-a-sell.2", "7", "150")
    last = await reports.until(lambda r: r.order_id == oid("a-sell") and r.exec_type == E.EXEC_TYPE_FILL)
    assert (last.cum_qty, last.leaves_qty, last.avg_price) == ("10", "0", "150")
    stored = await stream_reports(nc)
    alpha = [E.ExecType.Name(r.exec_type) for r in stored if r.order_id == oid("a-sell")]
    assert alpha == ["EXEC_TYPE_NEW", "EXEC_TYPE_PARTIAL_FILL", "EXEC_TYPE_FILL"]
    fills_once(stored)
    await positions_agree(nc)


async def test_without_a_fresh_price_a_market_order_still_works_by_pull_send_re_place(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    await quote(nc, gateway, "AAPL", "99.5", "100.5", age=30)  # the Alpaca feed's, but 30 s old
    await route(nc, routed("a-buy", strategy="alpha", type=common_pb2.ORDER_TYPE_LIMIT, limit_price="101", qty="10"))
    assert await reports.kinds(1) == ["NEW"]
    with watch_logs() as logs:
        await route(nc, routed("b-sell", strategy="beta", side=common_pb2.SIDE_SELL, qty="6"))
        sold = await reports.until(lambda r: r.order_id == oid("b-sell", "beta") and bool(r.fill_qty))
        await until(
            lambda: fake.call(lambda: any(o.client_order_id == "alpha.c-a-buy.2" for o in fake.orders.values())),
            "alpha's bid placed again",
        )
    assert (sold.fill_qty, sold.fill_price) == ("6", "100") and "internal cross" not in sold.text
    assert fake.order("alpha.c-a-buy.2").qty == 10 and no_wash_refusal(fake)
    not_crossed = [e for e in logs.entries if e["event"] == "order.not_crossed"]
    # the quote's age is measured when the order comes (30 s and however long the machine took since)
    stale = [(e["symbol"], re.search(r"its quote mid is 3\d\.\d s old", e["reason"]) is not None) for e in not_crossed]
    assert stale == [("AAPL", True)]

    # a fresh Alpaca trade, the quote still stale: the cross is priced at the last trade
    await trade(nc, gateway, "AAPL", "100.25")
    await route(nc, routed("b-sell2", strategy="beta", side=common_pb2.SIDE_SELL, qty="6"))
    crossed = await reports.until(lambda r: r.order_id == oid("b-sell2", "beta") and bool(r.fill_qty))
    assert (crossed.fill_qty, crossed.fill_price) == ("6", "100.25") and "internal cross" in crossed.text

    # a fresh quote wins over the trade: its mid
    await quote(nc, gateway, "AAPL", "100.4", "100.6")
    await route(nc, routed("b-sell3", strategy="beta", side=common_pb2.SIDE_SELL, qty="1"))
    crossed = await reports.until(lambda r: r.order_id == oid("b-sell3", "beta") and bool(r.fill_qty))
    assert crossed.fill_price == "100.5"
    await positions_agree(nc)


async def test_synthetic_prices_never_price_a_cross_for_the_alpaca_account(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    with watch_logs() as logs:
        await quote(nc, gateway, "AAPL", "99.5", "100.5", source="synthetic")  # fresh, from MD_FEED=synthetic
        await trade(nc, gateway, "AAPL", "80", source="replay")
    assert gateway.broker.market.quotes == {} and gateway.broker.market.ignored == {"synthetic": 1, "replay": 1}
    assert {e["source"] for e in logs.entries if e["event"] == "marketdata.not_alpaca"} == {"synthetic", "replay"}
    await put_price(nc, "AAPL", "100")
    await route(nc, routed("a-buy", strategy="alpha", type=common_pb2.ORDER_TYPE_LIMIT, limit_price="101", qty="10"))
    assert await reports.kinds(1) == ["NEW"]
    await route(nc, routed("b-sell", strategy="beta", side=common_pb2.SIDE_SELL, qty="6"))
    sold = await reports.until(lambda r: r.order_id == oid("b-sell", "beta") and bool(r.fill_qty))
    assert "internal cross" not in sold.text and not any("internal cross" in r.text for r in reports.seen)
    assert no_wash_refusal(fake)


async def test_a_resting_stop_of_another_strategy_is_pulled_for_a_market_order_and_placed_again(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    await quote(nc, gateway, "AAPL", "99.5", "100.5")
    await route(nc, routed("a-buy", strategy="alpha", qty="5"))
    await route(
        nc,
        routed(
            "a-stop",
            strategy="alpha",
            side=common_pb2.SIDE_SELL,
            type=common_pb2.ORDER_TYPE_STOP,
            stop_price="90",
            time_in_force=common_pb2.TIME_IN_FORCE_GTC,
            qty="5",
        ),
    )
    assert await reports.kinds(3) == ["NEW", "FILL", "NEW"]
    await route(nc, routed("b-buy", strategy="beta", qty="2"))  # Alpaca refuses a buy opposite a stop: 42210000
    bought = await reports.until(lambda r: r.order_id == oid("b-buy", "beta") and bool(r.fill_qty))
    assert (bought.exec_type, bought.fill_qty) == (E.EXEC_TYPE_FILL, "2")
    await until(
        lambda: fake.call(lambda: any(o.client_order_id == "alpha.c-a-stop.2" for o in fake.orders.values())),
        "alpha's stop placed again",
    )
    stop_again = fake.order("alpha.c-a-stop.2")
    assert (stop_again.status, stop_again.type, stop_again.qty, stop_again.stop_price) == ("new", "stop", 5, 90)
    assert no_wash_refusal(fake)
    await positions_agree(nc)


async def test_a_limit_that_would_rest_opposite_another_strategys_stop_waits_at_the_desk_then_works(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    await quote(nc, gateway, "AAPL", "99.5", "100.5")
    await route(nc, routed("a-buy", strategy="alpha", qty="5"))
    await route(
        nc,
        routed(
            "a-stop",
            strategy="alpha",
            side=common_pb2.SIDE_SELL,
            type=common_pb2.ORDER_TYPE_STOP,
            stop_price="90",
            time_in_force=common_pb2.TIME_IN_FORCE_GTC,
            qty="5",
        ),
    )
    assert await reports.kinds(3) == ["NEW", "FILL", "NEW"]
    # beta bids 95 (would rest at 100): it cannot rest at Alpaca beside alpha's stop, which was first
    await route(nc, routed("b-bid", strategy="beta", type=common_pb2.ORDER_TYPE_LIMIT, limit_price="95", qty="3"))
    held = await reports.until(lambda r: r.order_id == oid("b-bid", "beta"))
    assert held.exec_type == E.EXEC_TYPE_NEW and "held at the desk" in held.text and "alpha" in held.text
    assert not fake.call(lambda: any(o.client_order_id.startswith("beta.") for o in fake.orders.values()))
    book = await request(nc, "desk.broker.alpaca.book", ledger_pb2.LedgerQuery(), ledger_pb2.OrdersReply)
    assert oid("b-bid", "beta") in {o.order_id for o in book.orders}  # open at the desk
    # the market comes down to 95: beta's bid would execute now: alpha's stop is pulled, the bid sent
    await quote(nc, gateway, "AAPL", "94.9", "95.1")
    await until(
        lambda: fake.call(lambda: any(o.client_order_id == "beta.c-b-bid" for o in fake.orders.values())),
        "beta's bid sent to Alpaca",
    )
    assert fake.order("alpha.c-a-stop").status == "canceled"
    fake.fill("beta.c-b-bid", "3", "95")  # done at Alpaca: alpha's stop goes back
    await until(
        lambda: fake.call(lambda: any(o.client_order_id == "alpha.c-a-stop.2" for o in fake.orders.values())),
        "alpha's stop placed again once beta's bid is done",
    )
    assert fake.order("alpha.c-a-stop.2").qty == 5 and no_wash_refusal(fake)
    await positions_agree(nc)


async def test_an_order_held_at_the_desk_is_still_held_after_a_gateway_restart_and_then_works(
    nats_server: NatsServer, nc: Client, fake: FakeAlpaca, reports: Reports
) -> None:
    first = await start_gateway(nats_server, fake)
    await quote(nc, first, "AAPL", "99.5", "100.5")
    await route(nc, routed("a-buy", strategy="alpha", qty="5"))
    await route(
        nc,
        routed(
            "a-stop",
            strategy="alpha",
            side=common_pb2.SIDE_SELL,
            type=common_pb2.ORDER_TYPE_STOP,
            stop_price="90",
            time_in_force=common_pb2.TIME_IN_FORCE_GTC,
            qty="5",
        ),
    )
    await route(nc, routed("b-bid", strategy="beta", type=common_pb2.ORDER_TYPE_LIMIT, limit_price="95", qty="3"))
    held = await reports.until(lambda r: r.order_id == oid("b-bid", "beta"))
    assert "held at the desk" in held.text
    assert await first.service.stop() == 0
    second = await start_gateway(nats_server, fake)  # EXECUTIONS says b-bid is held
    try:
        assert [o.client_order_id for o in second.broker.book.held_orders()] == ["c-b-bid"]
        await quote(nc, second, "AAPL", "94.9", "95.1")
        await until(
            lambda: fake.call(lambda: any(o.client_order_id == "beta.c-b-bid" for o in fake.orders.values())),
            "beta's bid sent to Alpaca after the restart",
        )
        fake.fill("beta.c-b-bid", "3", "95")
        await until(
            lambda: fake.call(lambda: any(o.client_order_id == "alpha.c-a-stop.2" for o in fake.orders.values())),
            "alpha's stop placed again",
        )
        assert no_wash_refusal(fake)
        await positions_agree(nc)
    finally:
        await second.service.stop()


async def test_an_order_held_at_the_desk_can_be_canceled_by_its_strategy(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    await quote(nc, gateway, "AAPL", "99.5", "100.5")
    await route(
        nc,
        routed(
            "a-stop",
            strategy="alpha",
            side=common_pb2.SIDE_SELL,
            type=common_pb2.ORDER_TYPE_STOP,
            stop_price="90",
            time_in_force=common_pb2.TIME_IN_FORCE_GTC,
            qty="5",
        ),
    )
    assert await reports.kinds(1) == ["NEW"]
    await route(nc, routed("b-bid", strategy="beta", type=common_pb2.ORDER_TYPE_LIMIT, limit_price="95", qty="3"))
    assert "held at the desk" in (await reports.next()).text
    await route(nc, cancel("b-bid", "beta"))
    ended = await reports.next()
    assert (ended.order_id, ended.exec_type, ended.status) == (
        oid("b-bid", "beta"),
        E.EXEC_TYPE_CANCELED,
        E.ORDER_STATUS_CANCELED,
    )


async def test_an_order_against_the_strategys_own_resting_order_is_refused_naming_it(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    await quote(nc, gateway, "AAPL", "99.5", "100.5")
    await route(nc, routed("low-bid", strategy="alpha", type=common_pb2.ORDER_TYPE_LIMIT, limit_price="90", qty="5"))
    assert await reports.kinds(1) == ["NEW"]
    await route(nc, routed("dump", strategy="alpha", side=common_pb2.SIDE_SELL, qty="3"))
    refused = await reports.next()
    assert (refused.order_id, refused.exec_type) == (oid("dump"), E.EXEC_TYPE_REJECTED)
    assert (
        "this strategy's own resting buy limit 90 c-low-bid" in refused.text
        and "cancel that order first" in refused.text
    )
    assert no_wash_refusal(fake)
    assert [o.client_order_id for o in fake.call(lambda: list(fake.orders.values()))] == ["alpha.c-low-bid"]


async def test_a_notional_order_is_crossed_at_the_fair_price_converted_to_shares(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    await quote(nc, gateway, "AAPL", "99.5", "100.5")
    await route(
        nc,
        routed(
            "a-sell",
            strategy="alpha",
            side=common_pb2.SIDE_SELL,
            type=common_pb2.ORDER_TYPE_LIMIT,
            limit_price="99",
            time_in_force=common_pb2.TIME_IN_FORCE_GTC,
            qty="10",
        ),
    )
    assert await reports.kinds(1) == ["NEW"]
    await route(nc, routed("b-usd", strategy="beta", qty="", notional="500"))  # $500 at 100: 5 shares
    bought = await reports.until(lambda r: r.order_id == oid("b-usd", "beta") and bool(r.fill_qty))
    assert (bought.exec_type, bought.fill_qty, bought.fill_price, bought.status) == (
        E.EXEC_TYPE_FILL,
        "5",
        "100",
        E.ORDER_STATUS_FILLED,
    )
    assert "internal cross" in bought.text
    await until(
        lambda: fake.call(lambda: any(o.client_order_id == "alpha.c-a-sell.2" for o in fake.orders.values())),
        "alpha's leaves placed again",
    )
    assert fake.order("alpha.c-a-sell.2").qty == 5
    assert not fake.call(lambda: any(o.client_order_id.startswith("beta.") for o in fake.orders.values()))
    assert no_wash_refusal(fake)
    await positions_agree(nc)


async def test_one_strategys_resting_sell_does_not_block_anothers_sell_of_the_held_shares(
    nc: Client, fake: FakeAlpaca, gateway: Gateway, reports: Reports
) -> None:
    await quote(nc, gateway, "AAPL", "99.5", "100.5")
    await route(nc, routed("a-buy", strategy="alpha", qty="10"))
    await route(
        nc,
        routed(
            "a-exit",
            strategy="alpha",
            side=common_pb2.SIDE_SELL,
            type=common_pb2.ORDER_TYPE_LIMIT,
            limit_price="120",
            time_in_force=common_pb2.TIME_IN_FORCE_GTC,
            qty="10",
        ),
    )
    assert await reports.kinds(3) == ["NEW", "FILL", "NEW"]  # alpha's 10 shares are now held by its exit
    # beta sells 10: at Alpaca that is 403 40310000 (available 0, held_for_orders 10); the desk steps
    # alpha's exit aside, sells, and places alpha's exit again
    await route(nc, routed("b-sell", strategy="beta", side=common_pb2.SIDE_SELL, qty="10"))
    beta_fill = await reports.until(lambda r: r.order_id == oid("b-sell", "beta") and bool(r.fill_qty))
    assert (beta_fill.exec_type, beta_fill.fill_qty, beta_fill.fill_price) == (E.EXEC_TYPE_FILL, "10", "100")
    fake.set_price("MSFT", "50")
    await route(nc, routed("next", symbol="MSFT", qty="1"))  # handled once b-sell is completely done with
    await reports.until(lambda r: r.order_id == oid("next") and bool(r.fill_qty))
    replaced = fake.order("alpha.c-a-exit.2")
    assert (replaced.status, replaced.qty, replaced.limit_price) == ("new", 10, 120)
    assert fake.order("alpha.c-a-exit").status == "canceled"
    assert (403, 40310000) in fake.refusals
    stored = await stream_reports(nc)
    exits = [r for r in stored if r.order_id == oid("a-exit")]
    assert [E.ExecType.Name(r.exec_type) for r in exits] == ["EXEC_TYPE_NEW"]  # alive, never canceled for alpha
    # the exit still works: Alpaca fills it and the fill is alpha's
    fake.fill("alpha.c-a-exit.2", "10", "120")
    exit_fill = await reports.until(lambda r: r.order_id == oid("a-exit") and bool(r.fill_qty))
    assert (exit_fill.exec_type, exit_fill.strategy_id, exit_fill.fill_qty) == (E.EXEC_TYPE_FILL, "alpha", "10")
    books = ledger_positions(await stream_reports(nc))
    broker = await request(nc, "desk.broker.alpaca.positions", ledger_pb2.LedgerQuery(), ledger_pb2.PositionsReply)
    assert [(p.strategy_id, p.symbol, p.qty) for p in books] == [
        ("alpha", "AAPL", "0"),
        ("alpha", "MSFT", "1"),
        ("beta", "AAPL", "-10"),
    ]
    assert [(p.symbol, p.qty) for p in broker.positions] == [("AAPL", "-10"), ("MSFT", "1")]
    assert reconcile.compare(books, broker.positions) == []


async def test_crossing_a_gateway_restart_and_the_real_ledger_end_with_a_clean_reconcile(
    nats_server: NatsServer, nc: Client, fake: FakeAlpaca, reports: Reports, tmp_path: Path
) -> None:
    from services.ledger.service import LedgerService
    from services.ledger.settings import Settings as LedgerSettings

    await nc.jetstream().key_value(subjects.KV_STRATEGIES)
    for strategy, member in (("alpha", "alice"), ("beta", "bob")):
        spec = strategy_pb2.StrategySpec(strategy_id=strategy, member_id=member, initial_cash="100000")
        await desk_kv.put(nc.jetstream(), subjects.KV_STRATEGIES, strategy, spec)
    ledger_settings = LedgerSettings(
        nats_url=nats_server.url, ledger_db_path=str(tmp_path / "ledger.db"), drain_timeout=5
    )
    ledger = LedgerService(ledger_settings)
    ledger_proc = await run_in_process("ledger", ledger_settings, ledger.start)
    try:
        first = await start_gateway(nats_server, fake)
        await quote(nc, first, "AAPL", "99.5", "100.5")
        await route(
            nc, routed("a-buy", strategy="alpha", type=common_pb2.ORDER_TYPE_LIMIT, limit_price="101", qty="10")
        )
        await route(nc, routed("b-sell", strategy="beta", side=common_pb2.SIDE_SELL, qty="6"))
        await reports.until(lambda r: r.order_id == oid("b-sell", "beta") and bool(r.fill_qty))
        await route(nc, routed("mark", qty="1", symbol="MSFT"))  # once reported, b-sell's re-placing is done
        fake.set_price("MSFT", "50")
        await reports.until(lambda r: r.order_id == oid("mark") and bool(r.fill_qty))
        assert await first.service.stop() == 0
        fake.fill("alpha.c-a-buy.2", "4", "100.5")  # while no gateway runs
        second = await start_gateway(nats_server, fake)
        try:
            last = await reports.until(lambda r: r.order_id == oid("a-buy") and r.exec_type == E.EXEC_TYPE_FILL)
            assert (last.fill_qty, last.fill_price) == ("4", "100.5")
            stored = (await nc.jetstream().stream_info(subjects.STREAM_EXECUTIONS)).state.messages
            await ledger.wait_for(lambda s: s.messages >= stored, timeout=TIMEOUT)
            books = await request(
                nc, subjects.LEDGER_POSITIONS, ledger_pb2.LedgerQuery(limit=1000), ledger_pb2.PositionsReply
            )
            broker = await request(
                nc, "desk.broker.alpaca.positions", ledger_pb2.LedgerQuery(), ledger_pb2.PositionsReply
            )
        finally:
            await second.service.stop()
    finally:
        await ledger_proc.stop()
    assert sorted((p.strategy_id, p.symbol, p.qty) for p in books.positions if p.qty != "0") == [
        ("alpha", "AAPL", "10"),
        ("alpha", "MSFT", "1"),
        ("beta", "AAPL", "-6"),
    ]
    assert sorted((p.symbol, p.qty) for p in broker.positions) == [("AAPL", "4"), ("MSFT", "1")]
    assert reconcile.compare(books.positions, broker.positions) == []


# --- the price of an internal cross ------------------------------------------------------------------


# --- one switch: BROKER=alpaca ---------------------------------------------------------------------


def test_broker_alpaca_implies_the_alpaca_feed_and_venue_for_desk_up_and_a_chosen_mismatch_is_warned() -> None:
    from desk.cli.embedded import venue_environment

    assert venue_environment({}) == ({"BROKER": "sim", "MD_FEED": "synthetic", "ROUTER_VENUE": "sim"}, [])
    assert venue_environment({"BROKER": "alpaca"}) == (
        {"BROKER": "alpaca", "MD_FEED": "alpaca", "ROUTER_VENUE": "alpaca"},
        [],
    )
    assert venue_environment({"BROKER": "sim", "MD_FEED": "alpaca"}) == (  # the simulator on real prices: fine
        {"BROKER": "sim", "MD_FEED": "alpaca", "ROUTER_VENUE": "sim"},
        [],
    )
    chosen, warnings = venue_environment({"BROKER": "alpaca", "MD_FEED": "synthetic"})
    assert chosen["MD_FEED"] == "synthetic" and len(warnings) == 1
    assert warnings[0].startswith("BROKER=alpaca with MD_FEED=synthetic: ") and "no orders are crossed" in warnings[0]
    chosen, warnings = venue_environment({"BROKER": "alpaca", "MD_FEED": "alpaca"}, feed="replay")
    assert chosen["MD_FEED"] == "replay" and warnings[0].startswith("BROKER=alpaca with --feed=replay")
    chosen, warnings = venue_environment({"BROKER": "sim", "ROUTER_VENUE": "alpaca"})
    assert chosen["ROUTER_VENUE"] == "alpaca" and "desk.broker.alpaca.orders" in warnings[0]


def test_desk_up_with_broker_alpaca_gives_every_service_the_alpaca_feed_and_venue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environments `desk up` starts its services with follow the one switch."""
    from desk.cli.embedded import EmbeddedDesk, service_environment

    for key in ("MD_FEED", "ROUTER_VENUE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("BROKER", "alpaca")
    env = EmbeddedDesk(data_dir=tmp_path, strategies_dir=tmp_path)._env("nats://127.0.0.1:1")
    assert service_environment("marketdata", env)["MD_FEED"] == "alpaca"
    assert service_environment("order_router", env)["ROUTER_VENUE"] == "alpaca"
    assert service_environment("broker_gateway", env)["BROKER"] == "alpaca"
    monkeypatch.setenv("MD_FEED", "synthetic")  # said on purpose: kept (desk up warns)
    env = EmbeddedDesk(data_dir=tmp_path, strategies_dir=tmp_path)._env("nats://127.0.0.1:1")
    assert (env["BROKER"], env["MD_FEED"], env["ROUTER_VENUE"]) == ("alpaca", "synthetic", "alpaca")
