"""The ledger writer's in-memory accounts and positions against a real SQLite file.

The writer keeps the committed accounts and positions in memory and writes each touched one once
per batch. These tests check that this copy never drifts from the database: after rolled-back
batches (a real SQLite error raised by a trigger in the middle of the write), after duplicates
within and across batches, after strategy specs re-basing cash, and after many random batches,
it equals what a freshly opened store reads back, and equals books kept independently here.
"""

from __future__ import annotations

import itertools
import random
import sqlite3
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import pytest

from desk.core.books import Account, Booking, FillBooking, Position, Side, parse_booking
from desk.v1 import common_pb2, executions_pb2
from services.ledger.rows import AccountRow, PositionRow
from services.ledger.store import LedgerStore

pytestmark = pytest.mark.integration

E = executions_pb2
_seq = itertools.count(1)


def fill(
    strategy_id: str,
    symbol: str,
    side: int,
    qty: str,
    price: str,
    fee: str = "0",
    execution_id: str = "",
    member_id: str = "",
) -> Booking:
    n = next(_seq)
    r = executions_pb2.ExecutionReport(
        execution_id=execution_id or f"x{n}",
        client_order_id=f"c{n}",
        strategy_id=strategy_id,
        member_id=member_id,
        exec_type=E.EXEC_TYPE_FILL,
        status=E.ORDER_STATUS_FILLED,
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        type=common_pb2.ORDER_TYPE_MARKET,
        time_in_force=common_pb2.TIME_IN_FORCE_DAY,
        order_qty=qty,
        fill_qty=qty,
        fill_price=price,
        cum_qty=qty,
        fee=fee,
        venue="sim",
        event_ns=1_700_000_000_000_000_000 + n,
    )
    return parse_booking(r, r.SerializeToString(), 1)


async def reloaded(path: Path) -> tuple[dict[str, AccountRow], dict[tuple[str, str], PositionRow]]:
    """Accounts and positions as a freshly opened store reads them from SQLite."""
    async with LedgerStore(path) as fresh:
        accounts = {a.strategy_id: a for a in await fresh.accounts()}
        positions = {(p.strategy_id, p.position.symbol): p for p in await fresh.positions(nonzero=False)}
    return accounts, positions


async def assert_cache_matches_database(store: LedgerStore) -> None:
    cached_accounts, cached_positions = await store.cached_books()
    accounts, positions = await reloaded(store.path)
    assert cached_accounts  # the check below compares something
    for strategy_id, row in cached_accounts.items():
        assert (row.member_id, row.account) == (accounts[strategy_id].member_id, accounts[strategy_id].account)
    for key, cached in cached_positions.items():
        assert (cached.position, cached.updated_ns) == (positions[key].position, positions[key].updated_ns)


def add_failing_trigger(path: Path, symbol: str) -> None:
    """A real SQLite error in the middle of a batch's writes: inserting a fill of ``symbol`` aborts."""
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            f"CREATE TRIGGER fail_{symbol} BEFORE INSERT ON fills WHEN NEW.symbol = '{symbol}'"
            " BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )


def drop_trigger(path: Path, symbol: str) -> None:
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(f"DROP TRIGGER fail_{symbol}")


