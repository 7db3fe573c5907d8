"""The router's JetStream calls through what an election does to them, against one real nats-server.

An election is provoked two ways: the server is stopped in the middle of a route and started again
on its store (the router's publish retried with the same ``Nats-Msg-Id``), and a publish whose
PubAck is lost is made by :class:`LostAcks` (the first publish to a subject lands, or not, and its
caller sees a timeout: what a leader lost between storing a message and answering looks like).
Every time: the router answers exactly (accepted once, ``duplicate`` only for a real repeat), routes
the order once, and keeps serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from structlog.testing import capture_logs

from desk.bus import codec, retry, subjects
from desk.bus.request import request
from desk.bus.testing import NatsServer, run_in_process
from desk.core.ids import order_id_for
from desk.v1 import common_pb2, orders_pb2
from services.order_router import service as router_service
from services.order_router import venue as router_venue
from services.order_router.service import OrderRouterService
from services.order_router.venue import gateway_durable
from tests.integration.test_order_router import RouterHarness, _routed, _set_up_desk, serve_venue
from tests.support import poll

pytestmark = pytest.mark.integration

BOUND = 60.0  # generous: the machine may be loaded
VENUE_SUBJECT = subjects.broker_orders("sim")


class LostAcks:
    """Wraps a JetStream context's ``publish``: the next ``times`` publishes to subjects starting with
    ``prefix`` land (``land``) or not, and their caller gets a timeout instead of the PubAck."""

    def __init__(self, js: JetStreamContext, prefix: str, *, land: bool, times: int = 1) -> None:
        self.js, self.prefix, self.land, self.left = js, prefix, land, times
        self.original = js.publish
        self.lost = 0
        js.publish = self.publish  # type: ignore[method-assign]

    async def publish(self, subject: str, payload: bytes = b"", *args: Any, **kwargs: Any) -> Any:
        if self.left > 0 and subject.startswith(self.prefix):
            self.left -= 1
            self.lost += 1
            if self.land:
                await self.original(subject, payload, *args, **kwargs)
            raise nats.errors.TimeoutError
        return await self.original(subject, payload, *args, **kwargs)

    def undo(self) -> None:
        self.js.publish = self.original  # type: ignore[method-assign]


class FailingLookups:
    """A JetStream context whose ``consumer_info`` times out (an election); the rest is the real one."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    def __getattr__(self, name: str) -> Any:
        return getattr(self._js, name)

    async def consumer_info(self, *args: Any, **kwargs: Any) -> Any:
        raise nats.errors.TimeoutError


def _order(client_order_id: str, qty: str = "10") -> orders_pb2.OrderRequest:
    return orders_pb2.OrderRequest(
        strategy_id="alpha",
        client_order_id=client_order_id,
        symbol="AAPL",
        side=common_pb2.SIDE_BUY,
        type=common_pb2.ORDER_TYPE_MARKET,
        time_in_force=common_pb2.TIME_IN_FORCE_DAY,
        qty=qty,
    )


async def _submit(nc: Client, client_order_id: str, timeout: float = BOUND) -> orders_pb2.OrderAck:
    return await request(
        nc, subjects.order_submit("alpha"), _order(client_order_id), orders_pb2.OrderAck, timeout=timeout
    )


def _js(router: OrderRouterService) -> JetStreamContext:
    assert router._runtime is not None
    return router._runtime.js


@pytest.fixture
async def desk(nats_server: NatsServer, nc: Client) -> AsyncIterator[RouterHarness]:
    await _set_up_desk(nc)
    harness = RouterHarness(nats_server, nc)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


def _router(desk: RouterHarness) -> OrderRouterService:
    assert desk.router is not None
    return desk.router


async def _stored(nc: Client, client_order_id: str) -> orders_pb2.OrderAck:
    bucket = await nc.jetstream().key_value(subjects.KV_ORDER_IDS)
    entry = await bucket.get(subjects.order_id_key("alpha", client_order_id))
    return codec.decode(entry.value or b"", orders_pb2.OrderAck)


