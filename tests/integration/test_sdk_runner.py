"""The SDK runner against a real nats-server, a fake order router and bars published by the test."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from desk.bus import codec, subjects
from desk.bus.testing import NatsServer
from desk.core.ids import order_id_for
from desk.v1 import common_pb2, executions_pb2, marketdata_pb2, orders_pb2, strategy_pb2
from strategy_sdk import Strategy, run_strategy

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
WAIT = 10.0


class FakeRouter:
    """Answers every OrderRequest with an accepted OrderAck (optionally ignoring the first few) and records it."""

    def __init__(self, nc: Client, ignore_first: int = 0) -> None:
        self.nc = nc
        self.requests: list[orders_pb2.OrderRequest] = []
        self.ignore = ignore_first
        self.changed = asyncio.Event()

    async def start(self) -> FakeRouter:
        await self.nc.subscribe(subjects.ORDER_SUBMIT_ALL, cb=self.handle)
        await self.nc.flush()
        return self

    async def handle(self, msg: Msg) -> None:
        order = codec.decode(msg.data, orders_pb2.OrderRequest, msg.headers)
        self.requests.append(order)
        self.changed.set()
        if self.ignore > 0:
            self.ignore -= 1
            return
        ack = orders_pb2.OrderAck(
            strategy_id=order.strategy_id,
            client_order_id=order.client_order_id,
            accepted=True,
            order_id=order_id_for(order.strategy_id, order.client_order_id),
        )
        data, headers = codec.encode(ack)
        await self.nc.publish(msg.reply, data, headers=headers)

    async def wait_for(self, count: int) -> list[orders_pb2.OrderRequest]:
        async def until() -> None:
            while len(self.requests) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), WAIT)
        return self.requests


class Heartbeats:
    """Collects heartbeats of one strategy; ``wait_for(predicate)`` returns the first matching one."""

    def __init__(self) -> None:
        self.beats: list[strategy_pb2.Heartbeat] = []
        self.changed = asyncio.Event()

    async def handle(self, msg: Msg) -> None:
        self.beats.append(codec.decode(msg.data, strategy_pb2.Heartbeat, msg.headers))
        self.changed.set()

    async def wait_for(self, predicate: Callable[[strategy_pb2.Heartbeat], bool]) -> strategy_pb2.Heartbeat:
        async def until() -> strategy_pb2.Heartbeat:
            while True:
                for beat in self.beats:
                    if predicate(beat):
                        return beat
                self.changed.clear()
                await self.changed.wait()

        return await asyncio.wait_for(until(), WAIT)


async def publish_bar(nc: Client, symbol: str, close: str) -> None:
    bar = marketdata_pb2.Bar(
        symbol=symbol,
        open=close,
        high=close,
        low=close,
        close=close,
        volume="100",
        start_ns=1_767_000_000_000_000_000,
        interval_ns=1_000_000_000,
        source="test",
    )
    data, headers = codec.encode(bar)
    await nc.publish(subjects.md_bar(symbol), data, headers=headers)


def write_strategy(folder: Path, source: str, config: str = '{"user_id": "tester"}') -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "strategy.py").write_text(textwrap.dedent(source))
    (folder / "config.json").write_text(config)
    return folder


class Running:
    """A strategy run in-process by ``run_strategy`` with its own stop event."""

    def __init__(self, task: asyncio.Task[int], stop: asyncio.Event, strategy: list[Strategy]) -> None:
        self.task, self.stop_event, self._strategy = task, stop, strategy

    @property
    def strategy(self) -> Any:
        return self._strategy[0]

    async def stop(self) -> int:
        self.stop_event.set()
        return await asyncio.wait_for(self.task, WAIT)


@pytest.fixture
async def start_strategy(nats_server: NatsServer) -> AsyncIterator[Callable[..., Any]]:
    runs: list[Running] = []

    async def start(folder: Path, hb: Heartbeats, nc: Client, **kwargs: Any) -> Running:
        sid = kwargs.pop("strategy_id", folder.name)
        await nc.subscribe(subjects.heartbeat(sid), cb=hb.handle)
        await nc.flush()
        stop = asyncio.Event()
        captured: list[Strategy] = []
        task = asyncio.create_task(
            run_strategy(
                folder,
                nats_server.url,
                stop,
                strategy_id=sid,
                heartbeat_interval=0.2,
                ledger_timeout=0.3,
                symbols=["AAPL"],
                on_ready=captured.append,
                **kwargs,
            )
        )
        running = Running(task, stop, captured)
        runs.append(running)
        await hb.wait_for(lambda beat: True)  # subscribed and on_start done
        return running

    yield start
    for running in runs:
        if not running.task.done():
            await running.stop()


BUYER = """
    import asyncio
    from strategy_sdk import Strategy

    class Buyer(Strategy):
        def on_start(self):
            self.bars = []
            self.fills = []
            self.updates = []
            self.results = []
            self.filled = asyncio.Event()
            self.answered = asyncio.Event()
            self.stopped = False

        async def on_bar(self, bar):
            self.bars.append(bar)
            if len(self.bars) == 1:
                self.results.append(await self.buy(bar.symbol, 5))
                self.answered.set()

        def on_fill(self, fill):
            self.fills.append(fill)

        async def on_order_update(self, update):
            self.updates.append(update)
            if update.status == "filled":
                self.filled.set()

        def on_stop(self):
            self.stopped = True
