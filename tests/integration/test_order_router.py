"""The order router against a real nats-server: routing, idempotency, refusals, halts, fills."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from structlog.testing import capture_logs

from desk.bus import codec, streams, subjects
from desk.bus import kv as desk_kv
from desk.bus.request import ERROR_CODE_HEADER, request, request_raw
from desk.bus.testing import InProcessService, NatsServer, run_in_process
from desk.core.ids import order_id_for
from desk.v1 import common_pb2, executions_pb2, marketdata_pb2, orders_pb2, strategy_pb2
from services.order_router.service import NAME, OrderRouterService
from services.order_router.settings import Settings
from services.order_router.venue import gateway_durable
from tests.support import poll

pytestmark = pytest.mark.integration

VENUE_SUBJECT = subjects.broker_orders("sim")


async def _put(nc: Client, bucket: str, key: str, message: Any) -> None:
    await desk_kv.put(nc.jetstream(), bucket, key, message)


async def serve_venue(nc: Client, venue: str = "sim") -> None:
    """What a gateway of ``venue`` does first: its durable consumer on ORDERS, so the router routes to it."""
    js = nc.jetstream()
    await streams.ensure_stream(js, streams.ORDERS)
    await js.add_consumer(
        subjects.STREAM_ORDERS,
        ConsumerConfig(
            durable_name=gateway_durable(venue),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=subjects.broker_orders(venue),
        ),
    )


async def _set_up_desk(nc: Client) -> None:
    for strategy_id in ("alpha", "beta"):
        spec = strategy_pb2.StrategySpec(strategy_id=strategy_id, member_id=f"m-{strategy_id}", initial_cash="100000")
        await _put(nc, subjects.KV_STRATEGIES, strategy_id, spec)
    await _put(nc, subjects.KV_PRICES, "AAPL", marketdata_pb2.Trade(symbol="AAPL", price="100", size="1", ts_ns=1))
    await serve_venue(nc)


class RouterHarness:
    """Starts (and restarts) the router in-process and talks to it."""

    def __init__(self, nats_server: NatsServer, nc: Client) -> None:
        self.settings = Settings(nats_url=nats_server.url)
        self.nc = nc
        self.router: OrderRouterService | None = None
        self.service: InProcessService | None = None

    async def start(self) -> OrderRouterService:
        self.router = OrderRouterService(self.settings)
        self.service = await run_in_process(NAME, self.settings, self.router.start)
        return self.router

    async def stop(self) -> None:
        if self.service is not None:
            assert await self.service.stop() == 0
            self.service = None

    async def submit(
        self, strategy_id: str = "alpha", subject: str | None = None, **fields: Any
    ) -> orders_pb2.OrderAck:
        base: dict[str, Any] = {
            "strategy_id": strategy_id,
            "client_order_id": "c-1",
            "symbol": "AAPL",
            "side": common_pb2.SIDE_BUY,
            "type": common_pb2.ORDER_TYPE_MARKET,
            "time_in_force": common_pb2.TIME_IN_FORCE_DAY,
            "qty": "10",
        }
        base.update(fields)
        message = orders_pb2.OrderRequest(**base)
        return await request(self.nc, subject or subjects.order_submit(strategy_id), message, orders_pb2.OrderAck)

    async def cancel(self, client_order_id: str, strategy_id: str = "alpha") -> orders_pb2.CancelAck:
        message = orders_pb2.CancelRequest(strategy_id=strategy_id, client_order_id=client_order_id)
        return await request(self.nc, subjects.order_cancel(strategy_id), message, orders_pb2.CancelAck)

    async def risk(self, subject: str, strategy_id: str = "") -> orders_pb2.HaltAck:
        message = orders_pb2.HaltRequest(strategy_id=strategy_id, reason="test", requested_by="pytest")
        return await request(self.nc, subject, message, orders_pb2.HaltAck)

    async def raw_submit(self, data: bytes, headers: dict[str, str] | None = None) -> tuple[str, orders_pb2.OrderAck]:
        reply = await request_raw(self.nc, subjects.order_submit("alpha"), data, headers=headers, timeout=5)
        assert reply.headers is not None
        return reply.headers[ERROR_CODE_HEADER], codec.decode(reply.data, orders_pb2.OrderAck, reply.headers)


@pytest.fixture
async def desk(nats_server: NatsServer, nc: Client) -> AsyncIterator[RouterHarness]:
    await _set_up_desk(nc)
    harness = RouterHarness(nats_server, nc)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


async def _routed(nc: Client) -> list[orders_pb2.RoutedOrder]:
    js = nc.jetstream()
    info = await js.stream_info(subjects.STREAM_ORDERS)
    found: list[orders_pb2.RoutedOrder] = []
    if info.state.messages == 0:
        return found
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(subjects.STREAM_ORDERS, seq)
        found.append(codec.decode(msg.data or b"", orders_pb2.RoutedOrder, dict(msg.headers or {})))
    return found


async def test_an_accepted_order_is_routed_exactly_once_and_a_retry_gets_the_first_ack(
    desk: RouterHarness, nc: Client
) -> None:
    with capture_logs() as logs:
        first = await desk.submit(client_order_id="buy-1", qty="10")
        again = await desk.submit(client_order_id="buy-1", qty="10")

    assert first.accepted and not first.duplicate
    assert first.order_id == order_id_for("alpha", "buy-1")
    assert again.accepted and again.duplicate and again.order_id == first.order_id and again.ts_ns == first.ts_ns

    routed = await _routed(nc)
    assert len(routed) == 1
    order = routed[0]
    assert (order.order_id, order.strategy_id, order.member_id) == (first.order_id, "alpha", "m-alpha")
    assert order.WhichOneof("action") == "new_order"
    assert (order.new_order.symbol, order.new_order.qty, order.new_order.client_order_id) == ("AAPL", "10", "buy-1")
    assert order.routed_ns > 0
    msg = await nc.jetstream().get_msg(subjects.STREAM_ORDERS, 1)
    assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == first.order_id
    assert msg.headers[codec.DESK_TYPE] == "desk.v1.RoutedOrder"
    events = [entry["event"] for entry in logs]
    assert "order.accepted" in events and "order.duplicate" in events


async def test_each_bad_request_gets_its_specific_reason_and_the_router_keeps_serving(
    desk: RouterHarness, nc: Client
) -> None:
    status, ack = await desk.raw_submit(b"\xff\xff\xff")
    assert (status, ack.reason, ack.accepted) == ("400", orders_pb2.REJECT_REASON_MALFORMED, False)

    wrong, headers = codec.encode(orders_pb2.CancelRequest(strategy_id="alpha", client_order_id="x"))
    status, ack = await desk.raw_submit(wrong, headers)
    assert (status, ack.reason) == ("400", orders_pb2.REJECT_REASON_MALFORMED)
    assert "expected desk.v1.OrderRequest" in ack.message

    status, ack = await desk.raw_submit(b"\x00" * (codec.MAX_MESSAGE_BYTES + 1))
    assert (status, ack.reason) == ("413", orders_pb2.REJECT_REASON_PAYLOAD_TOO_LARGE)

    with capture_logs() as logs:
        ack = await desk.submit(strategy_id="beta", subject=subjects.order_submit("alpha"))
    assert (ack.accepted, ack.reason) == (False, orders_pb2.REJECT_REASON_WRONG_SUBJECT)
    assert any(e["event"] == "order.rejected" and e["reason"] == "WRONG_SUBJECT" for e in logs)

    ack = await desk.submit(symbol="ZZZZ")
    assert (ack.reason, "ZZZZ" in ack.message) == (orders_pb2.REJECT_REASON_UNKNOWN_SYMBOL, True)

    ack = await desk.submit(strategy_id="nobody")
    assert ack.reason == orders_pb2.REJECT_REASON_UNKNOWN_STRATEGY

    ack = await desk.submit(type=common_pb2.ORDER_TYPE_LIMIT)
    assert (ack.reason, ack.message) == (
        orders_pb2.REJECT_REASON_INVALID_FIELD,
        "limit_price is required for LIMIT orders",
    )

    ack = await desk.submit(client_order_id="")
    assert ack.reason == orders_pb2.REJECT_REASON_INVALID_FIELD and "client_order_id" in ack.message

    ack = await desk.submit(qty="300")  # 30 000 > the default max order notional of 25 000
    assert ack.reason == orders_pb2.REJECT_REASON_MAX_ORDER_NOTIONAL

    good = await desk.submit(client_order_id="after-the-storm")
    assert good.accepted
    assert len(await _routed(nc)) == 1

    stats = await nc.request("$SRV.STATS.order_router", b"", timeout=5)
    assert b'"MALFORMED": 1' in stats.data and b'"WRONG_TYPE": 1' in stats.data


async def test_refusals_carry_the_micro_error_status_of_their_reason(desk: RouterHarness, nc: Client) -> None:
    def order(client_order_id: str, **fields: Any) -> tuple[bytes, dict[str, str]]:
        base: dict[str, Any] = {
            "strategy_id": "alpha",
            "client_order_id": client_order_id,
            "symbol": "AAPL",
            "side": common_pb2.SIDE_BUY,
            "type": common_pb2.ORDER_TYPE_MARKET,
            "time_in_force": common_pb2.TIME_IN_FORCE_DAY,
            "qty": "1",
        }
        base.update(fields)
        return codec.encode(orders_pb2.OrderRequest(**base))

    assert (await desk.raw_submit(*order("s-1", symbol="ZZZZ")))[0] == "404"
    status, ack = await desk.raw_submit(*order("s-2", side=common_pb2.SIDE_SELL))
    assert (status, ack.reason) == ("403", orders_pb2.REJECT_REASON_SHORT_NOT_ALLOWED)

    # A new spec for alpha (one order a minute) reaches the running router through its KV watch.
    limited = strategy_pb2.StrategySpec(
        strategy_id="alpha", member_id="m-alpha", risk=strategy_pb2.RiskLimits(max_orders_per_minute=1)
    )
    await _put(nc, subjects.KV_STRATEGIES, "alpha", limited)
    assert desk.router is not None
    router = desk.router
    await router.wait_until(lambda: router.strategies["alpha"].risk.max_orders_per_minute == 1)
    assert (await desk.submit(client_order_id="s-3", qty="1")).accepted
    status, ack = await desk.raw_submit(*order("s-4"))
    assert (status, ack.reason) == ("429", orders_pb2.REJECT_REASON_RATE_LIMIT)

    await desk.risk(subjects.RISK_HALT)
    status, ack = await desk.raw_submit(*order("s-5"))
    assert (status, ack.reason) == ("409", orders_pb2.REJECT_REASON_HALTED)


async def test_halts_refuse_new_orders_but_allow_cancels_and_resume_restores(desk: RouterHarness, nc: Client) -> None:
    open_order = await desk.submit(client_order_id="open-1", type=common_pb2.ORDER_TYPE_LIMIT, limit_price="90")
    assert open_order.accepted

    halted = await desk.risk(subjects.RISK_HALT)
    assert halted.global_halted and list(halted.halted_strategies) == []
    refused = await desk.submit(client_order_id="during-halt")
    assert (refused.accepted, refused.reason) == (False, orders_pb2.REJECT_REASON_HALTED)
    refused_beta = await desk.submit(strategy_id="beta", client_order_id="during-halt")
    assert refused_beta.reason == orders_pb2.REJECT_REASON_HALTED

    canceled = await desk.cancel("open-1")
    assert canceled.accepted and canceled.order_id == open_order.order_id
    routed = await _routed(nc)
    assert [r.WhichOneof("action") for r in routed] == ["new_order", "cancel"]
    assert routed[1].cancel.client_order_id == "open-1" and routed[1].order_id == open_order.order_id

    unknown = await desk.cancel("never-sent")
    assert (unknown.accepted, unknown.reason) == (False, orders_pb2.REJECT_REASON_UNKNOWN_ORDER)

    resumed = await desk.risk(subjects.RISK_RESUME)
    assert not resumed.global_halted
    assert (await desk.submit(client_order_id="after-resume")).accepted

    per_strategy = await desk.risk(subjects.RISK_HALT, "alpha")
    assert list(per_strategy.halted_strategies) == ["alpha"] and not per_strategy.global_halted
    assert (await desk.submit(client_order_id="alpha-halted")).reason == orders_pb2.REJECT_REASON_HALTED
    assert (await desk.submit(strategy_id="beta", client_order_id="beta-fine")).accepted
    status = await desk.risk(subjects.RISK_STATUS)
    assert list(status.halted_strategies) == ["alpha"]
    await desk.risk(subjects.RISK_RESUME, "alpha")
    assert (await desk.submit(client_order_id="alpha-again")).accepted


async def test_a_halt_survives_a_router_restart(desk: RouterHarness) -> None:
    await desk.risk(subjects.RISK_HALT, "alpha")
    await desk.stop()
    await desk.start()

    status = await desk.risk(subjects.RISK_STATUS)
    assert list(status.halted_strategies) == ["alpha"]
    assert (await desk.submit(client_order_id="after-restart")).reason == orders_pb2.REJECT_REASON_HALTED

    await desk.risk(subjects.RISK_RESUME, "alpha")
    assert (await desk.submit(client_order_id="after-restart")).accepted


def _fill(execution_id: str, client_order_id: str, qty: str) -> executions_pb2.ExecutionReport:
    return executions_pb2.ExecutionReport(
        execution_id=execution_id,
        order_id=order_id_for("alpha", client_order_id),
        client_order_id=client_order_id,
        strategy_id="alpha",
        symbol="AAPL",
        side=common_pb2.SIDE_BUY,
        exec_type=executions_pb2.EXEC_TYPE_FILL,
        status=executions_pb2.ORDER_STATUS_FILLED,
        order_qty=qty,
        fill_qty=qty,
        fill_price="100",
        cum_qty=qty,
        avg_price="100",
        leaves_qty="0",
        fee="0",
        venue="sim",
    )


async def _publish_execution(nc: Client, report: executions_pb2.ExecutionReport) -> None:
    data, headers = codec.encode(report)
    headers["Nats-Msg-Id"] = report.execution_id
    await nc.jetstream().publish(subjects.execution(report.strategy_id), data, headers=headers)


async def test_fills_on_the_executions_stream_update_the_virtual_account(desk: RouterHarness) -> None:
    refused = await desk.submit(client_order_id="sell-early", side=common_pb2.SIDE_SELL, qty="5")
    assert refused.reason == orders_pb2.REJECT_REASON_SHORT_NOT_ALLOWED

    bought = await desk.submit(client_order_id="buy-1", qty="10")
    assert bought.accepted
    await _publish_execution(desk.nc, _fill("exec-1", "buy-1", "10"))
    assert desk.router is not None
    await desk.router.wait_for_execution("exec-1")

    within = await desk.submit(client_order_id="sell-1", side=common_pb2.SIDE_SELL, qty="6")
    assert within.accepted
    beyond = await desk.submit(client_order_id="sell-2", side=common_pb2.SIDE_SELL, qty="5")  # 6 of 10 are reserved
    assert (beyond.accepted, beyond.reason) == (False, orders_pb2.REJECT_REASON_SHORT_NOT_ALLOWED)

    closed = await desk.cancel("buy-1")
    assert (closed.accepted, closed.reason) == (False, orders_pb2.REJECT_REASON_ORDER_CLOSED)


async def test_executions_are_replayed_before_the_router_serves(desk: RouterHarness) -> None:
    await desk.stop()
    await _publish_execution(desk.nc, _fill("exec-early", "old-buy", "4"))
    router = await desk.start()

    assert router.account("alpha").position("AAPL") == 4
    assert (await desk.submit(client_order_id="sell-4", side=common_pb2.SIDE_SELL, qty="4")).accepted
    refused = await desk.submit(client_order_id="sell-more", side=common_pb2.SIDE_SELL, qty="1")
    assert refused.reason == orders_pb2.REJECT_REASON_SHORT_NOT_ALLOWED


async def shared(*routers: OrderRouterService) -> None:
    """Wait until ``routers`` have shared the partitions out (each holds some, together all): a
    partition being handed over is answered by nobody for a moment, and a request then times out."""
    count = routers[0].settings.router_partitions

    def done() -> bool:
        held = sorted(p for router in routers for p in router.partitions.holds())
        return held == list(range(count)) and all(router.partitions.holds() for router in routers)

    await poll(done, "the replicas share the partitions", timeout=30, every=0.05)


async def test_two_replicas_route_concurrent_duplicates_once_and_share_halts(
    desk: RouterHarness, nats_server: NatsServer, nc: Client
) -> None:
    second = RouterHarness(nats_server, nc)
    replica = await second.start()
    try:
        assert desk.router is not None
        await shared(desk.router, replica)
        acks = await asyncio.gather(*(desk.submit(client_order_id="same-1") for _ in range(6)))
        assert all(ack.accepted for ack in acks)
        assert {ack.order_id for ack in acks} == {order_id_for("alpha", "same-1")}
        assert len(await _routed(nc)) == 1

        await desk.risk(subjects.RISK_HALT)  # answered by one replica; the other learns it from the KV watch
        assert desk.router is not None
        for router in (desk.router, replica):
            await router.wait_until(functools.partial(lambda r: subjects.halt_key("") in r.halts, router))
        refusals = await asyncio.gather(*(desk.submit(client_order_id=f"h-{n}") for n in range(6)))
        assert {ack.reason for ack in refusals} == {orders_pb2.REJECT_REASON_HALTED}
    finally:
        await second.stop()


async def test_an_ack_stored_long_ago_answers_a_retry_and_routes_nothing(desk: RouterHarness, nc: Client) -> None:
    # An ack in DESK_ORDER_IDS from before JetStream's duplicate window: only the router's own record
    # of accepted orders (the watched bucket) can tell that this client order id was used.
    old = orders_pb2.OrderAck(
        strategy_id="alpha",
        client_order_id="old-1",
        order_id=order_id_for("alpha", "old-1"),
        accepted=True,
        ts_ns=12345,
    )
    key = subjects.order_id_key("alpha", "old-1")
    await _put(nc, subjects.KV_ORDER_IDS, key, old)
    assert desk.router is not None
    await desk.router.wait_until(lambda: key in desk.router.order_ids if desk.router else False)

    again = await desk.submit(client_order_id="old-1")

    assert again.accepted and again.duplicate
    assert (again.order_id, again.ts_ns) == (old.order_id, 12345)
    assert await _routed(nc) == []


async def test_an_accepted_order_is_recorded_for_replicas_started_later(
    desk: RouterHarness, nats_server: NatsServer, nc: Client
) -> None:
    first = await desk.submit(client_order_id="rec-1")
    await desk.stop()
    restarted = await desk.start()

    assert subjects.order_id_key("alpha", "rec-1") in restarted.order_ids
    again = await desk.submit(client_order_id="rec-1")
    assert again.duplicate and again.ts_ns == first.ts_ns
    assert len(await _routed(nc)) == 1


async def test_a_cancel_through_another_replica_right_after_the_ack_finds_the_order(
    desk: RouterHarness, nats_server: NatsServer, nc: Client
) -> None:
    second = RouterHarness(nats_server, nc)
    replica = await second.start()
    try:
        assert desk.router is not None
        order = orders_pb2.OrderRequest(
            strategy_id="alpha",
            client_order_id="x-1",
            symbol="AAPL",
            side=common_pb2.SIDE_BUY,
            type=common_pb2.ORDER_TYPE_LIMIT,
            limit_price="90",
            time_in_force=common_pb2.TIME_IN_FORCE_DAY,
            qty="1",
        )
        ack = await desk.router.submit(order, subjects.order_submit("alpha"))
        cancel = orders_pb2.CancelRequest(strategy_id="alpha", client_order_id="x-1")
        cancelled = await replica.cancel(cancel, subjects.order_cancel("alpha"))

        assert ack.accepted and cancelled.accepted and cancelled.order_id == ack.order_id
        kinds = [routed.WhichOneof("action") for routed in await _routed(nc)]
        assert kinds == ["new_order", "cancel"]
    finally:
        await second.stop()


async def test_a_venue_no_gateway_serves_refuses_orders_with_the_reason_and_routes_nothing(
    nats_server: NatsServer, nc: Client
) -> None:
    await _set_up_desk(nc)  # serves sim; the router is set to alpaca, whose gateway never ran
    harness = RouterHarness(nats_server, nc)
    harness.settings = Settings(nats_url=nats_server.url, router_venue="alpaca", router_venue_wait=0.5)
    router = await harness.start()
    try:
        with capture_logs() as logs:
            ack = await harness.submit(client_order_id="lost-1")
        assert (ack.accepted, ack.reason) == (False, orders_pb2.REJECT_REASON_VENUE_UNAVAILABLE)
        assert ack.message.startswith("no broker gateway serves venue 'alpaca' (no consumer gateway-alpaca on ORDERS)")
        assert [e["venue"] for e in logs if e["event"] == "order.venue_unavailable"] == ["alpaca"]
        assert await _routed(nc) == [] and router.account("alpha").buying_power == 100000
        # the gateway of alpaca starts (its consumer): the next order is routed, checked once, then cached
        await serve_venue(nc, "alpaca")
        assert (await harness.submit(client_order_id="found-1")).accepted
        checks = router.venue.checks if router.venue else 0
        assert (await harness.submit(client_order_id="found-2")).accepted
        assert router.venue is not None and router.venue.checks == checks
        assert [o.new_order.client_order_id for o in await _routed(nc)] == ["found-1", "found-2"]
    finally:
        await harness.stop()


async def test_an_order_sent_while_the_gateway_is_starting_waits_for_its_consumer(
    nats_server: NatsServer, nc: Client
) -> None:
    await _set_up_desk(nc)
    harness = RouterHarness(nats_server, nc)
    harness.settings = Settings(nats_url=nats_server.url, router_venue="alpaca", router_venue_wait=3)
    await harness.start()
    try:

        async def gateway_comes_up() -> None:
            await asyncio.sleep(0.5)
            await serve_venue(nc, "alpaca")

        starting = asyncio.create_task(gateway_comes_up())
        ack = await harness.submit(client_order_id="early-1")
        await starting
        assert ack.accepted and [o.new_order.client_order_id for o in await _routed(nc)] == ["early-1"]
    finally:
        await harness.stop()
