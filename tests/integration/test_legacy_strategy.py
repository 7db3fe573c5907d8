"""An old-desk strategy runs unchanged under `python -m strategy_sdk run`: bars on stdin, orders via desk_client."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from desk.bus import codec, subjects
from desk.bus.testing import NatsServer
from desk.core.ids import order_id_for
from desk.v1 import common_pb2, marketdata_pb2, orders_pb2, strategy_pb2

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
WAIT = 20.0


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


async def test_legacy_momentum_runs_unchanged_and_its_orders_reach_the_router(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    folder = tmp_path / "legacy_momentum"
    shutil.copytree(ROOT / "strategies" / "legacy_momentum", folder)

    requests: list[orders_pb2.OrderRequest] = []
    got_two = asyncio.Event()

    async def router(msg: Msg) -> None:
        order = codec.decode(msg.data, orders_pb2.OrderRequest, msg.headers)
        requests.append(order)
        ack = orders_pb2.OrderAck(
            strategy_id=order.strategy_id,
            client_order_id=order.client_order_id,
            accepted=True,
            order_id=order_id_for(order.strategy_id, order.client_order_id),
        )
        data, headers = codec.encode(ack)
        await nc.publish(msg.reply, data, headers=headers)
        if len(requests) >= 2:
            got_two.set()

    beat_seen = asyncio.Event()
    beats: list[strategy_pb2.Heartbeat] = []

    async def heartbeat(msg: Msg) -> None:
        beats.append(codec.decode(msg.data, strategy_pb2.Heartbeat, msg.headers))
        beat_seen.set()

    await nc.subscribe(subjects.ORDER_SUBMIT_ALL, cb=router)
    await nc.subscribe(subjects.heartbeat("legacy_momentum"), cb=heartbeat)
    await nc.flush()

    env = {
        **os.environ,
        "NATS_URL": nats_server.url,
        "PYTHONPATH": str(ROOT),
        "DESK_SYMBOLS": "AAPL",
        "DESK_HEARTBEAT_INTERVAL": "0.2",
    }
    env.pop("DESK_STRATEGY_ID", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strategy_sdk",
        "run",
        str(folder),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.wait_for(beat_seen.wait(), WAIT)  # the runner is subscribed and the child started
        for close in ("100", "101", "102", "101.5"):  # two upticks -> buy 10; downtick while holding -> sell 10
            await publish_bar(nc, "AAPL", close)
        await asyncio.wait_for(got_two.wait(), WAIT)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), WAIT)

    buy, sell = requests[:2]
    for order in (buy, sell):
        assert (order.strategy_id, order.symbol, order.qty, order.type, order.time_in_force) == (
            "legacy_momentum",
            "AAPL",
            "10",
            common_pb2.ORDER_TYPE_MARKET,
            common_pb2.TIME_IN_FORCE_DAY,
        )
        assert re.fullmatch(r"legacy_momentum-[0-9a-f]{24}", order.client_order_id)
    assert (buy.side, sell.side) == (common_pb2.SIDE_BUY, common_pb2.SIDE_SELL)
    assert "'status': 'accepted'" in stdout.decode()  # the old strategy printed the dict it got back
    assert proc.returncode == 0, stderr.decode()
    assert "legacy.stopped" in stderr.decode()


async def test_legacy_runner_exits_with_the_old_strategys_own_exit_code(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    folder = tmp_path / "old_quitter"
    folder.mkdir()
    (folder / "strategy.py").write_text(
        "import sys\nfrom desk_client import place_order\nprint('giving up', file=sys.stderr)\nsys.exit(3)\n"
    )
    (folder / "config.json").write_text(
        '{"user_id": "dave", "name": "q", "description": "", "version": "1", "env": {}}'
    )
    env = {**os.environ, "NATS_URL": nats_server.url, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strategy_sdk",
        "run",
        str(folder),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 3
    assert "giving up" in stderr.decode()
