"""The embedded desk end to end: `desk up` as a user runs it, the example strategies (one in the
old desk's exact form) trading on the synthetic feed, fills booked once in the ledger, Ctrl-C
leaving nothing behind, and a second `desk up` keeping the books without booking anything twice."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest

from desk.bus import codec
from desk.v1 import executions_pb2
from tests.support import (
    FILL_TYPES,
    LEDGER_ACKS,
    follow,
    follow_executions,
    free_port,
    ledger_caught_up,
    poll,
    stream_fills,
)
from tests.support import DeskUp as Desk

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DESK = [sys.executable, "-m", "desk.cli"]
EXAMPLES = ("ma_crossover", "mean_reversion", "legacy_momentum")
MEMBERS = {"ma_crossover": "alice", "mean_reversion": "bob", "legacy_momentum": "carol", "old_desk_form": "dave"}

# A strategy exactly as the old desk ran them: stdin JSON lines in, desk_client.place_order out.
OLD_DESK_STRATEGY = """\
import sys
import json
from desk_client import place_order

bought = False
for line in sys.stdin:
    data = json.loads(line)
    if data["symbol"] != "SPY":
        continue
    if not bought:
        result = place_order(data["symbol"], 3, "buy", "market", "day")
        print("placed", result["id"], result["status"], flush=True)
        bought = result["status"] == "accepted"
"""
OLD_DESK_CONFIG = {
    "user_id": "dave",
    "name": "Old desk buyer",
    "description": "buys SPY once",
    "version": "1.0.0",
    "env": {},
}


@pytest.fixture
def strategies(tmp_path: Path) -> Path:
    folder = tmp_path / "strategies"
    for name in EXAMPLES:
        shutil.copytree(ROOT / "strategies" / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "old_desk_form").mkdir()
    (folder / "old_desk_form" / "strategy.py").write_text(OLD_DESK_STRATEGY)
    (folder / "old_desk_form" / "config.json").write_text(json.dumps(OLD_DESK_CONFIG))
    return folder


@pytest.fixture
async def desk(tmp_path: Path, strategies: Path) -> AsyncIterator[Desk]:
    desk = Desk(tmp_path / "var", strategies, free_port())
    yield desk
    if desk.process and desk.process.returncode is None:
        desk.process.kill()
        await desk.process.wait()


async def test_the_embedded_desk_trades_books_every_fill_once_and_survives_a_restart(desk: Desk) -> None:
    await desk.start()
    nc = await nats.connect(desk.url)
    try:
        executions = await follow_executions(nc)
        acks = await follow(nc, LEDGER_ACKS)

        # Every strategy, the old-desk ones included, gets at least one fill from the sim.
        filled: set[str] = set()
        try:
            async with asyncio.timeout(120):
                while filled != set(MEMBERS):
                    msg = await executions.get()
                    report = codec.decode(msg.data, executions_pb2.ExecutionReport, msg.headers)
                    if report.exec_type in FILL_TYPES:
                        assert report.member_id == MEMBERS[report.strategy_id]
                        filled.add(report.strategy_id)
        except TimeoutError:
            logs = {name: (desk.data_dir / "logs" / "strategies" / f"{name}.log") for name in set(MEMBERS) - filled}
            tails = {name: path.read_text()[-2000:] if path.exists() else "(no log)" for name, path in logs.items()}
            raise AssertionError(f"no fill within 120 s for {sorted(set(MEMBERS) - filled)}: {tails}") from None

        await ledger_caught_up(nc, acks)
        fills = desk.cli("fills", "--limit", "10000")
        booked_members = {f["member_id"] for f in fills["fills"]}
        assert set(MEMBERS.values()) <= booked_members
        old_desk = [f for f in fills["fills"] if f["strategy_id"] == "old_desk_form"]
        assert old_desk and {(f["member_id"], f["symbol"], f["qty"]) for f in old_desk} == {("dave", "SPY", "3")}

        board = desk.cli("leaderboard")
        assert {row["member_id"] for row in board["rows"]} >= set(MEMBERS.values())
        assert [row["rank"] for row in board["rows"]] == list(range(1, len(board["rows"]) + 1))

        # RUNNING once each has sent a heartbeat (a strategy that traded has): wait for it, bounded
        def all_running() -> Any:
            status = desk.cli("status")
            states = {s["state"] for s in status["strategies"]}
            return status if states == {"running"} else None

        status = await poll(all_running, "every strategy RUNNING")
        pids = {s["strategy_id"]: s["pid"] for s in status["strategies"]}
        assert set(pids) == set(MEMBERS) and all(pids.values())
        assert all(s["restarts"] == 0 for s in status["strategies"]), status
    finally:
        await nc.close()

    # Ctrl-C: a clean exit, and no strategy, service or server left running.
    assert await desk.interrupt() == 0, "".join(desk.output[-40:])
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", desk.port)) != 0, "nats-server still listening"

    # A second run on the same data keeps the ledger and books no fill twice.
    await desk.start("--no-strategies")
    nc = await nats.connect(desk.url)
    try:
        acks = await follow(nc, LEDGER_ACKS)
        await ledger_caught_up(nc, acks)
        in_stream = await stream_fills(nc)
        booked = desk.cli("fills", "--limit", "10000")["fills"]
        booked_ids = [f["execution_id"] for f in booked]
        assert len(booked_ids) == len(set(booked_ids)), "a fill was booked twice"
        assert set(booked_ids) == set(in_stream), "the ledger and the EXECUTIONS stream disagree"
        for f in fills["fills"]:
            assert f["execution_id"] in set(booked_ids)
    finally:
        await nc.close()
    assert await desk.interrupt() == 0, "".join(desk.output[-40:])
