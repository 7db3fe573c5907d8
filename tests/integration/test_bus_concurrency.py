"""``DeskService.add_endpoint(concurrency=n)`` against a real nats-server: requests in flight at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from nats.aio.client import Client

from desk.bus.errors import DeskError
from desk.bus.lifecycle import ServiceRuntime
from desk.bus.micro import DeskService, add_service
from desk.bus.request import request
from desk.bus.settings import BusSettings
from desk.bus.testing import InProcessService, NatsServer, run_in_process
from desk.v1 import ledger_pb2

pytestmark = pytest.mark.integration

TIMEOUT = 5.0


@dataclass
class Holding:
    """A service whose ``hold`` endpoint keeps each request until the test opens its gate."""

    concurrency: int
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    entered: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    current: int = 0
    most: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    desk_service: DeskService | None = None

    def gate(self, symbol: str) -> asyncio.Event:
        return self.gates.setdefault(symbol, asyncio.Event())

    async def start(self, runtime: ServiceRuntime) -> None:
        svc = await add_service(runtime, "holding", "0.1.0", "holds requests until told")
        self.desk_service = svc

        async def hold(query: ledger_pb2.LedgerQuery, subject: str) -> ledger_pb2.PositionsReply:
            if query.symbol == "BAD":
                raise DeskError("UNKNOWN_SYMBOL", "no such symbol BAD", status=404)
            self.current += 1
            self.most = max(self.most, self.current)
            self.entered.append(query.symbol)
            async with self.changed:
                self.changed.notify_all()
            try:
                await self.gate(query.symbol).wait()
            except asyncio.CancelledError:
                self.cancelled.append(query.symbol)
                raise
            finally:
                self.current -= 1
            return ledger_pb2.PositionsReply(positions=[ledger_pb2.Position(symbol=query.symbol)])

        async def probe(query: ledger_pb2.LedgerQuery, subject: str) -> ledger_pb2.PositionsReply:
            return ledger_pb2.PositionsReply(positions=[ledger_pb2.Position(symbol="probe")])

        await svc.add_endpoint("hold", "test.hold", ledger_pb2.LedgerQuery, hold, concurrency=self.concurrency)
        await svc.add_endpoint("probe", "test.probe", ledger_pb2.LedgerQuery, probe)

    async def wait_entered(self, count: int) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: len(self.entered) >= count), TIMEOUT)


async def _ask(nc: Client, symbol: str, subject: str = "test.hold") -> str:
    reply = await request(
        nc, subject, ledger_pb2.LedgerQuery(symbol=symbol), ledger_pb2.PositionsReply, timeout=TIMEOUT
    )
    return reply.positions[0].symbol


@pytest.fixture
async def running(
    nats_server: NatsServer, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Holding, InProcessService]]:
    holding = Holding(concurrency=request.param)
    svc = await run_in_process("holding", BusSettings(nats_url=nats_server.url), holding.start)
    try:
        yield holding, svc
    finally:
        for gate in holding.gates.values():
            gate.set()
        if not svc.task.done():
            assert await svc.stop() == 0


@pytest.mark.parametrize("running", [2], indirect=True)
async def test_with_concurrency_two_requests_are_handled_at_once(
    running: tuple[Holding, InProcessService], nc: Client
) -> None:
    holding, _ = running
    first = asyncio.create_task(_ask(nc, "a"))
    second = asyncio.create_task(_ask(nc, "b"))
    await holding.wait_entered(2)  # neither is released yet: both handlers are inside at once
    assert holding.most == 2
    assert holding.desk_service is not None and holding.desk_service.in_flight == 2

    holding.gate("b").set()  # the later request may finish first
    assert await asyncio.wait_for(second, TIMEOUT) == "b"
    assert not first.done() or first.result() == "a"
    holding.gate("a").set()
    assert await asyncio.wait_for(first, TIMEOUT) == "a"

    # Refusals are answered and counted as without concurrency.
    with pytest.raises(DeskError) as refused:
        await _ask(nc, "BAD")
    assert (refused.value.code, refused.value.status) == ("UNKNOWN_SYMBOL", 404)
    stats = await nc.request("$SRV.STATS.holding", b"", timeout=TIMEOUT)
    assert b'"UNKNOWN_SYMBOL": 1' in stats.data


@pytest.mark.parametrize("running", [1], indirect=True)
async def test_by_default_one_request_is_handled_at_a_time(
    running: tuple[Holding, InProcessService], nc: Client
) -> None:
    holding, _ = running
    first = asyncio.create_task(_ask(nc, "a"))
    await holding.wait_entered(1)
    second = asyncio.create_task(_ask(nc, "b"))
    # The probe is sent after "b" on the same connection: once it is answered, the service has
    # received "b", and with concurrency "b" would already be inside its handler.
    assert await _ask(nc, "", subject="test.probe") == "probe"
    assert holding.entered == ["a"] and holding.most == 1 and not second.done()

    holding.gate("a").set()
    assert await asyncio.wait_for(first, TIMEOUT) == "a"
    await holding.wait_entered(2)
    holding.gate("b").set()
    assert await asyncio.wait_for(second, TIMEOUT) == "b"
    assert holding.entered == ["a", "b"] and holding.most == 1


@pytest.mark.parametrize("running", [4], indirect=True)
async def test_shutdown_lets_requests_in_flight_answer_then_cancels_the_late_ones(
    running: tuple[Holding, InProcessService], nc: Client
) -> None:
    holding, svc = running
    assert holding.desk_service is not None
    answered = asyncio.create_task(_ask(nc, "finishes"))
    await holding.wait_entered(1)
    stopping = asyncio.create_task(svc.stop())
    # Shutdown has stopped taking requests and waits for the one in flight; let it finish.
    holding.gate("finishes").set()
    assert await asyncio.wait_for(answered, TIMEOUT) == "finishes"
    assert await asyncio.wait_for(stopping, TIMEOUT) == 0
    assert holding.cancelled == []


@pytest.mark.parametrize("running", [4], indirect=True)
async def test_shutdown_cancels_a_request_that_outlives_the_drain_timeout(
    running: tuple[Holding, InProcessService], nc: Client
) -> None:
    holding, svc = running
    assert holding.desk_service is not None
    holding.desk_service.drain_timeout = 0.2
    stuck = asyncio.create_task(_ask(nc, "stuck"))
    await holding.wait_entered(1)
    assert await asyncio.wait_for(svc.stop(), TIMEOUT) == 0
    assert holding.cancelled == ["stuck"] and holding.desk_service.in_flight == 0
    assert not stuck.done()  # cancelled handlers answer nothing; the caller would time out
    stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stuck


def test_concurrency_below_one_is_refused() -> None:
    async def main() -> None:
        svc = DeskService(service=None)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="at least 1"):
            await svc.add_endpoint("x", "x", ledger_pb2.LedgerQuery, lambda q, s: None, concurrency=0)  # type: ignore[arg-type,return-value]

    asyncio.run(main())
