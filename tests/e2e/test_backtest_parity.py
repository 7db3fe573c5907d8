"""Same strategy, same results: a backtest and the running desk replaying the same CSV agree exactly.

One slice of the real sample data (GSPC and IXIC, daily bars, interleaved by date) is (1) backtested
in process with ``strategy_sdk.testing.run_backtest``, the strategy's own ``config.json`` (symbols,
initial cash, risk limits) and a venue model that is not the default (slippage, fee in bps, per share
and minimum, participation), and (2) replayed through ``desk up --feed replay``: the replay feed, the
router with the strategy's spec, the sim gateway with the same ``SIM_*`` model, the ledger, and the
strategy (tests/e2e/parity_strategy) deployed and run by the orchestrator, sandboxed when bubblewrap
works. Every execution report (execution and order ids, statuses, quantities, prices, fees, market
dates), every fill the ledger booked and the final books (positions, cash, realized P&L, fees) must be
*equal*, Decimal for Decimal: both sides run the same ``desk.core`` arithmetic on the same strings, so
no tolerance is needed. The strategy trades with market, marketable-limit and resting DAY limit
orders; partial fills (the sim's liquidity), remainders filled at the next open and DAY expiries all
occur.

Timing cannot interfere, and nothing here sleeps:

* the replay starts only once the strategy has started (``--replay-wait-for``: a strategy's first
  heartbeat comes after its market-data subscriptions are in place), so it sees the first bar;
* bars come one every ``PACE`` seconds (``--replay-pace``), a bound on the strategy's whole reaction
  to a bar (order -> router -> ORDERS -> gateway -> EXECUTIONS -> the strategy's on_fill), which takes
  a few ms; the test *checks* it held: the sim dates an order by its market clock, so one that reached
  the venue after the next bar would be dated later than in the backtest;
* the end is observed: a heartbeat counts every bar, stopping the strategy (``desk stop``) waits for
  its last hook, the gateway's consumer on ORDERS is drained, and the ledger has acked every report.

Two cases: ``orders-settled-before-the-next-decision`` (cooldown 2: an order's fate is known before the
strategy decides again on that symbol) and ``deciding-on-the-bar-its-order-settles`` (cooldown 0: the
strategy decides on the very bar whose tick fills or expires its resting order; the reports that tick
causes reach it after that ``on_bar`` on the desk, and so in the backtest too). The gateway runs with
its default fetch batch: it takes an order as soon as one is there (desk.bus.fetch).
"""

from __future__ import annotations

import asyncio
import csv
import json
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from desk.bus import codec, subjects
from desk.core.books import Account, Position, Side
from desk.core.matching import SimConfig
from desk.data import loaders
from desk.v1 import executions_pb2, strategy_pb2
from strategy_sdk import Bar
from strategy_sdk.config import load_config
from strategy_sdk.loading import load_strategy_class
from strategy_sdk.testing import BacktestResult, bars_from_csv, run_backtest
from tests.support import LEDGER_ACKS, DeskUp, follow, free_port, ledger_caught_up, poll

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
STRATEGY = Path(__file__).resolve().parent / "parity_strategy"
STRATEGY_ID = "parity"
SAMPLES = ROOT / "desk" / "data" / "samples"
SYMBOLS = ("GSPC", "IXIC")
DAYS = 80  # 160 bars: 33 orders, 14 fills, 25 expiries, partial fills
PACE = 0.1  # seconds between bars on the desk (a reaction takes a few ms)
#: The venue model, not the defaults, so the test shows the gateway's SIM_* are the backtest's.
SIM = SimConfig(
    slippage_bps=Decimal(3),
    fee_bps=Decimal("1.5"),
    fee_per_share=Decimal("0.005"),
    fee_min=Decimal(1),
    participation=Decimal("0.25"),
)
SIM_ENV = {
    "SIM_SLIPPAGE_BPS": "3",
    "SIM_FEE_BPS": "1.5",
    "SIM_FEE_PER_SHARE": "0.005",
    "SIM_FEE_MIN": "1",
    "SIM_PARTICIPATION": "0.25",
}
E = executions_pb2
FILLS = (E.EXEC_TYPE_FILL, E.EXEC_TYPE_PARTIAL_FILL)


def write_slice(path: Path, days: int = DAYS) -> None:
    """The first ``days`` daily bars of each sample, in the desk's CSV, by date then symbol. Prices are
    copied as the samples write them (no float on the way)."""
    rows: list[tuple[str, ...]] = []
    for symbol in SYMBOLS:
        with (SAMPLES / f"{symbol}.csv").open(newline="") as handle:
            for row in list(csv.DictReader(handle))[:days]:
                rows.append(
                    (
                        f"{row['Date']}T00:00:00Z",
                        symbol,
                        row["Open"],
                        row["High"],
                        row["Low"],
                        row["Close"],
                        row["Volume"],
                    )
                )
    rows.sort(key=lambda r: (r[0], r[1]))
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "symbol", "open", "high", "low", "close", "volume"])
        writer.writerows(rows)