"""


async def test_runner_delivers_bars_sends_a_well_formed_order_books_fills_and_heartbeats(
    nc: Client, tmp_path: Path, start_strategy: Callable[..., Any]
) -> None:
    router = await FakeRouter(nc).start()
    hb = Heartbeats()
    run = await start_strategy(write_strategy(tmp_path / "buyer-one", BUYER), hb, nc)

    await publish_bar(nc, "AAPL", "101.25")
    (order,) = await router.wait_for(1)
    assert (order.strategy_id, order.symbol, order.side, order.type, order.time_in_force, order.qty) == (
        "buyer-one",
        "AAPL",
        common_pb2.SIDE_BUY,
        common_pb2.ORDER_TYPE_MARKET,
        common_pb2.TIME_IN_FORCE_DAY,
        "5",
    )
    assert re.fullmatch(r"buyer-one-[0-9a-f]{24}", order.client_order_id)
    assert order.limit_price == order.stop_price == order.notional == ""

    strategy = run.strategy
    assert strategy.bars[0].close == Decimal("101.25")
    await asyncio.wait_for(strategy.answered.wait(), WAIT)
    assert strategy.results[0].accepted and strategy.results[0].client_order_id == order.client_order_id

    fill = executions_pb2.ExecutionReport(
        execution_id="exec-1",
        order_id=strategy.results[0].order_id,
        client_order_id=order.client_order_id,
        strategy_id="buyer-one",
        exec_type=executions_pb2.EXEC_TYPE_FILL,
        status=executions_pb2.ORDER_STATUS_FILLED,
        symbol="AAPL",
        side=common_pb2.SIDE_BUY,
        order_qty="5",
        fill_qty="5",
        fill_price="101.30",
        cum_qty="5",
        avg_price="101.30",
        leaves_qty="0",
        fee="0.05",
        venue="sim",
    )
    data, headers = codec.encode(fill)
    await nc.publish(subjects.execution("buyer-one"), data, headers=headers)
    await nc.publish(subjects.execution("buyer-one"), data, headers=headers)  # a republished report counts once
    await asyncio.wait_for(strategy.filled.wait(), WAIT)
    assert strategy.position("AAPL") == Decimal(5)
    assert strategy.cash == Decimal(100000) - Decimal("506.50") - Decimal("0.05")
    assert [(f.qty, f.price) for f in strategy.fills] == [(Decimal(5), Decimal("101.30"))]
    assert strategy.open_orders == {}

    beat = await hb.wait_for(lambda b: b.bars_seen >= 1 and b.orders_sent == 1)
    assert (beat.strategy_id, beat.errors, beat.sdk_version) == ("buyer-one", 0, "0.1.0")

    assert await run.stop() == 0
    assert strategy.stopped


FRAGILE = """
    from strategy_sdk import Strategy

    class Fragile(Strategy):
        def on_start(self):
            self.good = 0

        def on_bar(self, bar):
            if bar.close < 100:
                raise ValueError(f"refusing to trade at {bar.close}")
            self.good += 1
