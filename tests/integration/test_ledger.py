"""The ledger against a real nats-server and a real SQLite file.

Waiting is event-driven: ``LedgerService.wait_for(predicate)`` awaits an ``asyncio.Condition`` the
service notifies after every committed-and-acked batch (and every snapshot / KV update), so a test
waits exactly until the ledger has acked N messages, never by sleeping or polling queries.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path

import nats
import pytest
import structlog.testing
from nats.aio.client import Client

from desk.bus import codec, streams, subjects
from desk.bus import kv as desk_kv
from desk.bus.errors import DeskError
from desk.bus.request import request
from desk.bus.testing import InProcessService, NatsServer, run_in_process
from desk.core.books import parse_booking
from desk.v1 import common_pb2, executions_pb2, ledger_pb2, marketdata_pb2, strategy_pb2
from services.ledger.service import LedgerService, LedgerStats
from services.ledger.settings import Settings
from services.ledger.store import LedgerStore

pytestmark = pytest.mark.integration

BUY, SELL = common_pb2.SIDE_BUY, common_pb2.SIDE_SELL
E = executions_pb2
_seq = itertools.count(1)


def report(
    strategy_id: str,
    client_order_id: str,
    exec_type: int,
    side: int = BUY,
    symbol: str = "AAPL",
    fill_qty: str = "",
    fill_price: str = "",
    fee: str = "",
    member_id: str = "",
    status: int = 0,
    cum_qty: str = "",
    order_qty: str = "10",
    execution_id: str = "",
) -> executions_pb2.ExecutionReport:
    n = next(_seq)
    return executions_pb2.ExecutionReport(
        execution_id=execution_id or f"ex-{client_order_id}-{n}",
        client_order_id=client_order_id,
        strategy_id=strategy_id,
        member_id=member_id,
        exec_type=exec_type,  # type: ignore[arg-type]
        status=status,  # type: ignore[arg-type]
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        type=common_pb2.ORDER_TYPE_MARKET,
        time_in_force=common_pb2.TIME_IN_FORCE_DAY,
        order_qty=order_qty,
        fill_qty=fill_qty,
        fill_price=fill_price,
        cum_qty=cum_qty,
        fee=fee,
        venue="sim",
        event_ns=1_700_000_000_000_000_000 + n,
    )


async def publish(nc: Client, r: executions_pb2.ExecutionReport, msg_id: str | None = None) -> None:
    data, headers = codec.encode(r)
    headers["Nats-Msg-Id"] = msg_id or r.execution_id
    await nc.jetstream().publish(subjects.execution(r.strategy_id), data, headers=headers)


class Ledger:
    """Starts and stops ledger processes (in this event loop) on one SQLite file."""

    def __init__(self, server: NatsServer, db: Path) -> None:
        self.server, self.db = server, db
        self.service: LedgerService | None = None
        self.proc: InProcessService | None = None

    async def start(self, **overrides: object) -> LedgerService:
        settings = Settings(nats_url=self.server.url, ledger_db_path=str(self.db), drain_timeout=5, **overrides)  # type: ignore[arg-type]
        self.service = LedgerService(settings)
        self.proc = await run_in_process("ledger", settings, self.service.start)
        return self.service

    async def stop(self) -> None:
        if self.proc is not None:
            assert await self.proc.stop() == 0
            self.proc = None

    async def wait(self, predicate: Callable[[LedgerStats], bool]) -> LedgerStats:
        assert self.service is not None
        return await self.service.wait_for(predicate, timeout=10)


@pytest.fixture
async def ledger(nats_server: NatsServer, nc: Client, tmp_path: Path) -> AsyncIterator[Ledger]:
    runner = Ledger(nats_server, tmp_path / "var" / "books" / "ledger.db")  # parent dirs do not exist yet
    try:
        yield runner
    finally:
        await runner.stop()


async def put_spec(nc: Client, strategy_id: str, member_id: str, initial_cash: str) -> None:
    await streams.ensure_bucket(nc.jetstream(), subjects.KV_STRATEGIES)
    spec = strategy_pb2.StrategySpec(strategy_id=strategy_id, member_id=member_id, initial_cash=initial_cash)
    await desk_kv.put(nc.jetstream(), subjects.KV_STRATEGIES, strategy_id, spec)


async def put_price(nc: Client, symbol: str, price: str) -> None:
    await streams.ensure_bucket(nc.jetstream(), subjects.KV_PRICES)
    await desk_kv.put(nc.jetstream(), subjects.KV_PRICES, symbol, marketdata_pb2.Trade(symbol=symbol, price=price))


async def query(nc: Client, subject: str, reply_type: type, **filters: object):
    return await request(nc, subject, ledger_pb2.LedgerQuery(**filters), reply_type)  # type: ignore[arg-type]


async def test_executions_are_booked_and_every_query_gives_exact_numbers(nc: Client, ledger: Ledger) -> None:
    await put_spec(nc, "alpha", "alice", "10000")
    await put_price(nc, "AAPL", "105")
    await ledger.start()
    reports = [
        report("alpha", "buy1", E.EXEC_TYPE_NEW, status=E.ORDER_STATUS_NEW),
        report(
            "alpha",
            "buy1",
            E.EXEC_TYPE_PARTIAL_FILL,
            fill_qty="5",
            fill_price="100",
            fee="0.5",
            status=E.ORDER_STATUS_PARTIALLY_FILLED,
            cum_qty="5",
        ),
        report(
            "alpha",
            "buy1",
            E.EXEC_TYPE_FILL,
            fill_qty="5",
            fill_price="102",
            fee="0.5",
            status=E.ORDER_STATUS_FILLED,
            cum_qty="10",
        ),
        report("alpha", "sell1", E.EXEC_TYPE_NEW, side=SELL, order_qty="4", status=E.ORDER_STATUS_NEW),
        report(
            "alpha",
            "sell1",
            E.EXEC_TYPE_FILL,
            side=SELL,
            order_qty="4",
            fill_qty="4",
            fill_price="110",
            fee="0.4",
            status=E.ORDER_STATUS_FILLED,
            cum_qty="4",
        ),
        # bob has no spec yet: his account opens with the default cash and the report's member id
        report(
            "beta",
            "b1",
            E.EXEC_TYPE_FILL,
            symbol="MSFT",
            fill_qty="1",
            fill_price="50",
            member_id="bob",
            status=E.ORDER_STATUS_FILLED,
            cum_qty="1",
            order_qty="1",
        ),
    ]
    for r in reports:
        await publish(nc, r)
    stats = await ledger.wait(lambda s: s.messages >= len(reports))
    assert (stats.fills_booked, stats.events_stored, stats.duplicates, stats.malformed) == (4, 6, 0, 0)

    positions = (await query(nc, subjects.LEDGER_POSITIONS, ledger_pb2.PositionsReply, strategy_id="alpha")).positions
    assert [
        (p.symbol, p.member_id, p.qty, p.avg_cost, p.last_price, p.market_value, p.realized_pnl, p.unrealized_pnl)
        for p in positions
    ] == [("AAPL", "alice", "6", "101", "105", "630", "36", "24")]

    pnl = await query(nc, subjects.LEDGER_PNL, ledger_pb2.PnlReply)
    alpha = next(row for row in pnl.strategies if row.strategy_id == "alpha")
    # cash = 10000 - 500.5 - 510.5 + 439.6; equity = cash + 6 * 105
    assert (alpha.initial_cash, alpha.cash, alpha.market_value, alpha.equity) == ("10000", "9428.6", "630", "10058.6")
    assert (alpha.realized_pnl, alpha.unrealized_pnl, alpha.fees, alpha.total_pnl) == ("36", "24", "1.4", "58.6")
    assert (alpha.return_pct, alpha.fills) == ("0.586", 3)
    beta = next(row for row in pnl.strategies if row.strategy_id == "beta")
    assert (beta.member_id, beta.initial_cash, beta.cash, beta.market_value, beta.total_pnl) == (
        "bob",
        "100000",
        "99950",
        "50",
        "0",
    )  # no MSFT price yet: marked at cost
    assert sorted((m.member_id, m.equity) for m in pnl.members) == [("alice", "10058.6"), ("bob", "100000")]

    board = (await query(nc, subjects.LEDGER_LEADERBOARD, ledger_pb2.LeaderboardReply)).rows
    assert [(r.rank, r.member_id, r.return_pct, r.total_pnl, r.strategies, r.fills) for r in board] == [
        (1, "alice", "0.586", "58.6", 1, 3),
        (2, "bob", "0", "0", 1, 1),
    ]

    orders = (await query(nc, subjects.LEDGER_ORDERS, ledger_pb2.OrdersReply, strategy_id="alpha")).orders
    assert [(o.client_order_id, o.status, o.filled_qty, o.side) for o in orders] == [
        ("sell1", E.ORDER_STATUS_FILLED, "4", SELL),
        ("buy1", E.ORDER_STATUS_FILLED, "10", BUY),
    ]

    fills = (await query(nc, subjects.LEDGER_FILLS, ledger_pb2.FillsReply, member_id="alice", limit=2)).fills
    assert [(f.client_order_id, f.qty, f.price, f.fee) for f in fills] == [
        ("sell1", "4", "110", "0.4"),
        ("buy1", "5", "102", "0.5"),
    ]

    # a new price moves unrealized P&L without any new fill
    await put_price(nc, "AAPL", "100.5")
    await ledger.wait(lambda s: s.prices_seen >= 2)
    pnl = await query(nc, subjects.LEDGER_PNL, ledger_pb2.PnlReply, strategy_id="alpha")
    assert (pnl.strategies[0].unrealized_pnl, pnl.strategies[0].total_pnl) == ("-3", "31.6")


async def test_the_same_execution_published_twice_is_booked_once(nc: Client, ledger: Ledger) -> None:
    service = await ledger.start()
    fill = report("alpha", "o1", E.EXEC_TYPE_FILL, fill_qty="3", fill_price="10", member_id="alice")
    await publish(nc, fill, msg_id="first")
    await publish(nc, fill, msg_id="second")  # another Nats-Msg-Id: the stream keeps both
    stats = await ledger.wait(lambda s: s.messages >= 2)
    assert (stats.fills_booked, stats.duplicates) == (1, 1)
    positions = (await query(nc, subjects.LEDGER_POSITIONS, ledger_pb2.PositionsReply)).positions
    assert [(p.qty, p.avg_cost) for p in positions] == [("3", "10")]
    assert len((await query(nc, subjects.LEDGER_FILLS, ledger_pb2.FillsReply)).fills) == 1
    assert service.stats.malformed == 0


async def test_restarting_the_ledger_neither_loses_nor_double_books_a_fill(nc: Client, ledger: Ledger) -> None:
    await ledger.start()
    for qty in ("1", "2"):
        await publish(nc, report("alpha", f"o{qty}", E.EXEC_TYPE_FILL, fill_qty=qty, fill_price="10", member_id="al"))
    await ledger.wait(lambda s: s.messages >= 2)
    await ledger.stop()

    # published while the ledger is down
    await publish(nc, report("alpha", "o3", E.EXEC_TYPE_FILL, fill_qty="3", fill_price="20", member_id="al"))
    await publish(nc, report("alpha", "o4", E.EXEC_TYPE_FILL, side=SELL, fill_qty="4", fill_price="30", member_id="al"))

    await ledger.start()
    stats = await ledger.wait(lambda s: s.messages >= 2)
    assert stats.fills_booked == 2  # only the two new ones: it resumed from its durable consumer
    await ledger.stop()

    # Worst case: every batch committed but no ack reached the server. Deleting the durable makes the
    # next ledger receive the whole stream again, exactly what such a crash would redeliver.
    await nc.jetstream().delete_consumer(subjects.STREAM_EXECUTIONS, subjects.LEDGER_DURABLE)
    await ledger.start()
    stats = await ledger.wait(lambda s: s.messages >= 4)
    assert (stats.fills_booked, stats.duplicates) == (0, 4)

    fills = (await query(nc, subjects.LEDGER_FILLS, ledger_pb2.FillsReply)).fills
    assert sorted(f.client_order_id for f in fills) == ["o1", "o2", "o3", "o4"]
    positions = (await query(nc, subjects.LEDGER_POSITIONS, ledger_pb2.PositionsReply)).positions
    # bought 1@10, 2@10, 3@20 (avg 15), sold 4@30: realized 60, 2 left at 15
    assert [(p.qty, p.avg_cost, p.realized_pnl) for p in positions] == [("2", "15", "60")]
    pnl = (await query(nc, subjects.LEDGER_PNL, ledger_pb2.PnlReply)).strategies[0]
    assert pnl.cash == "100030"  # 100000 - 10 - 20 - 60 + 120
    info = await nc.jetstream().consumer_info(subjects.STREAM_EXECUTIONS, subjects.LEDGER_DURABLE)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)


async def test_a_malformed_execution_is_skipped_and_later_ones_are_still_booked(nc: Client, ledger: Ledger) -> None:
    await ledger.start()
    with structlog.testing.capture_logs() as logs:
        js = nc.jetstream()
        headers = {codec.DESK_TYPE: "desk.v1.ExecutionReport", "Nats-Msg-Id": "garbage"}
        await js.publish("desk.exec.x", b"\xff\xff\xff", headers=headers)
        no_id = report("x", "o1", E.EXEC_TYPE_FILL, fill_qty="1", fill_price="1")
        no_id.execution_id = ""
        await publish(nc, no_id, msg_id="no-id")
        bad_price = report("x", "o2", E.EXEC_TYPE_FILL, fill_qty="1", fill_price="abc")
        await publish(nc, bad_price)
        await publish(nc, report("x", "o3", E.EXEC_TYPE_FILL, fill_qty="2", fill_price="5", member_id="xm"))
        stats = await ledger.wait(lambda s: s.messages >= 4)
    assert (stats.malformed, stats.fills_booked) == (3, 1)
    malformed = [e for e in logs if e["event"] == "execution.malformed"]
    assert sorted(e["code"] for e in malformed) == ["INVALID_FIELD", "INVALID_FIELD", "MALFORMED"]
    fills = (await query(nc, subjects.LEDGER_FILLS, ledger_pb2.FillsReply)).fills
    assert [f.client_order_id for f in fills] == ["o3"]
    orders = (await query(nc, subjects.LEDGER_ORDERS, ledger_pb2.OrdersReply)).orders
    assert [o.client_order_id for o in orders] == ["o3"]  # nothing of the bad ones was stored
    info = await js.consumer_info(subjects.STREAM_EXECUTIONS, subjects.LEDGER_DURABLE)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)  # terminated, not blocking


async def test_equity_snapshots_are_written_every_interval(nc: Client, ledger: Ledger) -> None:
    await put_spec(nc, "alpha", "alice", "1000")
    await put_price(nc, "AAPL", "12")
    await ledger.start(ledger_snapshot_interval=0.05)
    await publish(nc, report("alpha", "o1", E.EXEC_TYPE_FILL, fill_qty="10", fill_price="10", fee="1"))
    await ledger.wait(lambda s: s.messages >= 1)
    booked_at = ledger.service.stats.snapshots  # type: ignore[union-attr]
    await ledger.wait(lambda s: s.snapshots >= booked_at + 2)
    points = (await query(nc, subjects.LEDGER_EQUITY, ledger_pb2.EquityReply, strategy_id="alpha")).points
    assert len(points) >= 2
    assert [p.ts_ns for p in points] == sorted(p.ts_ns for p in points)  # oldest first
    last = points[-1]
    assert (last.member_id, last.equity, last.cash, last.unrealized_pnl) == ("alice", "1019", "899", "20")
    since = (await query(nc, subjects.LEDGER_EQUITY, ledger_pb2.EquityReply, since_ns=last.ts_ns)).points
    assert [p.ts_ns for p in since] == [last.ts_ns]


async def test_a_bad_query_is_refused_with_a_specific_error(nc: Client, ledger: Ledger) -> None:
    await ledger.start()
    with pytest.raises(DeskError) as refused:
        await query(nc, subjects.LEDGER_POSITIONS, ledger_pb2.PositionsReply, symbol="not a symbol")
    assert (refused.value.code, refused.value.status) == ("INVALID_FIELD", 400)
    assert (await query(nc, subjects.LEDGER_POSITIONS, ledger_pb2.PositionsReply)).positions == []


async def test_a_redelivered_batch_changes_nothing_in_the_store(tmp_path: Path) -> None:
    bookings = [
        parse_booking(r, r.SerializeToString(), 1)
        for r in (
            report("alpha", "o1", E.EXEC_TYPE_NEW),
            report("alpha", "o1", E.EXEC_TYPE_FILL, fill_qty="2", fill_price="7.5", fee="0.01", cum_qty="2"),
        )
    ]
    async with LedgerStore(tmp_path / "l.db", Decimal(500)) as store:
        first = await store.apply_batch(bookings)
        again = await store.apply_batch(bookings)  # the crash-between-commit-and-ack case
        assert (first.fills_booked, first.events_stored, first.duplicates) == (1, 2, [])
        assert (again.fills_booked, again.events_stored, len(again.duplicates)) == (0, 0, 2)
        [account] = await store.accounts()
        assert account.account.cash == Decimal("484.99")
        [position] = await store.positions()
        assert (position.position.qty, position.position.avg_cost) == (Decimal(2), Decimal("7.5"))
        assert await store.schema_version() == 1
        # a spec arriving after the first fill re-bases cash; P&L (equity - initial) is unchanged
        await store.upsert_strategy("alpha", "alice", Decimal(1000), "Alpha", 2)
        [account] = await store.accounts()
        assert (account.member_id, account.account.initial_cash, account.account.cash) == (
            "alice",
            Decimal(1000),
            Decimal("984.99"),
        )
    async with LedgerStore(tmp_path / "l.db") as reopened:  # migrations are not re-run
        assert await reopened.schema_version() == 1
        assert len(await reopened.positions()) == 1


async def test_the_ledger_keeps_booking_after_the_nats_server_restarts(
    nats_server: NatsServer, nc: Client, ledger: Ledger
) -> None:
    await ledger.start()
    await publish(nc, report("alpha", "o1", E.EXEC_TYPE_FILL, fill_qty="1", fill_price="10", member_id="al"))
    await ledger.wait(lambda s: s.messages >= 1)
    nats_server.restart()  # pull subscriptions may go quiet after this (nats.py #504)
    fresh = await nats.connect(nats_server.url)
    try:
        await publish(fresh, report("alpha", "o2", E.EXEC_TYPE_FILL, fill_qty="2", fill_price="10", member_id="al"))
        stats = await ledger.wait(lambda s: s.messages >= 2)
        assert stats.fills_booked == 2
        positions = (await query(fresh, subjects.LEDGER_POSITIONS, ledger_pb2.PositionsReply)).positions
        assert [p.qty for p in positions] == ["3"]
    finally:
        await fresh.close()


async def test_a_stop_mid_stream_acks_exactly_what_is_committed_and_a_restart_books_the_rest(
    nc: Client, ledger: Ledger
) -> None:
    # Small batches: the fetcher runs ahead of the writer (decoded batches wait their turn) when stopped.
    fills = [
        report("alpha", f"o{i}", E.EXEC_TYPE_FILL, fill_qty="1", fill_price="10", member_id="al") for i in range(300)
    ]
    for r in fills:
        await publish(nc, r)
    await ledger.start(ledger_batch_size=5)
    await ledger.wait(lambda s: s.batches >= 3)
    await ledger.stop()  # stop while most of the stream is still pending
    assert ledger.service is not None
    stopped = ledger.service.stats
    info = await nc.jetstream().consumer_info(subjects.STREAM_EXECUTIONS, subjects.LEDGER_DURABLE)
    async with LedgerStore(ledger.db) as store:
        committed = len(await store.fills(ledger_pb2.LedgerQuery(), 10_000))
    # every batch fetched was committed and then acked before the stop completed: none dropped, none acked early
    assert info.num_ack_pending == 0
    assert info.ack_floor.stream_seq == committed == stopped.messages == stopped.fills_booked
    assert committed < len(fills)

    await ledger.start(ledger_batch_size=5)
    stats = await ledger.wait(lambda s: s.messages >= len(fills) - committed)
    assert (stats.fills_booked, stats.duplicates) == (len(fills) - committed, 0)
    positions = (await query(nc, subjects.LEDGER_POSITIONS, ledger_pb2.PositionsReply)).positions
    assert [p.qty for p in positions] == ["300"]


async def test_a_ledger_letting_light_traffic_gather_still_books_everything_and_stops_at_once(
    nc: Client, ledger: Ledger
) -> None:
    # The longest linger allowed: after the first short fetch the ledger waits, and its stop must not.
    await ledger.start(ledger_linger=1.0)
    await publish(nc, report("alpha", "o1", E.EXEC_TYPE_FILL, fill_qty="1", fill_price="10", member_id="al"))
    await ledger.wait(lambda s: s.fills_booked == 1)
    await publish(nc, report("alpha", "o2", E.EXEC_TYPE_FILL, fill_qty="2", fill_price="10", member_id="al"))
    await asyncio.wait_for(ledger.stop(), 10)  # the linger is cut short by the stop
    assert ledger.service is not None
    booked = ledger.service.stats.fills_booked  # 1, unless the machine was slow enough for the linger to end

    await ledger.start(ledger_linger=0.0)
    stats = await ledger.wait(lambda s: s.fills_booked == 2 - booked)
    assert stats.duplicates == 0
    positions = (await query(nc, subjects.LEDGER_POSITIONS, ledger_pb2.PositionsReply)).positions
    assert [p.qty for p in positions] == ["3"]


async def test_a_strategys_own_queries_answer_for_that_strategy_only(nc: Client, ledger: Ledger) -> None:
    await ledger.start()
    for strategy_id, qty in (("alpha", "2"), ("beta", "5")):
        await publish(nc, report(strategy_id, "b1", E.EXEC_TYPE_FILL, fill_qty=qty, fill_price="10", member_id="m"))
    await ledger.wait(lambda s: s.fills_booked == 2)

    own = subjects.ledger_own
    positions = (await query(nc, own(subjects.LEDGER_POSITIONS, "alpha"), ledger_pb2.PositionsReply)).positions
    assert [(p.strategy_id, p.qty) for p in positions] == [("alpha", "2")]
    # a member filter cannot widen it, and the strategy's own id is accepted in the query
    pnl = (await query(nc, own(subjects.LEDGER_PNL, "alpha"), ledger_pb2.PnlReply, member_id="m")).strategies
    assert [row.strategy_id for row in pnl] == ["alpha"]
    orders = (await query(nc, own(subjects.LEDGER_ORDERS, "alpha"), ledger_pb2.OrdersReply, strategy_id="alpha")).orders
    assert {o.strategy_id for o in orders} == {"alpha"}

    with pytest.raises(DeskError) as refused:
        await query(nc, own(subjects.LEDGER_POSITIONS, "alpha"), ledger_pb2.PositionsReply, strategy_id="beta")
    assert refused.value.code == "WRONG_SUBJECT" and "own books" in refused.value.message
    # the desk-wide query still sees everyone (the CLI, the dashboard)
    everyone = (await query(nc, subjects.LEDGER_POSITIONS, ledger_pb2.PositionsReply)).positions
    assert sorted(p.strategy_id for p in everyone) == ["alpha", "beta"]


async def test_an_orders_row_follows_its_life_not_its_venue_stamps(nc: Client, ledger: Ledger) -> None:
    """The sim venue's clock is its market data's: a fill priced from one symbol's update can be
    stamped before the NEW of an order placed after another symbol's later bar. The row must still
    end FILLED, and a refused cancel (a report with no status) must not change it."""
    await ledger.start()
    new = report("alpha", "o1", E.EXEC_TYPE_NEW, status=E.ORDER_STATUS_NEW, cum_qty="0", order_qty="1")
    fill = report(
        "alpha", "o1", E.EXEC_TYPE_FILL, status=E.ORDER_STATUS_FILLED, fill_qty="1", fill_price="10", cum_qty="1"
    )
    fill.order_id = new.order_id = "o1-id"
    fill.event_ns = new.event_ns - 300_000_000  # 0.3 s "earlier" than the NEW
    refused = report("alpha", "o1", E.EXEC_TYPE_CANCEL_REJECTED, status=E.ORDER_STATUS_UNSPECIFIED)
    refused.order_id = "o1-id"
    refused.event_ns = new.event_ns + 1
    for r in (new, fill, refused):
        await publish(nc, r)
    await ledger.wait(lambda s: s.messages >= 3)
    orders = (await query(nc, subjects.LEDGER_ORDERS, ledger_pb2.OrdersReply, strategy_id="alpha")).orders
    assert [(o.order_id, o.status, o.filled_qty) for o in orders] == [("o1-id", E.ORDER_STATUS_FILLED, "1")]
