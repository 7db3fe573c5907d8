"""The order router handling several orders at once, against a real nats-server.

The router under test is the real one with a gate in front of routing: the first order to reach
``_route`` waits there (its real publish happens when the test opens the gate), so a second order is
handled while the first is between its risk check and its routing — the window the races live in.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client

from desk.bus import codec, subjects
from desk.bus import kv as desk_kv
from desk.bus.request import request
from desk.bus.retry import Published
from desk.bus.testing import InProcessService, NatsServer, run_in_process
from desk.core.ids import order_id_for
from desk.v1 import common_pb2, marketdata_pb2, orders_pb2, strategy_pb2
from services.order_router.service import NAME, OrderRouterService
from services.order_router.settings import Settings
from tests.integration.test_order_router import serve_venue

pytestmark = pytest.mark.integration

TIMEOUT = 5.0


class GatedRouter(OrderRouterService):
    """The real router; the first order to be routed waits at the gate before its real publish."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.at_gate = asyncio.Event()
        self.gate = asyncio.Event()
        self.held = False
        self.submits = 0
        self.submitted = asyncio.Condition()

    async def submit(self, request: orders_pb2.OrderRequest, subject: str) -> orders_pb2.OrderAck:
        self.submits += 1
        async with self.submitted:
            self.submitted.notify_all()
        return await super().submit(request, subject)

    async def _route(self, routed: orders_pb2.RoutedOrder, msg_id: str) -> Published:
        if not self.held:
            self.held = True
            self.at_gate.set()
            await self.gate.wait()
        return await super()._route(routed, msg_id)

    async def wait_submits(self, count: int) -> None:
        async with self.submitted:
            await asyncio.wait_for(self.submitted.wait_for(lambda: self.submits >= count), TIMEOUT)


async def _put(nc: Client, bucket: str, key: str, message: Any) -> None:
    await desk_kv.put(nc.jetstream(), bucket, key, message)


@pytest.fixture
async def router(nats_server: NatsServer, nc: Client) -> AsyncIterator[GatedRouter]:
    # 100,000 cash; one order may be up to 80,000, so two orders of 60,000 each pass every limit
    # alone but not together.
    limits = strategy_pb2.RiskLimits(max_order_notional="80000", max_position_notional="500000")
    spec = strategy_pb2.StrategySpec(strategy_id="alpha", member_id="m-alpha", initial_cash="100000", risk=limits)
    await _put(nc, subjects.KV_STRATEGIES, "alpha", spec)
    await _put(nc, subjects.KV_PRICES, "AAPL", marketdata_pb2.Trade(symbol="AAPL", price="100", size="1", ts_ns=1))
    await serve_venue(nc)  # what the sim gateway does at start: the venue is served
    settings = Settings(nats_url=nats_server.url)
    gated = GatedRouter(settings)
    service: InProcessService = await run_in_process(NAME, settings, gated.start)
    try:
        yield gated
    finally:
        gated.gate.set()
        assert await service.stop() == 0


def _submit(nc: Client, client_order_id: str, qty: str = "600") -> asyncio.Task[orders_pb2.OrderAck]:
    message = orders_pb2.OrderRequest(
        strategy_id="alpha",
        client_order_id=client_order_id,
        symbol="AAPL",
        side=common_pb2.SIDE_BUY,
        type=common_pb2.ORDER_TYPE_MARKET,
        time_in_force=common_pb2.TIME_IN_FORCE_DAY,
        qty=qty,
    )
    return asyncio.create_task(
        request(nc, subjects.order_submit("alpha"), message, orders_pb2.OrderAck, timeout=TIMEOUT)
    )


async def _routed(nc: Client) -> list[orders_pb2.RoutedOrder]:
    js = nc.jetstream()
    info = await js.stream_info(subjects.STREAM_ORDERS)
    if not info.state.messages:
        return []
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(subjects.STREAM_ORDERS, seq)
        found.append(codec.decode(msg.data or b"", orders_pb2.RoutedOrder, dict(msg.headers or {})))
    return found


async def test_two_orders_that_together_exceed_buying_power_are_not_both_accepted(
    router: GatedRouter, nc: Client
) -> None:
    first = _submit(nc, "big-1")  # 600 x 100 = 60,000 of 100,000
    await asyncio.wait_for(router.at_gate.wait(), TIMEOUT)  # checked, now routing
    # Handled while the first is still routing: it must see the first one's reservation.
    second = await asyncio.wait_for(_submit(nc, "big-2"), TIMEOUT)
    assert (second.accepted, second.reason) == (False, orders_pb2.REJECT_REASON_INSUFFICIENT_BUYING_POWER)

    router.gate.set()
    accepted = await asyncio.wait_for(first, TIMEOUT)
    assert accepted.accepted and accepted.order_id == order_id_for("alpha", "big-1")
    assert [o.new_order.client_order_id for o in await _routed(nc)] == ["big-1"]
    assert router.account("alpha").buying_power == 40000


async def test_concurrent_requests_with_one_client_order_id_route_one_order_and_get_one_ack(
    router: GatedRouter, nc: Client
) -> None:
    first = _submit(nc, "same-1")
    await asyncio.wait_for(router.at_gate.wait(), TIMEOUT)
    # The same order again (60,000: it would not fit beside itself) while the first is routing.
    again = _submit(nc, "same-1")
    await router.wait_submits(2)
    router.gate.set()
    acks = await asyncio.wait_for(asyncio.gather(first, again), TIMEOUT)

    assert all(ack.accepted for ack in acks)
    assert {ack.order_id for ack in acks} == {order_id_for("alpha", "same-1")}
    assert acks[0].ts_ns == acks[1].ts_ns
    assert [ack.duplicate for ack in acks] == [False, True]
    routed = await _routed(nc)
    assert [o.new_order.client_order_id for o in routed] == ["same-1"]
    assert router.account("alpha").buying_power == 40000  # reserved once


async def test_a_reservation_is_released_when_routing_fails(router: GatedRouter, nc: Client) -> None:
    router.held = True  # no gate: route straight away
    js = nc.jetstream()
    assert router.venue is not None and await router.venue.served()  # seen served: believed for SERVED_TTL
    await js.delete_stream(subjects.STREAM_ORDERS)  # routing now fails: no stream takes the order
    failed = await asyncio.wait_for(_submit(nc, "big-1"), TIMEOUT)
    assert not failed.accepted and failed.reason == orders_pb2.REJECT_REASON_INTERNAL
    assert router.account("alpha").buying_power == 100000

    await serve_venue(nc)  # the stream again, and the gateway's consumer on it
    retried = await asyncio.wait_for(_submit(nc, "big-1"), TIMEOUT)  # 60,000: fits only if released
    assert retried.accepted and not retried.duplicate
    assert router.account("alpha").buying_power == 40000