def report_key(r: executions_pb2.ExecutionReport) -> tuple[Any, ...]:
    """Everything a report says except when it was published (``report_ns``, the wall clock)."""

    def d(text: str) -> Decimal | None:
        return Decimal(text) if text else None

    return (
        r.execution_id,
        r.order_id,
        r.client_order_id,
        r.venue_order_id,
        r.strategy_id,
        r.member_id,
        E.ExecType.Name(r.exec_type),
        E.OrderStatus.Name(r.status),
        r.symbol,
        r.side,
        r.type,
        r.time_in_force,
        d(r.order_qty),
        d(r.limit_price),
        d(r.fill_qty),
        d(r.fill_price),
        d(r.cum_qty),
        d(r.avg_price),
        d(r.leaves_qty),
        d(r.fee),
        r.venue,
        r.text,
        r.event_ns,
    )


@dataclass
class Books:
    positions: dict[str, Decimal]
    cash: Decimal
    realized_pnl: Decimal
    fees: Decimal


def books_from_reports(reports: list[executions_pb2.ExecutionReport], initial_cash: Decimal) -> Books:
    """The books the backtest's fills make, with the ledger's own arithmetic (desk.core.books)."""
    positions: dict[str, Position] = {}
    account = Account(initial_cash=initial_cash, cash=initial_cash)
    for r in reports:
        if r.exec_type not in FILLS:
            continue
        side = Side.BUY if r.side == 1 else Side.SELL
        qty, price, fee = Decimal(r.fill_qty), Decimal(r.fill_price), Decimal(r.fee or "0")
        realized = positions.setdefault(r.symbol, Position(r.symbol)).apply_fill(side, qty, price, fee)
        account.apply_fill(side, qty, price, fee, realized)
    return Books({s: p.qty for s, p in positions.items() if p.qty}, account.cash, account.realized_pnl, account.fees)


def backtest(data: Path, config: dict[str, Any]) -> tuple[list[Bar], BacktestResult]:
    """The file read by the SDK's own CSV reader (exact Decimals), the strategy's config.json."""
    bars = bars_from_csv(data)
    cls = load_strategy_class(STRATEGY / "strategy.py", "parity_backtest_strategy")
    result = run_backtest(
        cls,
        bars,
        config=config,
        strategy_id=STRATEGY_ID,
        member_id=str(config["user_id"]),
        sim_config=SIM,
        record_reports=True,
    )
    return bars, result


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[DeskUp]:
    up = DeskUp(tmp_path / "var", tmp_path / "strategies", free_port())
    up.extra_env.update(SIM_ENV)
    yield up
    if up.process and up.process.returncode is None:
        up.process.kill()
        await up.process.wait()


