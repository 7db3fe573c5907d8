"""The order router against a real nats-server with the advanced orders: a replace is checked with its
new numbers and refused for an unknown or final order; a trailing stop and a bracket are routed whole."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from desk.bus.testing import NatsServer
from desk.core.ids import order_id_for
from desk.v1 import common_pb2, executions_pb2, orders_pb2
from tests.integration.test_order_router import RouterHarness, _publish_execution, _routed, _set_up_desk

pytestmark = pytest.mark.integration

LIMIT = common_pb2.ORDER_TYPE_LIMIT
GTC = common_pb2.TIME_IN_FORCE_GTC


@pytest.fixture
async def desk(nats_server: NatsServer, nc: Client) -> AsyncIterator[RouterHarness]:
    await _set_up_desk(nc)
    harness = RouterHarness(nats_server, nc)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


async def test_a_replace_is_routed_checked_with_its_new_numbers_and_refused_when_it_cannot_be(
    desk: RouterHarness, nc: Client
) -> None:
    # 900 of the strategy's 100000 in one order is fine; the desk's default max order notional is 25000
    first = await desk.submit(client_order_id="bid-1", type=LIMIT, limit_price="90", qty="10", time_in_force=GTC)
    assert first.accepted
    unknown = await desk.submit(client_order_id="bid-2", type=LIMIT, limit_price="95", qty="10", replaces="nope")
    assert (unknown.accepted, unknown.reason) == (False, orders_pb2.REJECT_REASON_UNKNOWN_ORDER)
    assert "no order nope" in unknown.message
    too_big = await desk.submit(client_order_id="bid-3", type=LIMIT, limit_price="99", qty="300", replaces="bid-1")
    assert (too_big.accepted, too_big.reason) == (False, orders_pb2.REJECT_REASON_MAX_ORDER_NOTIONAL)
    moved = await desk.submit(client_order_id="bid-4", type=LIMIT, limit_price="95", qty="12", replaces="bid-1")
    assert moved.accepted, moved.message

    routed = await _routed(nc)
    assert [r.new_order.client_order_id for r in routed] == ["bid-1", "bid-4"]
    assert (routed[1].new_order.replaces, routed[1].new_order.qty) == ("bid-1", "12")

    await _publish_execution(
        nc,
        executions_pb2.ExecutionReport(
            execution_id="bid-1-closed",
            order_id=order_id_for("alpha", "bid-1"),
            client_order_id="bid-1",
            strategy_id="alpha",
            symbol="AAPL",
            side=common_pb2.SIDE_BUY,
            exec_type=executions_pb2.EXEC_TYPE_CANCELED,
            status=executions_pb2.ORDER_STATUS_CANCELED,
            venue="sim",
            text="replaced by bid-4",
        ),
    )
    assert desk.router is not None
    await desk.router.wait_for_execution("bid-1-closed")
    closed = await desk.submit(client_order_id="bid-5", type=LIMIT, limit_price="96", qty="10", replaces="bid-1")
    assert (closed.accepted, closed.reason) == (False, orders_pb2.REJECT_REASON_ORDER_CLOSED)


async def test_a_trailing_stop_and_a_bracket_are_routed_with_their_fields(desk: RouterHarness, nc: Client) -> None:
    bracket = await desk.submit(
        client_order_id="entry",
        time_in_force=GTC,
        order_class=orders_pb2.ORDER_CLASS_BRACKET,
        take_profit_limit_price="110",
        stop_loss_stop_price="95",
    )
    assert bracket.accepted, bracket.message
    bad = await desk.submit(client_order_id="trail-bad", type=common_pb2.ORDER_TYPE_TRAILING_STOP)
    assert (bad.accepted, bad.reason) == (False, orders_pb2.REJECT_REASON_INVALID_FIELD)
    assert "exactly one of trail_price and trail_percent" in bad.message
    routed = await _routed(nc)
    assert len(routed) == 1
    assert (routed[0].new_order.take_profit_limit_price, routed[0].new_order.stop_loss_stop_price) == ("110", "95")
