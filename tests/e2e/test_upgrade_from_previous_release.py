"""Data survives upgrades: a club's var/ written by the previous release (tests/fixtures/previous_release:
ledger.db, the JetStream store, the users file and the CLI's credentials, made by `desk up` of main at
8351506 running strategies/ma_crossover, then stopped) opens with this release — the books as they were,
every stored execution still there, and the desk trading and booking on top of them."""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import pytest

from desk.bus import codec, subjects
from desk.v1 import executions_pb2
from tests.support import DeskUp, free_port, poll

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "previous_release"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
ROOT = Path(__file__).resolve().parents[2]


def _decimal(value: Any) -> Decimal:
    return Decimal(str(value))


def _strategy_pnl(reply: Any, strategy_id: str) -> dict[str, Any]:
    rows = reply["strategies"] if isinstance(reply, dict) else reply
    return next(r for r in rows if r["strategy_id"] == strategy_id)


@pytest.fixture
async def upgraded(tmp_path: Path) -> AsyncIterator[DeskUp]:
    var = tmp_path / "var"
    var.mkdir()
    with tarfile.open(FIXTURE / "var.tar.gz") as archive:
        archive.extractall(var, filter="data")
    strategies = tmp_path / "strategies"
    strategies.mkdir()
    shutil.copytree(
        ROOT / "strategies" / "ma_crossover", strategies / "ma_crossover", ignore=shutil.ignore_patterns("__pycache__")
    )
    up = DeskUp(var, strategies, free_port())
    yield up
    if up.process and up.process.returncode is None:
        await up.interrupt()


async def test_the_previous_releases_var_opens_with_its_books_and_the_desk_books_on_top(upgraded: DeskUp) -> None:
    await upgraded.start("--no-strategies")  # the books first, before anything trades
    (account,) = EXPECTED["accounts"]
    strategy_id = account["strategy_id"]

    # the books exactly as the previous release left them
    pnl = _strategy_pnl(upgraded.cli("pnl"), strategy_id)
    assert _decimal(pnl["cash"]) == _decimal(account["cash"])
    assert _decimal(pnl["initial_cash"]) == _decimal(account["initial_cash"])
    assert pnl["member_id"] == account["member_id"]
    realized = sum(_decimal(p["realized_pnl"]) for p in EXPECTED["positions"])
    assert _decimal(pnl["realized_pnl"]) == realized

    # every execution it stored is still in EXECUTIONS
    nc = await nats.connect(upgraded.url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(subjects.EXEC_ALL, ordered_consumer=True)
        info = await js.stream_info(subjects.STREAM_EXECUTIONS)
        fills = 0
        for _ in range(info.state.messages):
            msg = await sub.next_msg(timeout=10)
            report = codec.decode(msg.data, executions_pb2.ExecutionReport, msg.headers)
            fills += report.exec_type in (executions_pb2.EXEC_TYPE_FILL, executions_pb2.EXEC_TYPE_PARTIAL_FILL)
        await sub.unsubscribe()
        assert fills == EXPECTED["fills"]
    finally:
        await nc.close()

    # and it goes on: the strategy deployed again trades, its new fills booked on top of the old cash
    upgraded.cli("deploy", strategy_id)

    async def more_fills() -> dict[str, Any] | None:
        now = _strategy_pnl(upgraded.cli("pnl"), strategy_id)
        return now if int(str(now.get("fills", 0))) > EXPECTED["fills"] else None

    after = await poll(more_fills, "new fills booked after the upgrade", timeout=120, every=1.0)
    assert _decimal(after["cash"]) != _decimal(account["cash"])
