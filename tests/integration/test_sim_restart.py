"""The sim's resting orders survive a gateway SIGKILL: the restarted gateway rebuilds its book from EXECUTIONS.

The gateway runs as its own OS process (``python -m services.broker_gateway``) so the kill is a
real ``SIGKILL``: no clean-shutdown expiry, no flush of anything in hand.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from desk.bus import codec, streams, subjects
from desk.bus.process import die_with_parent
from desk.bus.request import request
from desk.bus.testing import NatsServer
from desk.core.matching import SHUTDOWN_TEXT
from desk.v1 import common_pb2, executions_pb2, ledger_pb2, marketdata_pb2, orders_pb2

pytestmark = pytest.mark.integration

E = executions_pb2
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 15.0
POLL_PAUSE = 0.1  # between PINGs of a process still starting (its PING is its only readiness signal)


class Gateway:
    """``python -m services.broker_gateway`` (BROKER=sim) as a child process."""

    def __init__(self, url: str, log_path: Path) -> None:
        self.url = url
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, nc: Client) -> None:
        env = dict(
            os.environ,
            NATS_URL=self.url,
            BROKER="sim",
            LOG_FORMAT="json",
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
        )
        with self.log_path.open("ab") as handle:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.broker_gateway",
                env=env,
                cwd=str(ROOT),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=handle,
                stderr=handle,
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.returncode is None, f"gateway exited:\n{self.log_path.read_text()}"
            try:
                await nc.request("$SRV.PING.broker_gateway", b"", timeout=0.5)
                return
            except nats.errors.Error:
                await asyncio.sleep(POLL_PAUSE)
        raise AssertionError(f"gateway not ready:\n{self.log_path.read_text()}")

    async def kill9(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        assert await self.process.wait() == -signal.SIGKILL

    async def terminate(self) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), TIMEOUT)


async def publish_bar(nc: Client, o: str, h: str, lo: str, c: str, volume: str = "") -> None:
    data, headers = codec.encode(marketdata_pb2.Bar(symbol="AAPL", open=o, high=h, low=lo, close=c, volume=volume))
    await nc.publish(subjects.md_bar("AAPL"), data, headers=headers)
    await nc.flush()


def routed(order_id: str, **fields: Any) -> orders_pb2.RoutedOrder:
    request_fields: dict[str, Any] = {
        "strategy_id": "alpha",
        "client_order_id": f"c-{order_id}",
        "symbol": "AAPL",
        "side": common_pb2.SIDE_BUY,
        "type": common_pb2.ORDER_TYPE_LIMIT,
        "time_in_force": common_pb2.TIME_IN_FORCE_GTC,
        "qty": "10",
    }
    request_fields.update(fields)
    return orders_pb2.RoutedOrder(
        order_id=order_id,
        strategy_id="alpha",
        member_id="m1",
        routed_ns=1,
        new_order=orders_pb2.OrderRequest(**request_fields),
    )


async def route(nc: Client, message: orders_pb2.RoutedOrder, msg_id: str) -> None:
    data, headers = codec.encode(message)
    headers["Nats-Msg-Id"] = msg_id
    await nc.jetstream().publish(subjects.broker_orders("sim"), data, headers=headers)


async def next_reports(sub: JetStreamContext.PushSubscription, count: int) -> list[executions_pb2.ExecutionReport]:
    return [
        codec.decode(msg.data, E.ExecutionReport, msg.headers)
        for msg in [await sub.next_msg(timeout=TIMEOUT) for _ in range(count)]
    ]


def summary(reports: list[executions_pb2.ExecutionReport]) -> list[tuple[str, str, str, str]]:
    return [
        (r.execution_id, E.ExecType.Name(r.exec_type).removeprefix("EXEC_TYPE_"), r.fill_qty, r.fill_price)
        for r in reports
    ]


async def book(nc: Client) -> list[tuple[str, str, str, str]]:
    reply = await request(
        nc, "desk.broker.sim.book", ledger_pb2.LedgerQuery(strategy_id="alpha"), ledger_pb2.OrdersReply
    )
    return [(o.order_id, o.qty, o.filled_qty, o.avg_price) for o in reply.orders]


async def test_resting_orders_survive_a_gateway_sigkill_and_fill_after_the_restart(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    js = nc.jetstream()
    await streams.ensure_all(js)
    sub = await js.subscribe(subjects.execution("alpha"), ordered_consumer=True)
    gateway = Gateway(nats_server.url, tmp_path / "gateway.log")
    try:
        await gateway.start(nc)
        await publish_bar(nc, "100", "101", "99", "100")
        await route(nc, routed("lim", limit_price="95"), "lim")
        await route(nc, routed("part", limit_price="96"), "part")
        assert summary(await next_reports(sub, 2)) == [("lim-1", "NEW", "", ""), ("part-1", "NEW", "", "")]
        # 16 x 0.25 = 4 shares on offer: "part" takes 4 at 96, "lim" (95) is not reached
        await publish_bar(nc, "96.5", "97", "95.5", "96", volume="16")
        assert summary(await next_reports(sub, 1)) == [("part-2", "PARTIAL_FILL", "4", "96")]

        await gateway.kill9()  # no EXPIRED: the book dies with the process
        await gateway.start(nc)
        assert await book(nc) == [("lim", "10", "0", ""), ("part", "10", "4", "96")]

        # a redelivered routed order of a restored order is known: no second NEW before "after"'s
        await route(nc, routed("lim", limit_price="95"), "lim-redelivered")
        await route(nc, routed("after", type=common_pb2.ORDER_TYPE_LIMIT, limit_price="50"), "after")
        assert summary(await next_reports(sub, 1)) == [("after-1", "NEW", "", "")]

        # a later bar crosses both restored limits; ids continue each order's sequence
        await publish_bar(nc, "94.5", "95", "94", "94.5", volume="100")
        fills = await next_reports(sub, 2)
        assert summary(fills) == [("lim-2", "FILL", "10", "94.5"), ("part-3", "FILL", "6", "94.5")]
        assert [(r.cum_qty, r.avg_price, r.leaves_qty) for r in fills] == [("10", "94.5", "0"), ("10", "95.1", "0")]
        assert await book(nc) == [("after", "10", "0", "")]

        # a clean stop still expires what rests (a sim rule); the restart restores it as expired
        assert await gateway.terminate() == 0
        [expired] = await next_reports(sub, 1)
        assert (expired.execution_id, expired.exec_type, expired.text) == (
            "after-2",
            E.EXEC_TYPE_EXPIRED,
            SHUTDOWN_TEXT,
        )
        await gateway.start(nc)
        assert await book(nc) == []
        await route(nc, routed("after", type=common_pb2.ORDER_TYPE_LIMIT, limit_price="50"), "after-redelivered")
        await publish_bar(nc, "94.5", "94.5", "94.5", "94.5")  # the sim's prices are not restored
        await route(nc, routed("last", type=common_pb2.ORDER_TYPE_MARKET), "last")
        assert summary(await next_reports(sub, 2)) == [("last-1", "NEW", "", ""), ("last-2", "FILL", "10", "94.5189")]
        assert await gateway.terminate() == 0
    finally:
        if gateway.process is not None and gateway.process.returncode is None:
            gateway.process.kill()
            await gateway.process.wait()
        await sub.unsubscribe()

    # EXECUTIONS as the ledger reads it: every execution id once, one NEW per order, fills exact
    info = await js.stream_info(subjects.STREAM_EXECUTIONS)
    stored = [
        codec.decode(m.data or b"", E.ExecutionReport, m.headers)
        for m in [await js.get_msg(subjects.STREAM_EXECUTIONS, seq) for seq in range(1, info.state.last_seq + 1)]
    ]
    ids = collections.Counter(r.execution_id for r in stored)
    assert [i for i, n in ids.items() if n > 1] == []
    assert collections.Counter(r.order_id for r in stored if r.exec_type == E.EXEC_TYPE_NEW) == {
        "lim": 1,
        "part": 1,
        "after": 1,
        "last": 1,
    }
    filled: dict[str, Decimal] = collections.defaultdict(Decimal)
    cost: dict[str, Decimal] = collections.defaultdict(Decimal)
    for r in stored:
        if r.fill_qty:
            filled[r.order_id] += Decimal(r.fill_qty)
            cost[r.order_id] += Decimal(r.fill_qty) * Decimal(r.fill_price)
    assert dict(filled) == {"lim": Decimal(10), "part": Decimal(10), "last": Decimal(10)}
    assert dict(cost) == {"lim": Decimal("945.0"), "part": Decimal("951.0"), "last": Decimal("945.1890")}
    assert len(stored) == 9  # 4 NEW, 1 partial + 3 fills, 1 EXPIRED: nothing else, nothing twice
