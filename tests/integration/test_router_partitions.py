"""Several order routers, strategies partitioned between them (services/order_router/partitions.py),
against a real nats-server: limits are exact with any number of replicas, a replica's partitions move
to the others when it dies, and one router alone takes them all at once."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError

from desk.bus import lease as leases
from desk.bus import subjects
from desk.bus.request import request
from desk.bus.testing import InProcessService, NatsServer, run_in_process
from desk.v1 import common_pb2, marketdata_pb2, orders_pb2, strategy_pb2
from services.order_router.partitions import partition_key
from services.order_router.service import NAME, OrderRouterService
from services.order_router.settings import Settings
from tests.cluster.instances import ServiceProcess
from tests.integration.test_order_router import _put, _routed, serve_venue
from tests.support import poll

pytestmark = pytest.mark.integration

P = 8  # ROUTER_PARTITIONS' default


async def _strategy(nc: Client, strategy_id: str, **limits: Any) -> None:
    spec = strategy_pb2.StrategySpec(
        strategy_id=strategy_id,
        member_id=f"m-{strategy_id}",
        initial_cash="100000",
        risk=strategy_pb2.RiskLimits(**limits),
    )
    await _put(nc, subjects.KV_STRATEGIES, strategy_id, spec)


async def _market(nc: Client) -> None:
    await _put(nc, subjects.KV_PRICES, "AAPL", marketdata_pb2.Trade(symbol="AAPL", price="100", size="1", ts_ns=1))
    await serve_venue(nc)


def _order(strategy_id: str, client_order_id: str, qty: str = "1") -> orders_pb2.OrderRequest:
    return orders_pb2.OrderRequest(
        strategy_id=strategy_id,
        client_order_id=client_order_id,
        symbol="AAPL",
        side=common_pb2.SIDE_BUY,
        type=common_pb2.ORDER_TYPE_MARKET,
        time_in_force=common_pb2.TIME_IN_FORCE_DAY,
        qty=qty,
    )


async def _submit(nc: Client, order: orders_pb2.OrderRequest, timeout: float = 10.0) -> orders_pb2.OrderAck:
    return await request(nc, subjects.order_submit(order.strategy_id), order, orders_pb2.OrderAck, timeout=timeout)


class Routers:
    """Router replicas in this process; ``stop`` of each the way SIGTERM would."""

    def __init__(self, nats_server: NatsServer) -> None:
        self.settings = Settings(nats_url=nats_server.url)
        self.running: list[tuple[OrderRouterService, InProcessService]] = []

    async def start(self) -> OrderRouterService:
        router = OrderRouterService(self.settings)
        self.running.append((router, await run_in_process(NAME, self.settings, router.start)))
        return router

    async def stop(self, router: OrderRouterService) -> None:
        for entry in list(self.running):
            if entry[0] is router:
                self.running.remove(entry)
                assert await entry[1].stop() == 0

    async def stop_all(self) -> None:
        for router, _ in list(self.running):
            await self.stop(router)

    @property
    def routers(self) -> list[OrderRouterService]:
        return [router for router, _ in self.running]


@pytest.fixture
async def routers(nats_server: NatsServer, nc: Client) -> AsyncIterator[Routers]:
    await _market(nc)
    replicas = Routers(nats_server)
    try:
        yield replicas
    finally:
        await replicas.stop_all()


def _balanced(routers: Sequence[OrderRouterService], replicas: int) -> bool:
    """Every partition held by exactly one of ``routers``, each holding its share of ``replicas``."""
    held = [p for router in routers for p in router.partitions.holds()]
    share = (P // replicas, math.ceil(P / replicas))
    return sorted(held) == list(range(P)) and all(
        share[0] <= len(router.partitions.holds()) <= share[1] for router in routers
    )


async def _wait_balanced(routers: Sequence[OrderRouterService], replicas: int | None = None) -> None:
    await poll(lambda: _balanced(routers, replicas or len(routers)), f"{P} partitions shared", timeout=30, every=0.05)


def _owner(routers: Sequence[OrderRouterService], strategy_id: str) -> OrderRouterService:
    owners = [router for router in routers if router.partitions.owns(strategy_id)]
    assert len(owners) == 1, f"{strategy_id}: {len(owners)} owners"
    return owners[0]


async def test_one_router_takes_every_partition_at_start(routers: Routers, nc: Client) -> None:
    began = time.monotonic()
    router = await routers.start()
    started = time.monotonic() - began

    assert router.partitions.holds() == list(range(P))  # at once: no failover wait
    kv = await nc.jetstream().key_value(subjects.KV_LEASES)
    holder, _ = await leases.holder_of(kv, partition_key(0))
    assert holder is not None and holder.service == NAME
    await _strategy(nc, "alpha")
    await router.wait_until(lambda: "alpha" in router.strategies)
    ack = await _submit(nc, _order("alpha", "first"))
    assert ack.accepted, ack.message
    print(f"\none router: started and holding {P} partitions in {started * 1000:.0f} ms")


@pytest.mark.parametrize("replicas", [2, 3])
async def test_a_rate_limit_is_exact_across_replicas(routers: Routers, nc: Client, replicas: int) -> None:
    await _strategy(nc, "alpha", max_orders_per_minute=20)
    for _ in range(replicas):
        await routers.start()
    await _wait_balanced(routers.routers)
    for router in routers.routers:
        await router.wait_until(lambda r=router: "alpha" in r.strategies)  # type: ignore[misc]
    owner = _owner(routers.routers, "alpha")

    acks = await asyncio.gather(*(_submit(nc, _order("alpha", f"r-{n}")) for n in range(60)))

    accepted = [ack for ack in acks if ack.accepted]
    assert len(accepted) == 20
    assert {ack.reason for ack in acks if not ack.accepted} == {orders_pb2.REJECT_REASON_RATE_LIMIT}
    assert len(await _routed(nc)) == 20

    # The owner hands its partitions over (a clean stop); the next owner rebuilds the window from
    # DESK_ORDER_IDS: still 20 in the last minute, so every further order is refused.
    await routers.stop(owner)
    await _wait_balanced(routers.routers, replicas - 1)
    heir = _owner(routers.routers, "alpha")
    await heir.wait_until(lambda: len([k for k in heir.order_ids if k.startswith("alpha.")]) >= 20)
    more = await asyncio.gather(*(_submit(nc, _order("alpha", f"after-{n}")) for n in range(10)))
    assert {ack.reason for ack in more} == {orders_pb2.REJECT_REASON_RATE_LIMIT}
    assert len(await _routed(nc)) == 20


async def test_a_position_notional_limit_is_exact_across_replicas(routers: Routers, nc: Client) -> None:
    # 5,000 of AAPL at 100: 50 one-share orders, whichever replica they are sent through.
    await _strategy(nc, "alpha", max_position_notional="5000", max_orders_per_minute=1000)
    for _ in range(3):
        await routers.start()
    await _wait_balanced(routers.routers)
    for router in routers.routers:
        await router.wait_until(lambda r=router: "alpha" in r.strategies)  # type: ignore[misc]

    acks = await asyncio.gather(*(_submit(nc, _order("alpha", f"p-{n}")) for n in range(60)))

    assert sum(ack.accepted for ack in acks) == 50
    assert {ack.reason for ack in acks if not ack.accepted} == {orders_pb2.REJECT_REASON_MAX_POSITION_NOTIONAL}
    assert len(await _routed(nc)) == 50


async def test_orders_and_halts_reach_every_strategy_with_two_replicas(routers: Routers, nc: Client) -> None:
    strategies = [f"s{n}" for n in range(8)]
    for strategy_id in strategies:
        await _strategy(nc, strategy_id)
    first, second = await routers.start(), await routers.start()
    await _wait_balanced([first, second])
    for router in (first, second):
        await router.wait_until(lambda r=router: all(s in r.strategies for s in strategies))  # type: ignore[misc]
    assert {_owner([first, second], s) for s in strategies} == {first, second}  # both answer some

    acks = await asyncio.gather(*(_submit(nc, _order(s, "one")) for s in strategies))

    assert all(ack.accepted for ack in acks), [ack.message for ack in acks]
    assert len(await _routed(nc)) == len(strategies)


async def test_a_killed_router_s_partitions_move_and_orders_resume(
    routers: Routers, nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    strategies = [f"s{n}" for n in range(8)]
    for strategy_id in strategies:
        await _strategy(nc, strategy_id, max_orders_per_minute=1000)
    survivor = await routers.start()
    doomed = ServiceProcess("order_router", "doomed", nats_server.url, tmp_path / "logs")
    await doomed.start()
    try:
        await poll(lambda: len(survivor.partitions.holds()) == P // 2, "the second router takes its half", 60, 0.05)
        await survivor.wait_until(lambda: all(s in survivor.strategies for s in strategies))
        moving = [s for s in strategies if not survivor.partitions.owns(s)]
        assert moving, "the killed router answers some strategy"
        load = Load(nc, moving)
        runner = asyncio.create_task(load.run())
        await poll(lambda: load.accepted_count() >= 20, "orders accepted through both routers", 30, 0.05)

        await doomed.kill()
        killed = time.monotonic()
        await poll(lambda: survivor.partitions.holds() == list(range(P)), "the survivor holds every partition", 30)
        took = time.monotonic() - killed
        resumed = await poll(lambda: load.first_accepted_after(killed), "an order accepted after the kill", 30)
        before = load.accepted_count()
        await poll(lambda: load.accepted_count() >= before + 20, "orders accepted after the takeover", 30, 0.05)
        load.stop.set()
        await asyncio.wait_for(runner, 30)
    finally:
        await doomed.stop()

    routed = await _routed(nc)
    routed_ids = [r.order_id for r in routed]
    assert len(routed_ids) == len(set(routed_ids)), "an order routed twice"
    assert set(load.accepted.values()) <= set(routed_ids), "an accepted order never routed"
    assert len(routed_ids) == len(load.accepted)  # every routed order was answered accepted once
    print(
        f"\nrouter kill -9: partitions taken over {took:.2f} s after the kill, first order accepted "
        f"{resumed - killed:.2f} s after it; {len(load.accepted)} accepted, {load.resent} re-sent, 0 lost, 0 doubled"
    )


class Load:
    """One order at a time per strategy, re-sent with the same client order id when unanswered (as
    the SDK does); every accepted order's id, by client order id."""

    TIMEOUT = 1.0

    def __init__(self, nc: Client, strategies: list[str]) -> None:
        self.nc, self.strategies = nc, strategies
        self.accepted: dict[str, str] = {}
        self.accepted_at: list[float] = []
        self.resent = 0
        self.stop = asyncio.Event()

    def accepted_count(self) -> int:
        return len(self.accepted)

    def first_accepted_after(self, moment: float) -> float | None:
        return next((t for t in self.accepted_at if t > moment), None)

    async def run(self) -> None:
        await asyncio.gather(*(self._one(s) for s in self.strategies))

    async def _one(self, strategy_id: str) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            order = _order(strategy_id, f"k-{n}")
            while True:
                try:
                    ack = await _submit(self.nc, order, timeout=self.TIMEOUT)
                except NatsTimeoutError:
                    self.resent += 1
                    continue  # the same client order id again
                break
            assert ack.accepted, ack.message
            self.accepted[f"{strategy_id}.{order.client_order_id}"] = ack.order_id
            self.accepted_at.append(time.monotonic())