async def test_a_rolled_back_batch_leaves_the_in_memory_books_equal_to_the_database(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    async with LedgerStore(path, Decimal(1000)) as store:
        first = await store.apply_batch([fill("alpha", "AAPL", common_pb2.SIDE_BUY, "2", "10", "0.5", member_id="al")])
        assert first.fills_booked == 1
        before = await store.cached_books()

        add_failing_trigger(path, "BOOM")
        # alpha's AAPL position and cash change in memory before the BOOM fill's insert fails
        failing = [
            fill("alpha", "AAPL", common_pb2.SIDE_SELL, "1", "12"),
            fill("beta", "MSFT", common_pb2.SIDE_BUY, "3", "7", member_id="be"),
            fill("alpha", "BOOM", common_pb2.SIDE_BUY, "1", "1"),
        ]
        with pytest.raises(sqlite3.IntegrityError, match="injected failure"):
            await store.apply_batch(failing)
        assert await store.cached_books() == before
        await assert_cache_matches_database(store)
        assert [a.strategy_id for a in await store.accounts()] == ["alpha"]  # beta's new account rolled back too

        # a failure in the books themselves (not SQL) also rolls back
        bad = fill("alpha", "AAPL", common_pb2.SIDE_BUY, "1", "10")
        bad = Booking(
            bad.report,
            bad.payload,
            bad.order_id,
            bad.event_ns,
            FillBooking(Side.BUY, Decimal(0), Decimal(1), Decimal(0)),
        )
        with pytest.raises(ValueError, match="quantity must be positive"):
            await store.apply_batch([fill("alpha", "AAPL", common_pb2.SIDE_BUY, "5", "10"), bad])
        assert await store.cached_books() == before

        drop_trigger(path, "BOOM")
        again = await store.apply_batch(failing)  # the redelivered batch now books, once
        assert (again.fills_booked, again.duplicates) == (3, [])
        await assert_cache_matches_database(store)
        [alpha, beta] = await store.accounts()
        # 1000 - 20.5 (buy 2@10, fee .5) + 12 (sell 1@12) - 1 (buy 1@1)
        assert (alpha.account.cash, alpha.account.realized_pnl, beta.member_id, beta.account.cash) == (
            Decimal("990.5"),
            Decimal(2),
            "be",
            Decimal(979),
        )


async def test_duplicates_within_and_across_batches_are_booked_once(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    one = fill("alpha", "AAPL", common_pb2.SIDE_BUY, "2", "10", execution_id="dup-1")
    two = fill("alpha", "AAPL", common_pb2.SIDE_BUY, "3", "20", execution_id="dup-2")
    async with LedgerStore(path, Decimal(1000)) as store:
        first = await store.apply_batch([one, one, two, one])
        assert (first.fills_booked, first.events_stored, first.duplicates) == (2, 2, ["dup-1", "dup-1"])
        second = await store.apply_batch([two, fill("alpha", "AAPL", common_pb2.SIDE_SELL, "5", "30"), one])
        assert (second.fills_booked, second.duplicates) == (1, ["dup-2", "dup-1"])
        [position] = await store.positions(nonzero=False)
        assert (position.position.qty, position.position.realized_pnl) == (Decimal(0), Decimal(70))
        [account] = await store.accounts()
        assert account.account.cash == Decimal(1070)
        await assert_cache_matches_database(store)
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT COUNT(*) FROM fills").fetchone()[0] == 3


async def test_a_spec_after_fills_rebases_the_cached_account_as_well(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    async with LedgerStore(path, Decimal(500)) as store:
        await store.apply_batch([fill("alpha", "AAPL", common_pb2.SIDE_BUY, "2", "10")])
        await store.upsert_strategy("alpha", "alice", Decimal(1000), "Alpha", 5)
        await store.apply_batch([fill("alpha", "AAPL", common_pb2.SIDE_BUY, "1", "10")])
        [account] = await store.accounts()
        # opened with 500, re-based to 1000 (+500), two buys: 1000 - 20 - 10
        assert (account.member_id, account.account.initial_cash, account.account.cash) == (
            "alice",
            Decimal(1000),
            Decimal(970),
        )
        await store.upsert_strategy("beta", "bob", None, "Beta", 6)  # spec first: the account opens at once
        await store.apply_batch([fill("beta", "MSFT", common_pb2.SIDE_SELL, "1", "50")])
        await assert_cache_matches_database(store)
        beta = next(a for a in await store.accounts() if a.strategy_id == "beta")
        assert (beta.member_id, beta.account.cash) == ("bob", Decimal(550))


async def test_books_after_many_random_batches_equal_a_reload_and_an_independent_book(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    rnd = random.Random(7)
    positions: dict[tuple[str, str], Position] = {}
    accounts: dict[str, Account] = {}
    booked: list[Booking] = []
    async with LedgerStore(path, Decimal(100000)) as store:
        for batch_no in range(40):
            batch: list[Booking] = []
            for _ in range(rnd.randint(1, 30)):
                if booked and rnd.random() < 0.1:
                    batch.append(rnd.choice(booked))  # a redelivery: changes nothing
                    continue
                sid, symbol = rnd.choice(["s1", "s2", "s3"]), rnd.choice(["AAA", "BBB"])
                side = rnd.choice([common_pb2.SIDE_BUY, common_pb2.SIDE_SELL])
                b = fill(
                    sid,
                    symbol,
                    side,
                    str(rnd.randint(1, 9)),
                    f"{rnd.randint(100, 999)}.{rnd.randint(0, 99):02d}",
                    f"0.{rnd.randint(0, 9)}",
                )
                batch.append(b)
                booked.append(b)
                assert b.fill is not None
                position = positions.setdefault((sid, symbol), Position(symbol=symbol))
                realized = position.apply_fill(b.fill.side, b.fill.qty, b.fill.price, b.fill.fee)
                account = accounts.setdefault(sid, Account(initial_cash=Decimal(100000), cash=Decimal(100000)))
                account.apply_fill(b.fill.side, b.fill.qty, b.fill.price, b.fill.fee, realized)
            await store.apply_batch(batch)
            if batch_no == 20:  # a reopened store starts with nothing in memory and loads per key
                await store.close()
                await store.open()
        await assert_cache_matches_database(store)
    got_accounts, got_positions = await reloaded(path)
    assert {k: a.account for k, a in got_accounts.items()} == accounts
    assert {k: p.position for k, p in got_positions.items()} == positions