@pytest.mark.parametrize("land", [True, False], ids=["puback_lost", "publish_lost"])
async def test_a_route_retried_through_a_lost_answer_is_accepted_once_and_routed_once(
    desk: RouterHarness, nc: Client, land: bool
) -> None:
    router = _router(desk)
    lost = LostAcks(_js(router), VENUE_SUBJECT, land=land)
    with capture_logs() as logs:
        ack = await _submit(nc, "lost-1")
    assert lost.lost == 1 and any(e["event"] == "retry" for e in logs)
    # the retry's PubAck says duplicate when the first attempt landed: that was our own, so not a repeat
    assert ack.accepted and not ack.duplicate and ack.order_id == order_id_for("alpha", "lost-1")
    assert [o.new_order.client_order_id for o in await _routed(nc)] == ["lost-1"]
    assert router.account("alpha").buying_power == 100000 - 10 * 100  # reserved once, kept
    await router._finish_storing()
    assert await _stored(nc, "lost-1") == ack  # the first ack, stored: a repeat gets it
    again = await _submit(nc, "lost-1")
    assert again.accepted and again.duplicate and again.ts_ns == ack.ts_ns
    assert len(await _routed(nc)) == 1


async def test_a_retried_duplicate_whose_ack_another_attempt_stored_is_a_repeat(
    desk: RouterHarness, nc: Client
) -> None:
    router = _router(desk)
    first = await _submit(nc, "twice-1")
    await router._finish_storing()
    key = subjects.order_id_key("alpha", "twice-1")
    router.order_ids.forget(key)  # as a replica that has not seen the other's record yet
    # the PubAck a retried route of the same order gets: duplicate (another attempt routed it)
    published = await retry.publish(nc.jetstream(), VENUE_SUBJECT, b"x", msg_id=first.order_id)
    assert published.ack.duplicate
    retried = retry.Published(published.ack, attempts=2)
    assert await router._routed_before(retried, key)  # stored by the other attempt: routed before
    once = retry.Published(published.ack, attempts=1)
    assert await router._routed_before(once, key)
    # no stored ack and a duplicate after a retry: our own attempt landed
    bucket = await nc.jetstream().key_value(subjects.KV_ORDER_IDS)
    await bucket.delete(key)
    router.order_ids.forget(key)
    assert not await router._routed_before(retried, key)