async def test_a_router_joining_under_load_takes_its_share_and_no_order_is_lost(routers: Routers, nc: Client) -> None:
    strategies = [f"s{n}" for n in range(8)]
    for strategy_id in strategies:
        await _strategy(nc, strategy_id, max_orders_per_minute=1000)
    first = await routers.start()
    await first.wait_until(lambda: all(s in first.strategies for s in strategies))
    load = Load(nc, strategies)
    runner = asyncio.create_task(load.run())
    await poll(lambda: load.accepted_count() >= 40, "orders accepted through one router", 30, 0.05)

    joined = time.monotonic()
    second = await routers.start()
    await _wait_balanced([first, second])
    shared = time.monotonic() - joined
    before = load.accepted_count()
    await poll(lambda: load.accepted_count() >= before + 40, "orders accepted through both", 30, 0.05)
    load.stop.set()
    await asyncio.wait_for(runner, 30)

    routed_ids = [r.order_id for r in await _routed(nc)]
    assert len(routed_ids) == len(set(routed_ids)) == len(load.accepted)  # none lost, none doubled
    assert set(load.accepted.values()) == set(routed_ids)
    print(
        f"\nrouter joining: partitions shared {shared:.2f} s after its start began; "
        f"{len(load.accepted)} accepted, {load.resent} re-sent after a {Load.TIMEOUT:g} s timeout"
    )


async def test_one_lease_attempt_takes_a_free_key_refuses_a_held_one_and_knows_its_own(nc: Client) -> None:
    kv, ttl = await leases.open_bucket(nc.jetstream(), 5.0)

    def holder(instance: str) -> leases.Holder:
        return leases.Holder(service=NAME, instance=instance, host="test", pid=1, since_ns=time.time_ns())

    mine = holder("a")
    assert await leases.Lease(kv, "router-p0", ttl, mine).try_acquire()
    assert not await leases.Lease(kv, "router-p0", ttl, holder("b")).try_acquire()  # held: refused at once
    # The same holder (same term) asking again, as a router does after losing a renewal to an outage:
    # the key still holds its own value, so it is its own again without waiting for the expiry.
    again = leases.Lease(kv, "router-p0", ttl, mine)
    assert await again.try_acquire()
    assert again.revision == (await kv.get("router-p0")).revision