"""


async def test_a_strategy_raising_in_on_bar_keeps_running_and_reports_errors_in_its_heartbeat(
    nc: Client, tmp_path: Path, start_strategy: Callable[..., Any]
) -> None:
    hb = Heartbeats()
    run = await start_strategy(write_strategy(tmp_path / "fragile", FRAGILE), hb, nc)
    await publish_bar(nc, "AAPL", "99")
    await publish_bar(nc, "AAPL", "101")
    beat = await hb.wait_for(lambda b: b.bars_seen >= 2)
    assert beat.errors == 1
    assert "refusing to trade at 99" in beat.last_error
    assert run.strategy.good == 1
    assert await run.stop() == 0


async def test_an_unanswered_order_is_retried_once_with_the_same_client_order_id(
    nc: Client, tmp_path: Path, start_strategy: Callable[..., Any]
) -> None:
    router = await FakeRouter(nc, ignore_first=1).start()
    hb = Heartbeats()
    run = await start_strategy(write_strategy(tmp_path / "retrier", BUYER), hb, nc, order_timeout=0.5)
    await publish_bar(nc, "AAPL", "50")
    first, second = await router.wait_for(2)
    assert first.client_order_id == second.client_order_id
    await asyncio.wait_for(run.strategy.answered.wait(), WAIT)
    assert run.strategy.results[0].accepted
    assert await run.stop() == 0


async def test_an_order_nobody_answers_is_reported_as_a_timeout(
    nc: Client, tmp_path: Path, start_strategy: Callable[..., Any]
) -> None:
    router = await FakeRouter(nc, ignore_first=3).start()  # strategy_sdk.client.ORDER_ATTEMPTS sends
    hb = Heartbeats()
    run = await start_strategy(write_strategy(tmp_path / "timeouts", BUYER), hb, nc, order_timeout=0.3)
    await publish_bar(nc, "AAPL", "50")
    await router.wait_for(3)
    await asyncio.wait_for(run.strategy.answered.wait(), WAIT)
    result = run.strategy.results[0]
    assert (result.accepted, result.reason) == (False, "TIMEOUT")
    assert await run.stop() == 0


async def test_an_exception_in_on_start_ends_the_runner_with_code_2(nats_server: NatsServer, tmp_path: Path) -> None:
    folder = write_strategy(
        tmp_path / "nostart",
        """
        from strategy_sdk import Strategy

        class NoStart(Strategy):
            def on_start(self):
                raise RuntimeError("cannot start")
    """,
    )
    code = await asyncio.wait_for(run_strategy(folder, nats_server.url, asyncio.Event(), ledger_timeout=0.2), WAIT)
    assert code == 2


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import nonexistent_module_xyz\n", "nonexistent_module_xyz"),
        ("x = 1\n", "defines no subclass of strategy_sdk.Strategy"),
        ("def broken(:\n", "SyntaxError"),
    ],
)
async def test_a_strategy_that_cannot_be_loaded_exits_2_with_a_clear_message(
    nats_server: NatsServer, tmp_path: Path, source: str, expected: str
) -> None:
    folder = write_strategy(tmp_path / "broken", source)
    env = {**os.environ, "NATS_URL": nats_server.url, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strategy_sdk",
        "run",
        str(folder),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "strategy.load_failed" in stderr.decode()
    assert expected in stderr.decode()


RECOVERING = """
    import asyncio
    from strategy_sdk import Strategy

    class Recovering(Strategy):
        def on_start(self):
            self.seen = (self.position("AAPL"), self.cash, sorted(self.open_orders))
            self.cancels = []
            self.cancelled = asyncio.Event()

        async def on_bar(self, bar):
            self.cancels.append(await self.cancel("old-order-1"))
            self.cancels.append(await self.cancel("gone"))
            self.cancelled.set()
