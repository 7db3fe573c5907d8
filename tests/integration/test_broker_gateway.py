"""The broker gateway with the sim venue against a real nats-server: ORDERS in, EXECUTIONS out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from structlog.testing import capture_logs

from desk.bus import codec, subjects
from desk.bus.testing import InProcessService, NatsServer, run_in_process
from desk.core.matching import SHUTDOWN_TEXT
from desk.v1 import common_pb2, executions_pb2, marketdata_pb2, orders_pb2
from services.broker_gateway.service import NAME, BrokerGatewayService
from services.broker_gateway.settings import Settings

pytestmark = pytest.mark.integration

E = executions_pb2
ORDERS_SUBJECT = subjects.broker_orders("sim")
TIMEOUT = 10.0


class Reports:
    """Execution reports of strategy ``alpha`` as the EXECUTIONS stream holds them."""

    def __init__(self, sub: JetStreamContext.PushSubscription) -> None:
        self.sub = sub

    async def next(self) -> tuple[executions_pb2.ExecutionReport, dict[str, str], int]:
        msg = await self.sub.next_msg(timeout=TIMEOUT)
        headers = msg.headers or {}
        return codec.decode(msg.data, E.ExecutionReport, headers), headers, msg.metadata.sequence.stream

    async def kinds(self, count: int) -> list[tuple[str, executions_pb2.ExecutionReport]]:
        got = []
        for _ in range(count):
            report, _, _ = await self.next()
            got.append((E.ExecType.Name(report.exec_type).removeprefix("EXEC_TYPE_"), report))
        return got


@pytest.fixture
async def gateway(nats_server: NatsServer, nc: Client) -> AsyncIterator[InProcessService]:
    settings = Settings(nats_url=nats_server.url, drain_timeout=5)
    service = await run_in_process(NAME, settings, BrokerGatewayService(settings).start)
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
async def reports(nc: Client) -> AsyncIterator[Reports]:
    sub = await nc.jetstream().subscribe(subjects.execution("alpha"), ordered_consumer=True)
    try:
        yield Reports(sub)
    finally:
        await sub.unsubscribe()


async def publish_bar(nc: Client, o: str, h: str, lo: str, c: str, volume: str = "") -> None:
    data, headers = codec.encode(marketdata_pb2.Bar(symbol="AAPL", open=o, high=h, low=lo, close=c, volume=volume))
    await nc.publish(subjects.md_bar("AAPL"), data, headers=headers)
    await nc.flush()


def routed(order_id: str, **fields: Any) -> orders_pb2.RoutedOrder:
    request: dict[str, Any] = {
        "strategy_id": "alpha",
        "client_order_id": f"c-{order_id}",
        "symbol": "AAPL",
        "side": common_pb2.SIDE_BUY,
        "type": common_pb2.ORDER_TYPE_MARKET,
        "time_in_force": common_pb2.TIME_IN_FORCE_GTC,
        "qty": "10",
    }
    request.update(fields)
    return orders_pb2.RoutedOrder(
        order_id=order_id,
        strategy_id="alpha",
        member_id="m1",
        routed_ns=1,
        new_order=orders_pb2.OrderRequest(**request),
    )


def cancel(order_id: str) -> orders_pb2.RoutedOrder:
    return orders_pb2.RoutedOrder(
        order_id=order_id,
        strategy_id="alpha",
        member_id="m1",
        cancel=orders_pb2.CancelRequest(strategy_id="alpha", client_order_id=f"c-{order_id}"),
    )


async def route(nc: Client, message: orders_pb2.RoutedOrder, msg_id: str | None = None) -> None:
    """Publish as the router does: new orders with Nats-Msg-Id = order id, cancels without one."""
    data, headers = codec.encode(message)
    if message.HasField("new_order") or msg_id:
        headers["Nats-Msg-Id"] = msg_id or message.order_id
    await nc.jetstream().publish(ORDERS_SUBJECT, data, headers=headers)


async def test_market_order_after_a_bar_is_reported_new_and_filled_and_leaves_the_work_queue(
    nc: Client, gateway: InProcessService, reports: Reports
) -> None:
    await publish_bar(nc, "100", "101", "99", "100")
    await route(nc, routed("o1"))

    new, new_headers, _ = await reports.next()
    fill, fill_headers, fill_seq = await reports.next()
    assert (new.exec_type, new.status, new.order_id, new.order_qty) == (E.EXEC_TYPE_NEW, E.ORDER_STATUS_NEW, "o1", "10")
    assert (fill.exec_type, fill.status, fill.fill_qty, fill.fill_price) == (
        E.EXEC_TYPE_FILL,
        E.ORDER_STATUS_FILLED,
        "10",
        "100.02",
    )
    assert (fill.fee, fill.venue, fill.member_id) == ("0.10002", "sim", "m1")
    assert fill.report_ns >= fill.event_ns > 0
    assert new_headers["Nats-Msg-Id"] == new.execution_id
    assert fill_headers["Nats-Msg-Id"] == fill.execution_id
    stored = await nc.jetstream().get_msg(subjects.STREAM_EXECUTIONS, fill_seq)
    assert stored.subject == "desk.exec.alpha"
    assert stored.headers is not None and stored.headers["Nats-Msg-Id"] == fill.execution_id
    assert stored.headers[codec.DESK_TYPE] == "desk.v1.ExecutionReport"

    # the gateway acks (and has the ack confirmed) before it takes the next order, so once the
    # next order is reported the first one has left the work queue
    await route(nc, routed("o2", qty="1"))
    assert [k for k, _ in await reports.kinds(2)] == ["NEW", "FILL"]
    assert await gateway.stop() == 0
    info = await nc.jetstream().stream_info(subjects.STREAM_ORDERS)
    assert info.state.messages == 0


async def test_resting_limit_fills_on_a_crossing_bar_and_cancel_is_reported(
    nc: Client, gateway: InProcessService, reports: Reports
) -> None:
    await publish_bar(nc, "100", "101", "99", "100")
    await route(nc, routed("lim", type=common_pb2.ORDER_TYPE_LIMIT, limit_price="95"))
    [(kind, new)] = await reports.kinds(1)
    assert kind == "NEW" and new.limit_price == "95"

    await publish_bar(nc, "96", "97", "94", "95")
    [(kind, fill)] = await reports.kinds(1)
    assert (kind, fill.order_id, fill.fill_price) == ("FILL", "lim", "95")

    await route(nc, routed("rest", type=common_pb2.ORDER_TYPE_LIMIT, limit_price="80"))
    await route(nc, cancel("rest"))
    kinds = await reports.kinds(2)
    assert [(k, r.order_id) for k, r in kinds] == [("NEW", "rest"), ("CANCELED", "rest")]
    assert kinds[1][1].status == E.ORDER_STATUS_CANCELED

    await route(nc, cancel("ghost"))
    [(kind, rejected)] = await reports.kinds(1)
    assert kind == "CANCEL_REJECTED" and "unknown order" in rejected.text


async def test_redelivered_order_is_not_placed_twice_and_malformed_messages_are_skipped(
    nc: Client, gateway: InProcessService, reports: Reports
) -> None:
    await publish_bar(nc, "100", "101", "99", "100")
    with capture_logs() as logs:
        await route(nc, routed("dup", type=common_pb2.ORDER_TYPE_LIMIT, limit_price="90"))
        [(kind, _)] = await reports.kinds(1)
        assert kind == "NEW"
        # the same routed order again (as a redelivery would bring it), past the stream's dedup
        await route(nc, routed("dup", type=common_pb2.ORDER_TYPE_LIMIT, limit_price="90"), msg_id="dup-again")
        await nc.jetstream().publish(ORDERS_SUBJECT, b"\xff\xff\xff not a RoutedOrder")
        await route(nc, routed("after"))
        # orders are handled one at a time, in order: a second NEW for "dup" would come first
        kinds = await reports.kinds(2)
        assert [(k, r.order_id) for k, r in kinds] == [("NEW", "after"), ("FILL", "after")]

    events = [entry["event"] for entry in logs]
    assert "order.malformed" in events and "order.duplicate" in events
    malformed = next(entry for entry in logs if entry["event"] == "order.malformed")
    assert malformed["code"] == "MALFORMED"

    stats = await nc.request("$SRV.STATS.broker_gateway", b"", timeout=5)
    data = json.loads(stats.data)["endpoints"][0]["data"]
    assert data["orders_malformed"] == 1 and data["errors"] == {"MALFORMED": 1}
    info = await nc.request("$SRV.INFO.broker_gateway", b"", timeout=5)
    assert json.loads(info.data)["metadata"]["venue"] == "sim"

    # the resting "dup" order expires when the sim venue stops, before the connection drains
    assert await gateway.stop() == 0
    [(kind, expired)] = await reports.kinds(1)
    assert (kind, expired.order_id, expired.text) == ("EXPIRED", "dup", SHUTDOWN_TEXT)
    assert (await nc.jetstream().stream_info(subjects.STREAM_ORDERS)).state.messages == 0


async def test_book_endpoint_lists_the_resting_orders(nc: Client, gateway: InProcessService, reports: Reports) -> None:
    from desk.bus.request import request
    from desk.v1 import ledger_pb2

    await route(nc, routed("waiting", type=common_pb2.ORDER_TYPE_STOP, stop_price="120"))
    await reports.kinds(1)
    book = await request(
        nc, "desk.broker.sim.book", ledger_pb2.LedgerQuery(strategy_id="alpha"), ledger_pb2.OrdersReply
    )
    assert [(o.order_id, o.stop_price, o.venue) for o in book.orders] == [("waiting", "120", "sim")]
    await asyncio.wait_for(gateway.stop(), TIMEOUT)


async def test_gateway_keeps_taking_orders_after_the_server_restarts(
    nats_server: NatsServer, nc: Client, gateway: InProcessService
) -> None:
    await publish_bar(nc, "100", "101", "99", "100")
    nats_server.restart()  # same port, same store: the gateway reconnects and re-creates its pull subscription
    fresh = await nats.connect(nats_server.url)
    try:
        await route(fresh, routed("after-restart", qty="1"))
        sub = await fresh.jetstream().subscribe(subjects.execution("alpha"), ordered_consumer=True)
        got = await Reports(sub).kinds(2)
        await sub.unsubscribe()
    finally:
        await fresh.close()
    assert [(k, r.order_id) for k, r in got] == [("NEW", "after-restart"), ("FILL", "after-restart")]


async def test_the_gateway_has_its_consumer_before_it_answers(nats_server: NatsServer, nc: Client) -> None:
    """desk up waits for the gateway to answer; the router's venue check then finds gateway-sim
    (services/order_router/venue.py), even while the broker is still starting."""
    settings = Settings(nats_url=nats_server.url, drain_timeout=5)
    gateway = BrokerGatewayService(settings)
    starting, release = asyncio.Event(), asyncio.Event()
    real_start = gateway.broker.start

    async def slow_start(*args: Any, **kwargs: Any) -> None:  # Alpaca: its stream and first reconcile
        starting.set()
        await release.wait()
        await real_start(*args, **kwargs)

    gateway.broker.start = slow_start  # type: ignore[method-assign]
    task = asyncio.create_task(run_in_process(NAME, settings, gateway.start, timeout=60))
    try:
        await asyncio.wait_for(starting.wait(), 60)
        pong = await nc.request(f"$SRV.PING.{NAME}", b"", timeout=TIMEOUT)  # it answers ...
        assert json.loads(pong.data)["name"] == NAME
        info = await nc.jetstream().consumer_info(subjects.STREAM_ORDERS, "gateway-sim")  # ... and has its consumer
        assert info.config.filter_subject == ORDERS_SUBJECT
    finally:
        release.set()
        service = await asyncio.wait_for(task, 60)
        await service.stop()


async def test_a_price_unreadable_in_an_election_is_no_price_and_logged_once(nats_server: NatsServer) -> None:
    gateway = BrokerGatewayService(Settings(nats_url=nats_server.url))

    class Electing:
        def __init__(self, error: BaseException) -> None:
            self.error = error

        async def get(self, key: str) -> Any:
            raise self.error

    gateway._prices = Electing(nats.errors.TimeoutError())  # type: ignore[assignment]
    with capture_logs() as logs:
        assert await gateway._price_of("AAPL") is None
        assert await gateway._price_of("AAPL") is None
    assert [e["event"] for e in logs] == ["price.unreadable"] and gateway.counts["price_unreadable"] == 2
    gateway._prices = Electing(nats.js.errors.KeyNotFoundError())  # type: ignore[assignment]
    with capture_logs() as logs:
        assert await gateway._price_of("AAPL") is None
    assert [e["event"] for e in logs] == ["price.readable"]  # no price, not a failure: the failing run ended
    gateway._prices = Electing(nats.js.errors.BadRequestError())  # type: ignore[assignment]
    with pytest.raises(nats.js.errors.BadRequestError):  # not an election: a bug, raised
        await gateway._price_of("AAPL")