async def test_the_router_rides_out_a_server_restart_in_the_middle_of_a_route(
    nats_server: NatsServer, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(router_service, "ROUTE_DEADLINE", BOUND)  # the restart takes longer than an election
    await _set_up_desk(nc)
    restarted = asyncio.Event()

    class Restarting(OrderRouterService):
        """The server is stopped as the first order is routed, and started again a moment later."""

        async def _route(self, routed: orders_pb2.RoutedOrder, msg_id: str) -> retry.Published:
            if routed.new_order.client_order_id == "restart-1" and not restarted.is_set():
                await asyncio.to_thread(nats_server.stop)

                async def start_again() -> None:
                    await asyncio.sleep(1.0)  # a few attempts fail meanwhile
                    await asyncio.to_thread(nats_server.start)  # same port, same store
                    restarted.set()

                asyncio.get_running_loop().create_task(start_again())
            return await super()._route(routed, msg_id)

    harness = RouterHarness(nats_server, nc)
    harness.router = router = Restarting(harness.settings)
    harness.service = await run_in_process(router_service.NAME, harness.settings, router.start)
    try:
        with capture_logs() as logs:
            ack = await _submit(nc, "restart-1")
        assert restarted.is_set() and any(e["event"] == "retry" for e in logs)
        assert ack.accepted and not ack.duplicate
        assert not harness.service.task.done()  # the service did not end
        after = await _submit(nc, "restart-2")
        assert after.accepted and not after.duplicate
        again = await _submit(nc, "restart-1")
        assert again.accepted and again.duplicate and again.order_id == ack.order_id
        routed = [o.new_order.client_order_id for o in await _routed(nc)]
        assert routed == ["restart-1", "restart-2"]  # each routed once
        assert router.account("alpha").buying_power == 100000 - 2 * 10 * 100
    finally:
        await harness.stop()


async def test_a_retried_ack_store_that_landed_is_recognised_as_our_own(desk: RouterHarness, nc: Client) -> None:
    router = _router(desk)
    lost = LostAcks(_js(router), f"$KV.{subjects.KV_ORDER_IDS}.", land=True)
    with capture_logs() as logs:
        ack = await _submit(nc, "store-1")
        await router._finish_storing()
    events = [e["event"] for e in logs]
    assert lost.lost == 1 and "order.ack_stored_by_retry" in events
    assert "order.routed_twice" not in events and "order.ack_not_stored" not in events
    assert await _stored(nc, "store-1") == ack


async def test_the_venue_is_believed_through_an_election_and_a_404_within_the_grace(
    desk: RouterHarness, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = _router(desk)
    venue = router.venue
    assert venue is not None
    assert (await _submit(nc, "v-1")).accepted and venue.found
    real = venue.js
    venue.js = FailingLookups(real)  # type: ignore[assignment]
    venue._served_until = float("-inf")  # the TTL has passed
    checks = venue.checks
    with capture_logs() as logs:
        assert (await _submit(nc, "v-2")).accepted  # not waiting for the lookup, which fails
        await poll(lambda: venue.checks > checks and venue._checking is None, "the background lookup", timeout=BOUND)
    assert venue.found and "venue.check_failed" in [e["event"] for e in logs]

    venue.js = real
    await nc.jetstream().delete_consumer(subjects.STREAM_ORDERS, gateway_durable("sim"))
    venue._served_until = float("-inf")
    with capture_logs() as logs:
        assert (await _submit(nc, "v-3")).accepted  # a 404 just after a fail-over: still served
        await poll(lambda: venue._missing_since is not None, "the 404", timeout=BOUND)
    assert "venue.consumer_missing" in [e["event"] for e in logs]

    monkeypatch.setattr(router_venue, "MISSING_GRACE", 0.0)  # missing for longer than the grace
    venue._served_until = float("-inf")
    assert (await _submit(nc, "v-4")).accepted
    await poll(lambda: not venue.found, "the venue unserved", timeout=BOUND)
    refused = await _submit(nc, "v-5")
    assert (refused.accepted, refused.reason) == (False, orders_pb2.REJECT_REASON_VENUE_UNAVAILABLE)
    await serve_venue(nc)  # the gateway's consumer again: served again, never refused for good
    assert (await _submit(nc, "v-6")).accepted and venue.found
    routed = [o.new_order.client_order_id for o in await _routed(nc)]
    assert routed == ["v-1", "v-2", "v-3", "v-4", "v-6"]


async def test_a_halt_and_a_resume_ride_out_a_lost_answer(desk: RouterHarness, nc: Client) -> None:
    router = _router(desk)
    js = _js(router)
    lost = LostAcks(js, f"$KV.{subjects.KV_RISK}.", land=False)
    halted = await desk.risk(subjects.RISK_HALT)
    assert lost.lost == 1 and halted.global_halted
    lost.undo()
    lost = LostAcks(js, f"$KV.{subjects.KV_RISK}.", land=True)
    resumed = await desk.risk(subjects.RISK_RESUME)
    assert lost.lost == 1 and not resumed.global_halted
    lost.undo()
    assert (await _submit(nc, "after-resume-1")).accepted
    status = await desk.risk(subjects.RISK_STATUS)
    assert not status.global_halted
    info = await nc.jetstream().stream_info(f"KV_{subjects.KV_RISK}")
    assert info.state.last_seq == 2  # the halt once (its lost attempt did not land), the marker once (deduplicated)