"""


async def test_books_are_recovered_from_the_ledger_at_start_and_cancels_reach_the_router(
    nc: Client, tmp_path: Path, start_strategy: Callable[..., Any]
) -> None:
    from desk.v1 import ledger_pb2

    queries: list[ledger_pb2.LedgerQuery] = []

    async def answer(msg: Msg, reply: Any) -> None:
        queries.append(codec.decode(msg.data, ledger_pb2.LedgerQuery, msg.headers))
        data, headers = codec.encode(reply)
        await nc.publish(msg.reply, data, headers=headers)

    positions = ledger_pb2.PositionsReply(
        positions=[ledger_pb2.Position(strategy_id="recover", symbol="AAPL", qty="7")]
    )
    pnl = ledger_pb2.PnlReply(strategies=[ledger_pb2.PnlRow(strategy_id="recover", cash="98765.43")])
    orders = ledger_pb2.OrdersReply(
        orders=[
            ledger_pb2.OrderRecord(
                strategy_id="recover",
                client_order_id="old-order-1",
                order_id="o-1",
                symbol="AAPL",
                side=common_pb2.SIDE_BUY,
                qty="3",
                limit_price="90",
                status=executions_pb2.ORDER_STATUS_NEW,
            ),
            ledger_pb2.OrderRecord(
                strategy_id="recover",
                client_order_id="done-order",
                order_id="o-2",
                symbol="AAPL",
                status=executions_pb2.ORDER_STATUS_FILLED,
            ),
        ]
    )
    for subject, reply in (
        (subjects.LEDGER_POSITIONS, positions),
        (subjects.LEDGER_PNL, pnl),
        (subjects.LEDGER_ORDERS, orders),
    ):
        # the strategy asks for its own books on the scoped subjects its NATS user may publish
        await nc.subscribe(subjects.ledger_own(subject, "recover"), cb=functools.partial(answer, reply=reply))

    cancels: list[orders_pb2.CancelRequest] = []

    async def cancel_endpoint(msg: Msg) -> None:
        request = codec.decode(msg.data, orders_pb2.CancelRequest, msg.headers)
        cancels.append(request)
        known = request.client_order_id == "old-order-1"
        ack = orders_pb2.CancelAck(
            strategy_id=request.strategy_id,
            client_order_id=request.client_order_id,
            order_id="o-1" if known else "",
            accepted=known,
            reason=orders_pb2.REJECT_REASON_UNSPECIFIED if known else orders_pb2.REJECT_REASON_UNKNOWN_ORDER,
        )
        data, headers = codec.encode(ack)
        headers = {**headers, **({} if known else {"Nats-Service-Error-Code": "404", "Nats-Service-Error": "unknown"})}
        await nc.publish(msg.reply, data, headers=headers)

    await nc.subscribe(subjects.ORDER_CANCEL_ALL, cb=cancel_endpoint)

    hb = Heartbeats()
    run = await start_strategy(write_strategy(tmp_path / "recover", RECOVERING), hb, nc)
    assert run.strategy.seen == (Decimal(7), Decimal("98765.43"), ["old-order-1"])
    assert all(q.strategy_id == "recover" for q in queries)

    await publish_bar(nc, "AAPL", "100")
    await asyncio.wait_for(run.strategy.cancelled.wait(), WAIT)
    accepted, refused = run.strategy.cancels
    assert (accepted.accepted, accepted.order_id) == (True, "o-1")
    assert (refused.accepted, refused.reason) == (False, "UNKNOWN_ORDER")
    assert [(c.strategy_id, c.client_order_id) for c in cancels] == [("recover", "old-order-1"), ("recover", "gone")]
    assert await run.stop() == 0


async def test_sigterm_stops_a_running_strategy_process_cleanly(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    folder = write_strategy(
        tmp_path / "sleepy",
        """
        from strategy_sdk import Strategy

        class Sleepy(Strategy):
            def on_stop(self):
                self.log.info("sleepy says goodbye")
    """,
    )
    hb = Heartbeats()
    await nc.subscribe(subjects.heartbeat("sleepy"), cb=hb.handle)
    await nc.flush()
    env = {**os.environ, "NATS_URL": nats_server.url, "PYTHONPATH": str(ROOT), "DESK_HEARTBEAT_INTERVAL": "0.2"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strategy_sdk",
        "run",
        str(folder),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await hb.wait_for(lambda beat: True)
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    assert "sleepy says goodbye" in stderr.decode()
    assert "strategy.stopped" in stderr.decode()