@pytest.mark.parametrize(
    ("cooldown", "days"),
    [
        pytest.param(2, DAYS, id="orders-settled-before-the-next-decision"),
        pytest.param(0, 30, id="deciding-on-the-bar-its-order-settles"),
    ],
)
async def test_a_replay_through_the_running_desk_trades_and_books_exactly_as_the_backtest(
    desk: DeskUp, tmp_path: Path, cooldown: int, days: int
) -> None:
    config = load_config(STRATEGY)
    config["params"]["cooldown"] = cooldown
    shutil.copytree(STRATEGY, desk.strategies / STRATEGY_ID, ignore=shutil.ignore_patterns("__pycache__"))
    (desk.strategies / STRATEGY_ID / "config.json").write_text(json.dumps(config))
    data = tmp_path / "slice.csv"
    write_slice(data, days)
    bars, expected = backtest(data, config)
    with data.open() as handle:  # the same bars, in the file's order, at the same (UTC) times
        assert [(b.symbol, b.start_ns) for b in bars] == [
            (row["symbol"], loaders.parse_timestamp(row["timestamp"])) for row in csv.DictReader(handle)
        ]
    assert expected.errors == 0, expected.error_messages
    if cooldown:  # the strategy exercises what the comparison must cover
        kinds = {(o.type, o.status) for o in expected.orders}
        assert {("market", "filled"), ("limit", "filled"), ("limit", "expired")} <= kinds, kinds
        assert any(r.exec_type == E.EXEC_TYPE_PARTIAL_FILL for r in expected.reports)
        assert len(expected.fills) >= 10

    await desk.start(
        "--feed", "replay", "--replay-file", str(data), "--replay-pace", str(PACE), "--replay-wait-for", STRATEGY_ID
    )
    nc = await nats.connect(desk.url)
    try:
        acks = await follow(nc, LEDGER_ACKS)
        # The strategy has taken the last bar once a heartbeat counts all of them (it beats every
        # 0.2 s: config.json env).
        beats = await follow(nc, subjects.heartbeat(STRATEGY_ID))
        async with asyncio.timeout(60 + len(bars) * PACE):
            while codec.decode((await beats.get()).data, strategy_pb2.Heartbeat).bars_seen < len(bars):
                pass
        # Stopping waits for its last hook (and so for its last order's answer)...
        stopped = desk.cli("stop", STRATEGY_ID)
        assert [s["state"] for s in stopped["strategies"]] == ["stopped"], stopped
        # ...then the gateway has handled every routed order once its consumer owes nothing...
        js = nc.jetstream()

        async def gateway_drained() -> bool:
            info = await js.consumer_info(subjects.STREAM_ORDERS, "gateway-sim")
            return not info.num_pending and not info.num_ack_pending

        await poll(gateway_drained, "the gateway's ORDERS consumer drained")
        # ...and the ledger has booked every report.
        await ledger_caught_up(nc, acks)
        live = await stream_reports(nc)
        ledger_fills = desk.cli("fills", "-s", STRATEGY_ID, "--limit", "10000")
        pnl = desk.cli("pnl", "-s", STRATEGY_ID)
        positions = desk.cli("positions", "-s", STRATEGY_ID)
    finally:
        await nc.close()
    assert await desk.interrupt() == 0, "".join(desk.output[-40:])

    # Timing did not interfere: the venue dates a NEW report by its market clock (the latest update's
    # time), so an order that reached it after the next bar was published is dated later than in the
    # backtest, where it reaches the engine before the next tick. Said first, as it explains the rest.
    def placed(reports: list[executions_pb2.ExecutionReport]) -> dict[str, int]:
        return {r.client_order_id: r.event_ns for r in reports if r.exec_type == E.EXEC_TYPE_NEW}

    desk_new, backtest_new = placed(live), placed(expected.reports)
    late = {
        cid: (desk_new[cid] - backtest_new[cid]) / 86400e9
        for cid in desk_new.keys() & backtest_new.keys()
        if desk_new[cid] > backtest_new[cid]
    }
    assert not late, (
        f"orders reached the sim venue later than in the backtest (days of bar time): {late}; "
        f"a reaction slower than PACE={PACE} s, or a decision taken on a later bar"
    )

    # The same reports, in the same order: ids, statuses, quantities, prices, fees, dates.
    want = [report_key(r) for r in expected.reports]
    got = [report_key(r) for r in live]
    assert got == want, first_difference(got, want)

    # The ledger booked those fills (symbol, side, qty, price, fee), once each.
    booked = sorted(
        (
            f["execution_id"],
            f["symbol"],
            f["side"].lower().removeprefix("side_"),
            Decimal(f["qty"]),
            Decimal(f["price"]),
            Decimal(f["fee"]),
        )
        for f in ledger_fills["fills"]
    )
    assert booked == sorted((f.execution_id, f.symbol, f.side.lower(), f.qty, f.price, f.fee) for f in expected.fills)

    # And the final books: positions, cash, realized P&L, fees.
    books = books_from_reports(expected.reports, Decimal(str(config["initial_cash"])))
    assert books.positions == expected.positions and books.cash == expected.cash
    held = {p["symbol"]: Decimal(p["qty"]) for p in positions["positions"] if Decimal(p["qty"])}
    assert held == expected.positions
    (row,) = pnl["strategies"]
    assert (Decimal(row["cash"]), Decimal(row["realized_pnl"]), Decimal(row["fees"])) == (
        books.cash,
        books.realized_pnl,
        books.fees,
    ), row


async def stream_reports(nc: Client) -> list[executions_pb2.ExecutionReport]:
    """Every report of the strategy in EXECUTIONS, in stream order."""
    js = nc.jetstream()
    last = (await js.stream_info(subjects.STREAM_EXECUTIONS)).state.last_seq
    out: list[executions_pb2.ExecutionReport] = []
    if not last:
        return out
    sub = await js.subscribe(subjects.execution(STRATEGY_ID), ordered_consumer=True)
    try:
        while True:
            msg: Msg = await sub.next_msg(timeout=30)
            out.append(codec.decode(msg.data, executions_pb2.ExecutionReport, msg.headers))
            if msg.metadata.sequence.stream >= last or msg.metadata.num_pending == 0:
                return out
    finally:
        await sub.unsubscribe()


def first_difference(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> str:
    def short(key: tuple[Any, ...]) -> str:
        return f"{key[2]} {key[6].removeprefix('EXEC_TYPE_')} qty={key[14]} @ {key[15]} t={key[-1]}"

    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        if g != w:
            around = range(max(0, i - 3), min(max(len(got), len(want)), i + 6))
            lines = [
                f"{j:3d} desk: {short(got[j]) if j < len(got) else '-':60s} backtest: "
                f"{short(want[j]) if j < len(want) else '-'}"
                for j in around
            ]
            return f"report {i} differs:\n  desk:     {g}\n  backtest: {w}\n" + "\n".join(lines)
    return (
        f"desk made {len(got)} reports, the backtest {len(want)}; first extra: {(got + want)[min(len(got), len(want))]}"
    )


if __name__ == "__main__":  # pragma: no cover - a look at the backtest side alone
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/parity-slice.csv")
    write_slice(path)
    _, result = backtest(path, load_config(STRATEGY))
    print(json.dumps({"fills": len(result.fills), "reports": len(result.reports), "cash": str(result.cash)}))
