"""The sim gateway's batches: many routed orders per fetch, reports published in waves, acks after store."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js.api import DiscardPolicy

from desk.bus import codec, streams, subjects
from desk.bus.testing import InProcessService, NatsServer, run_in_process
from desk.v1 import common_pb2, executions_pb2, marketdata_pb2, orders_pb2
from services.broker_gateway.factory import build_broker
from services.broker_gateway.outbox import next_wave
from services.broker_gateway.service import NAME, BrokerGatewayService
from services.broker_gateway.settings import Settings
from tests.support import poll

pytestmark = pytest.mark.integration

E = executions_pb2
ORDERS_SUBJECT = subjects.broker_orders("sim")
TIMEOUT = 15.0
COUNT = 100


def routed(order_id: str) -> orders_pb2.RoutedOrder:
    return orders_pb2.RoutedOrder(
        order_id=order_id,
        strategy_id="alpha",
        member_id="m1",
        routed_ns=1,
        new_order=orders_pb2.OrderRequest(
            strategy_id="alpha",
            client_order_id=f"c-{order_id}",
            symbol="AAPL",
            side=common_pb2.SIDE_BUY,
            type=common_pb2.ORDER_TYPE_MARKET,
            time_in_force=common_pb2.TIME_IN_FORCE_GTC,
            qty="1",
        ),
    )


async def route_all(nc: Client, order_ids: list[str]) -> None:
    """Publish every routed order at once (pipelined), each with Nats-Msg-Id = order id, as the router does."""
    js = nc.jetstream()
    futures = []
    for order_id in order_ids:
        data, headers = codec.encode(routed(order_id))
        headers["Nats-Msg-Id"] = order_id
        futures.append(await js.publish_async(ORDERS_SUBJECT, data, headers=headers))
    acks = await asyncio.wait_for(asyncio.gather(*futures), TIMEOUT)
    assert not any(ack.duplicate for ack in acks)


async def start_gateway(nats_server: NatsServer) -> tuple[InProcessService, BrokerGatewayService]:
    """A sim gateway whose venue has seen one trade without size (unlimited liquidity at 100)."""
    settings = Settings(nats_url=nats_server.url, drain_timeout=5)
    broker = build_broker(settings)
    assert await broker.on_market_data(marketdata_pb2.Trade(symbol="AAPL", price="100")) == []
    gateway = BrokerGatewayService(settings, broker)
    return await run_in_process(NAME, settings, gateway.start), gateway


async def reports_in_stream(nc: Client, count: int) -> list[executions_pb2.ExecutionReport]:
    """The first ``count`` reports of strategy alpha in EXECUTIONS, in stream order."""
    sub = await nc.jetstream().subscribe(subjects.execution("alpha"), ordered_consumer=True)
    got = []
    try:
        for _ in range(count):
            msg = await sub.next_msg(timeout=TIMEOUT)
            report = codec.decode(msg.data, E.ExecutionReport, msg.headers)
            assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == report.execution_id
            got.append(report)
    finally:
        await sub.unsubscribe()
    return got


def kinds_per_order(reports: list[executions_pb2.ExecutionReport]) -> dict[str, list[str]]:
    per_order: dict[str, list[str]] = {}
    for report in reports:
        per_order.setdefault(report.order_id, []).append(E.ExecType.Name(report.exec_type).removeprefix("EXEC_TYPE_"))
    return per_order


async def stats(nc: Client) -> dict[str, Any]:
    reply = await nc.request("$SRV.STATS.broker_gateway", b"", timeout=5)
    data: dict[str, Any] = json.loads(reply.data)["endpoints"][0]["data"]
    return data


@pytest.fixture
def order_ids() -> list[str]:
    return [f"o{i:03d}" for i in range(COUNT)]


async def test_a_backlog_of_orders_is_taken_in_batches_and_every_order_is_new_then_filled_in_order(
    nats_server: NatsServer, nc: Client, order_ids: list[str]
) -> None:
    # the backlog is in the work queue before the gateway starts: its first fetch takes 64 of them
    await route_all(nc, order_ids)
    service, _ = await start_gateway(nats_server)
    stopped = False
    try:
        reports = await reports_in_stream(nc, 2 * COUNT)
        assert kinds_per_order(reports) == {order_id: ["NEW", "FILL"] for order_id in order_ids}
        assert len({r.execution_id for r in reports}) == 2 * COUNT
        # fills reach the stream in the order the routed orders were (their outbox order)
        assert [r.order_id for r in reports if r.exec_type == E.EXEC_TYPE_FILL] == order_ids
        assert all(
            r.fill_qty == "1" and r.status == E.ORDER_STATUS_FILLED for r in reports if r.exec_type == E.EXEC_TYPE_FILL
        )
        data = await stats(nc)
        assert (data["orders_received"], data["order_batches"], data["reports_published"]) == (COUNT, 2, 2 * COUNT)
        assert data["unpublished_reports"] == 0 and "publish_failures" not in data
        # the order loop finishes its batch (acks confirmed) before the service stops
        assert await service.stop() == 0
        stopped = True
    finally:
        if not stopped:
            await service.stop()
    js = nc.jetstream()
    assert (await js.stream_info(subjects.STREAM_ORDERS)).state.messages == 0
    assert (await js.stream_info(subjects.STREAM_EXECUTIONS)).state.messages == 2 * COUNT


async def test_reports_refused_mid_batch_are_retried_in_order_and_no_order_leaves_the_queue_unreported(
    nats_server: NatsServer, nc: Client, order_ids: list[str]
) -> None:
    js = nc.jetstream()
    service, gateway = await start_gateway(nats_server)
    stopped = False
    try:
        # EXECUTIONS takes 70 reports, then refuses new ones ("maximum messages exceeded")
        limited = streams.EXECUTIONS.evolve(max_msgs=70, discard=DiscardPolicy.NEW)
        await js.update_stream(limited)
        naked: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def on_nak(msg: Any) -> None:
            if not naked.done():
                naked.set_result(None)

        advisory = await nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MSG_NAKED.{subjects.STREAM_ORDERS}.gateway-sim", cb=on_nak
        )
        await route_all(nc, order_ids)
        await asyncio.wait_for(naked, TIMEOUT)  # a flush failed: its batch went back to the work queue
        await advisory.unsubscribe()
        assert gateway.counts["publish_failures"] >= 1
        await js.update_stream(streams.EXECUTIONS)  # the operator lifts the limit (services never change a stream)

        reports = await reports_in_stream(nc, 2 * COUNT)
        # every order once, NEW before FILL: a FILL is never sent before its NEW is stored
        assert kinds_per_order(reports) == {order_id: ["NEW", "FILL"] for order_id in order_ids}
        assert len({r.execution_id for r in reports}) == 2 * COUNT
        # the nak'd batch comes back (its reports already stored: each one a duplicate) and is acked;
        # on a busy machine that can come after the reports are all in: wait for the queue to empty
        await poll(lambda: queue_empty(js), "every routed order acked by the running gateway", timeout=TIMEOUT)
        assert await service.stop() == 0
        stopped = True
    finally:
        if not stopped:
            await service.stop()
    assert (await js.stream_info(subjects.STREAM_ORDERS)).state.messages == 0
    assert (await js.stream_info(subjects.STREAM_EXECUTIONS)).state.messages == 2 * COUNT


def report(order_id: str, kind: executions_pb2.ExecType, qty: str = "") -> executions_pb2.ExecutionReport:
    return E.ExecutionReport(
        strategy_id="alpha", order_id=order_id, execution_id=f"{order_id}-{kind}-{qty}", exec_type=kind, fill_qty=qty
    )


def test_a_wave_holds_one_report_per_order_and_keeps_fills_in_outbox_order() -> None:
    new1, fill1, new2, fill2 = (
        report("1", E.EXEC_TYPE_NEW),
        report("1", E.EXEC_TYPE_FILL, "1"),
        report("2", E.EXEC_TYPE_NEW),
        report("2", E.EXEC_TYPE_FILL, "1"),
    )
    assert next_wave([new1, fill1, new2, fill2]) == [new1, new2]
    assert next_wave([fill1, fill2]) == [fill1, fill2]
    # order 1 has a partial fill held back: order 2's fill must not overtake it, its NEW may
    part1 = report("1", E.EXEC_TYPE_PARTIAL_FILL, "1")
    new3 = report("3", E.EXEC_TYPE_NEW)
    assert next_wave([new1, part1, fill1, fill2, new3]) == [new1, new3]
    assert next_wave([part1, fill1, fill2]) == [part1]
    # same order id under another strategy is another order
    other = E.ExecutionReport(strategy_id="beta", order_id="1", execution_id="b", exec_type=E.EXEC_TYPE_NEW)
    assert next_wave([new1, other]) == [new1, other]
    assert next_wave([new1, new2, new3], limit=2) == [new1, new2]


async def queue_empty(js: Any) -> bool:
    """Whether the ORDERS work queue is empty (every routed order acked)."""
    return (await js.stream_info(subjects.STREAM_ORDERS)).state.messages == 0
