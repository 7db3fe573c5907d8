"""The ledger's SQLite file: schema and migrations, the single writer's transactions, and reads.

* One writer connection, used under an ``asyncio.Lock`` so a batch, a strategy upsert and an
  equity snapshot never interleave inside one transaction; reads go through a second, read-only
  connection (WAL lets it read while the writer writes).
* ``journal_mode=WAL`` and ``synchronous=FULL``: the ledger acks an execution only after its
  transaction commits, and the ack is the only thing that stops JetStream from redelivering it.
  With ``NORMAL`` a commit in WAL mode can be lost on power failure *after* we acked, which would
  lose a fill for good; ``FULL`` syncs the WAL on every commit. One commit per batch keeps the
  cost small.
* Decimals are stored as TEXT (``desk.bus.decimals.fmt``) and computed with ``Decimal`` only.
* Idempotency: ``order_events`` and ``fills`` are keyed by ``execution_id``; a report whose
  execution id is already stored changes nothing, so a redelivered batch books nothing twice.
"""

from __future__ import annotations

import asyncio
import decimal
import functools
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Self, TypeVar, cast

import aiosqlite

from desk.bus.decimals import dec, fmt
from desk.v1 import common_pb2, executions_pb2, ledger_pb2
from services.ledger.books import Account, Position
from services.ledger.reports import Booking

T = TypeVar("T")

# Each entry migrates the schema from version i to i + 1; append, never edit a released one.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE strategies (
            strategy_id TEXT PRIMARY KEY,
            member_id TEXT NOT NULL DEFAULT '',
            initial_cash TEXT NOT NULL,
            name TEXT NOT NULL DEFAULT '',
            updated_ns INTEGER NOT NULL DEFAULT 0)""",
        # initial_cash is kept on the account too: the cash it was opened with, so a spec arriving
        # after the first fill (or changing the initial cash) re-bases cash by the difference.
        """CREATE TABLE accounts (
            strategy_id TEXT PRIMARY KEY,
            member_id TEXT NOT NULL DEFAULT '',
            initial_cash TEXT NOT NULL,
            cash TEXT NOT NULL,
            realized_pnl TEXT NOT NULL DEFAULT '0',
            fees TEXT NOT NULL DEFAULT '0',
            updated_ns INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE orders (
            order_id TEXT PRIMARY KEY,
            client_order_id TEXT NOT NULL,
            strategy_id TEXT NOT NULL REFERENCES accounts(strategy_id),
            member_id TEXT NOT NULL DEFAULT '',
            symbol TEXT NOT NULL DEFAULT '',
            side TEXT NOT NULL DEFAULT '',
            type TEXT NOT NULL DEFAULT '',
            tif TEXT NOT NULL DEFAULT '',
            qty TEXT NOT NULL DEFAULT '',
            notional TEXT NOT NULL DEFAULT '',
            limit_price TEXT NOT NULL DEFAULT '',
            stop_price TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL DEFAULT '',
            filled_qty TEXT NOT NULL DEFAULT '0',
            avg_price TEXT NOT NULL DEFAULT '',
            venue TEXT NOT NULL DEFAULT '',
            text TEXT NOT NULL DEFAULT '',
            created_ns INTEGER NOT NULL,
            updated_ns INTEGER NOT NULL)""",
        "CREATE INDEX orders_by_strategy ON orders(strategy_id, updated_ns)",
        "CREATE INDEX orders_by_time ON orders(updated_ns)",
        """CREATE TABLE order_events (
            execution_id TEXT PRIMARY KEY,
            order_id TEXT NOT NULL REFERENCES orders(order_id),
            exec_type TEXT NOT NULL,
            status TEXT NOT NULL,
            payload BLOB NOT NULL,
            event_ns INTEGER NOT NULL)""",
        "CREATE INDEX order_events_by_order ON order_events(order_id, event_ns)",
        """CREATE TABLE fills (
            execution_id TEXT PRIMARY KEY,
            order_id TEXT NOT NULL REFERENCES orders(order_id),
            client_order_id TEXT NOT NULL,
            strategy_id TEXT NOT NULL REFERENCES accounts(strategy_id),
            member_id TEXT NOT NULL DEFAULT '',
            symbol TEXT NOT NULL,
            side TEXT NOT NULL,
            qty TEXT NOT NULL,
            price TEXT NOT NULL,
            fee TEXT NOT NULL,
            venue TEXT NOT NULL DEFAULT '',
            event_ns INTEGER NOT NULL)""",
        "CREATE INDEX fills_by_strategy ON fills(strategy_id, event_ns)",
        "CREATE INDEX fills_by_time ON fills(event_ns)",
        """CREATE TABLE positions (
            strategy_id TEXT NOT NULL REFERENCES accounts(strategy_id),
            symbol TEXT NOT NULL,
            qty TEXT NOT NULL,
            avg_cost TEXT NOT NULL,
            cost_basis TEXT NOT NULL,
            realized_pnl TEXT NOT NULL,
            fees TEXT NOT NULL,
            updated_ns INTEGER NOT NULL,
            PRIMARY KEY (strategy_id, symbol))""",
        """CREATE TABLE equity_snapshots (
            strategy_id TEXT NOT NULL,
            ts_ns INTEGER NOT NULL,
            equity TEXT NOT NULL,
            cash TEXT NOT NULL,
            realized TEXT NOT NULL,
            unrealized TEXT NOT NULL,
            PRIMARY KEY (strategy_id, ts_ns))""",
        "CREATE INDEX equity_by_time ON equity_snapshots(ts_ns)",
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)


@dataclass
class BatchResult:
    """What one committed batch did."""

    fills_booked: int = 0
    events_stored: int = 0
    duplicates: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AccountRow:
    strategy_id: str
    member_id: str
    account: Account


@dataclass(frozen=True)
class PositionRow:
    strategy_id: str
    member_id: str
    position: Position
    updated_ns: int


@functools.cache
def _enum_names(enum_type: Any) -> dict[int, str]:
    """number -> name for a protobuf enum (what ``Name`` answers), built once per enum type."""
    return {number: str(value.name) for number, value in enum_type.DESCRIPTOR.values_by_number.items()}


def _enum_name(enum_type: Any, value: int) -> str:
    return _enum_names(enum_type).get(value, "")


def _enum_value(enum_type: Any, name: str) -> int:
    try:
        return int(enum_type.Value(name))
    except ValueError:
        return 0


class LedgerStore:
    """The ledger's SQLite file. ``open()`` before use, ``close()`` after."""

    def __init__(self, path: str | Path, default_initial_cash: Decimal = Decimal(100000)) -> None:
        self.path = Path(path)
        self.default_initial_cash = default_initial_cash
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    # -- life cycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = await aiosqlite.connect(self.path, isolation_level=None)
        self._writer = writer
        await writer.execute("PRAGMA journal_mode=WAL")
        await writer.execute("PRAGMA synchronous=FULL")
        await writer.execute("PRAGMA foreign_keys=ON")
        await writer.execute("PRAGMA busy_timeout=5000")
        await self._migrate(writer)
        reader = await aiosqlite.connect(self.path, isolation_level=None)
        self._reader = reader
        await reader.execute("PRAGMA query_only=ON")
        await reader.execute("PRAGMA busy_timeout=5000")

    async def close(self) -> None:
        async with self._write_lock:
            for conn in (self._reader, self._writer):
                if conn is not None:
                    await conn.close()
            self._reader = self._writer = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def writer(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise RuntimeError("LedgerStore is not open")
        return self._writer

    @property
    def reader(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise RuntimeError("LedgerStore is not open")
        return self._reader

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            async with db.execute("SELECT version FROM schema_version") as cur:
                row = await cur.fetchone()
            version = int(row[0]) if row else 0
            if row is None:
                await db.execute("INSERT INTO schema_version (version) VALUES (0)")
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} has schema version {version}, newer than this ledger ({SCHEMA_VERSION})")
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    await db.execute(statement)
            await db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    async def schema_version(self) -> int:
        async with self.reader.execute("SELECT version FROM schema_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # -- writes (single writer) -----------------------------------------------------------------

    async def apply_batch(self, bookings: Sequence[Booking]) -> BatchResult:
        """Book ``bookings`` in ONE transaction; execution ids already stored are skipped.

        The whole transaction (BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error) runs as one
        synchronous function on the writer connection's own thread: one hand-off per batch instead of
        a dozen awaited statements per fill. The writer's thread runs one job at a time, in order, so
        nothing else can interleave with the transaction; the lock keeps our own writes in turn. If
        the caller is cancelled, the job still finishes (commit or rollback) on that thread; the
        caller then acks nothing, and the redelivered reports are skipped as duplicates.
        """
        result = BatchResult()
        if not bookings:
            return result
        context = decimal.getcontext().copy()  # the worker thread has its own decimal context
        async with self._write_lock:
            await self._in_writer(self._apply_batch_sync, list(bookings), result, context)
        return result

    async def _in_writer(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(sqlite3_connection, *args)`` on the writer connection's thread (one hop)."""
        db = self.writer
        # aiosqlite has no public "run this on the connection's thread"; ``_execute`` is that
        # (aiosqlite is pinned in pyproject.toml, and tests/integration/test_ledger.py covers it).
        execute = cast(Callable[..., Awaitable[T]], db._execute)
        return await execute(lambda: fn(db._conn, *args))

    def _apply_batch_sync(
        self, db: sqlite3.Connection, bookings: list[Booking], result: BatchResult, context: decimal.Context
    ) -> None:
        with decimal.localcontext(context):
            db.execute("BEGIN IMMEDIATE")
            try:
                for booking in bookings:
                    self._apply_one(db, booking, result)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _apply_one(self, db: sqlite3.Connection, booking: Booking, result: BatchResult) -> None:
        r = booking.report
        if db.execute("SELECT 1 FROM order_events WHERE execution_id = ?", (r.execution_id,)).fetchone() is not None:
            result.duplicates.append(r.execution_id)
            return
        member_id = self._ensure_account(db, r.strategy_id, r.member_id, booking.event_ns)
        side = _enum_name(common_pb2.Side, r.side)
        status = _enum_name(executions_pb2.OrderStatus, r.status)
        db.execute(
            """INSERT INTO orders (order_id, client_order_id, strategy_id, member_id, symbol, side, type, tif,
                   qty, notional, limit_price, stop_price, status, filled_qty, avg_price, venue, text,
                   created_ns, updated_ns)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(order_id) DO UPDATE SET
                   status = CASE WHEN excluded.updated_ns >= orders.updated_ns THEN excluded.status ELSE orders.status END,
                   filled_qty = CASE WHEN excluded.updated_ns >= orders.updated_ns AND excluded.filled_qty != ''
                                     THEN excluded.filled_qty ELSE orders.filled_qty END,
                   avg_price = CASE WHEN excluded.updated_ns >= orders.updated_ns AND excluded.avg_price != ''
                                    THEN excluded.avg_price ELSE orders.avg_price END,
                   text = CASE WHEN excluded.text != '' THEN excluded.text ELSE orders.text END,
                   qty = CASE WHEN orders.qty = '' THEN excluded.qty ELSE orders.qty END,
                   member_id = CASE WHEN orders.member_id = '' THEN excluded.member_id ELSE orders.member_id END,
                   symbol = CASE WHEN orders.symbol = '' THEN excluded.symbol ELSE orders.symbol END,
                   side = CASE WHEN orders.side = '' THEN excluded.side ELSE orders.side END,
                   venue = CASE WHEN orders.venue = '' THEN excluded.venue ELSE orders.venue END,
                   updated_ns = MAX(orders.updated_ns, excluded.updated_ns)""",
            (
                booking.order_id,
                r.client_order_id,
                r.strategy_id,
                member_id,
                r.symbol,
                side,
                _enum_name(common_pb2.OrderType, r.type),
                _enum_name(common_pb2.TimeInForce, r.time_in_force),
                r.order_qty,
                r.notional,
                r.limit_price,
                r.stop_price,
                status,
                r.cum_qty,
                r.avg_price,
                r.venue,
                r.text,
                booking.event_ns,
                booking.event_ns,
            ),
        )
        db.execute(
            "INSERT INTO order_events (execution_id, order_id, exec_type, status, payload, event_ns) VALUES (?, ?, ?, ?, ?, ?)",
            (
                r.execution_id,
                booking.order_id,
                _enum_name(executions_pb2.ExecType, r.exec_type),
                status,
                booking.payload,
                booking.event_ns,
            ),
        )
        result.events_stored += 1
        fill = booking.fill
        if fill is None:
            return
        cur = db.execute(
            """INSERT OR IGNORE INTO fills (execution_id, order_id, client_order_id, strategy_id, member_id, symbol,
                   side, qty, price, fee, venue, event_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                r.execution_id,
                booking.order_id,
                r.client_order_id,
                r.strategy_id,
                member_id,
                r.symbol,
                side,
                fmt(fill.qty),
                fmt(fill.price),
                fmt(fill.fee),
                r.venue,
                booking.event_ns,
            ),
        )
        inserted = cur.rowcount
        cur.close()
        if inserted != 1:  # belt and braces: the event row above already guards this
            result.duplicates.append(r.execution_id)
            return
        position = self._load_position(db, r.strategy_id, r.symbol)
        realized = position.apply_fill(fill.side, fill.qty, fill.price, fill.fee)
        db.execute(
            """INSERT INTO positions (strategy_id, symbol, qty, avg_cost, cost_basis, realized_pnl, fees, updated_ns)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(strategy_id, symbol) DO UPDATE SET qty = excluded.qty, avg_cost = excluded.avg_cost,
                   cost_basis = excluded.cost_basis, realized_pnl = excluded.realized_pnl, fees = excluded.fees,
                   updated_ns = excluded.updated_ns""",
            (
                r.strategy_id,
                r.symbol,
                fmt(position.qty),
                fmt(position.avg_cost),
                fmt(position.cost_basis),
                fmt(position.realized_pnl),
                fmt(position.fees),
                booking.event_ns,
            ),
        )
        account = self._load_account(db, r.strategy_id)
        account.apply_fill(fill.side, fill.qty, fill.price, fill.fee, realized)
        db.execute(
            "UPDATE accounts SET cash = ?, realized_pnl = ?, fees = ?, updated_ns = ? WHERE strategy_id = ?",
            (fmt(account.cash), fmt(account.realized_pnl), fmt(account.fees), booking.event_ns, r.strategy_id),
        )
        result.fills_booked += 1

    def _ensure_account(self, db: sqlite3.Connection, strategy_id: str, member_id: str, now_ns: int) -> str:
        """Make sure the strategy has an account; returns its member id (the report's, else the spec's)."""
        row = db.execute("SELECT member_id FROM accounts WHERE strategy_id = ?", (strategy_id,)).fetchone()
        if row is None:
            spec = db.execute(
                "SELECT member_id, initial_cash FROM strategies WHERE strategy_id = ?", (strategy_id,)
            ).fetchone()
            initial = dec(spec[1], self.default_initial_cash) if spec else self.default_initial_cash
            member = member_id or (spec[0] if spec else "")
            db.execute(
                "INSERT INTO accounts (strategy_id, member_id, initial_cash, cash, updated_ns) VALUES (?, ?, ?, ?, ?)",
                (strategy_id, member, fmt(initial), fmt(initial), now_ns),
            )
            return str(member)
        if not row[0] and member_id:
            db.execute("UPDATE accounts SET member_id = ? WHERE strategy_id = ?", (member_id, strategy_id))
            return member_id
        return member_id or str(row[0])

    @staticmethod
    def _load_position(db: sqlite3.Connection, strategy_id: str, symbol: str) -> Position:
        row = db.execute(
            "SELECT qty, cost_basis, realized_pnl, fees FROM positions WHERE strategy_id = ? AND symbol = ?",
            (strategy_id, symbol),
        ).fetchone()
        if row is None:
            return Position(symbol=symbol)
        return Position(symbol=symbol, qty=dec(row[0]), cost_basis=dec(row[1]), realized_pnl=dec(row[2]), fees=dec(row[3]))

    @staticmethod
    def _load_account(db: sqlite3.Connection, strategy_id: str) -> Account:
        row = db.execute(
            "SELECT initial_cash, cash, realized_pnl, fees FROM accounts WHERE strategy_id = ?", (strategy_id,)
        ).fetchone()
        assert row is not None, "account is created before any fill is booked"
        return Account(initial_cash=dec(row[0]), cash=dec(row[1]), realized_pnl=dec(row[2]), fees=dec(row[3]))

    async def upsert_strategy(
        self, strategy_id: str, member_id: str, initial_cash: Decimal | None, name: str, now_ns: int
    ) -> None:
        """Store a strategy spec and open its account (cash = initial cash) if it has none.

        If the account already exists with another initial cash (a fill came before the spec, or the
        spec changed), cash moves by the difference: P&L (equity - initial cash) is unchanged.
        """
        initial = initial_cash if initial_cash is not None else self.default_initial_cash
        async with self._write_lock:
            db = self.writer
            await db.execute("BEGIN IMMEDIATE")
            try:
                await db.execute(
                    """INSERT INTO strategies (strategy_id, member_id, initial_cash, name, updated_ns)
                       VALUES (?, ?, ?, ?, ?)
                       ON CONFLICT(strategy_id) DO UPDATE SET member_id = excluded.member_id,
                           initial_cash = excluded.initial_cash, name = excluded.name, updated_ns = excluded.updated_ns""",
                    (strategy_id, member_id, fmt(initial), name, now_ns),
                )
                async with db.execute(
                    "SELECT initial_cash, cash, member_id FROM accounts WHERE strategy_id = ?", (strategy_id,)
                ) as cur:
                    row = await cur.fetchone()
                if row is None:
                    await db.execute(
                        "INSERT INTO accounts (strategy_id, member_id, initial_cash, cash, updated_ns) VALUES (?, ?, ?, ?, ?)",
                        (strategy_id, member_id, fmt(initial), fmt(initial), now_ns),
                    )
                else:
                    old_initial, cash = dec(row[0]), dec(row[1])
                    await db.execute(
                        "UPDATE accounts SET initial_cash = ?, cash = ?, member_id = ? WHERE strategy_id = ?",
                        (fmt(initial), fmt(cash + initial - old_initial), member_id or row[2], strategy_id),
                    )
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise

    async def write_snapshots(self, rows: Iterable[ledger_pb2.EquityPoint]) -> int:
        """Insert equity snapshot rows in one transaction; returns how many."""
        values = [
            (p.strategy_id, p.ts_ns, p.equity, p.cash, p.realized_pnl, p.unrealized_pnl) for p in rows
        ]
        if not values:
            return 0
        async with self._write_lock:
            db = self.writer
            await db.execute("BEGIN IMMEDIATE")
            try:
                await db.executemany(
                    """INSERT OR REPLACE INTO equity_snapshots (strategy_id, ts_ns, equity, cash, realized, unrealized)
                       VALUES (?, ?, ?, ?, ?, ?)""",
                    values,
                )
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
        return len(values)

    # -- reads (reader connection) ---------------------------------------------------------------

    async def _fetchall(self, sql: str, params: Sequence[Any]) -> list[Any]:
        async with self.reader.execute(sql, tuple(params)) as cur:
            return list(await cur.fetchall())

    async def accounts(self, strategy_id: str = "", member_id: str = "") -> list[AccountRow]:
        where, params = _where(("strategy_id", strategy_id), ("member_id", member_id))
        rows = await self._fetchall(
            f"SELECT strategy_id, member_id, initial_cash, cash, realized_pnl, fees FROM accounts{where} ORDER BY strategy_id",
            params,
        )
        return [
            AccountRow(r[0], r[1], Account(initial_cash=dec(r[2]), cash=dec(r[3]), realized_pnl=dec(r[4]), fees=dec(r[5])))
            for r in rows
        ]

    async def positions(
        self, strategy_id: str = "", member_id: str = "", symbol: str = "", nonzero: bool = True
    ) -> list[PositionRow]:
        where, params = _where(("p.strategy_id", strategy_id), ("a.member_id", member_id), ("p.symbol", symbol))
        if nonzero:
            where += (" AND " if where else " WHERE ") + "p.qty != '0'"
        rows = await self._fetchall(
            f"""SELECT p.strategy_id, a.member_id, p.symbol, p.qty, p.cost_basis, p.realized_pnl, p.fees, p.updated_ns
                FROM positions p JOIN accounts a ON a.strategy_id = p.strategy_id{where}
                ORDER BY p.strategy_id, p.symbol""",
            params,
        )
        return [
            PositionRow(
                r[0],
                r[1],
                Position(symbol=r[2], qty=dec(r[3]), cost_basis=dec(r[4]), realized_pnl=dec(r[5]), fees=dec(r[6])),
                int(r[7]),
            )
            for r in rows
        ]

    async def fill_counts(self) -> dict[str, int]:
        rows = await self._fetchall("SELECT strategy_id, COUNT(*) FROM fills GROUP BY strategy_id", ())
        return {r[0]: int(r[1]) for r in rows}

    async def orders(self, query: ledger_pb2.LedgerQuery, limit: int) -> list[ledger_pb2.OrderRecord]:
        where, params = _where(
            ("strategy_id", query.strategy_id), ("member_id", query.member_id), ("symbol", query.symbol)
        )
        if query.since_ns:
            where += (" AND " if where else " WHERE ") + "updated_ns >= ?"
            params.append(query.since_ns)
        rows = await self._fetchall(
            f"""SELECT order_id, client_order_id, strategy_id, member_id, symbol, side, type, tif, qty, limit_price,
                       stop_price, status, filled_qty, avg_price, venue, text, created_ns, updated_ns, notional
                FROM orders{where} ORDER BY updated_ns DESC, rowid DESC LIMIT ?""",
            [*params, limit],
        )
        return [
            ledger_pb2.OrderRecord(
                order_id=r[0],
                client_order_id=r[1],
                strategy_id=r[2],
                member_id=r[3],
                symbol=r[4],
                side=_enum_value(common_pb2.Side, r[5]),  # type: ignore[arg-type]
                type=_enum_value(common_pb2.OrderType, r[6]),  # type: ignore[arg-type]
                time_in_force=_enum_value(common_pb2.TimeInForce, r[7]),  # type: ignore[arg-type]
                qty=r[8],
                limit_price=r[9],
                stop_price=r[10],
                status=_enum_value(executions_pb2.OrderStatus, r[11]),  # type: ignore[arg-type]
                filled_qty=r[12],
                avg_price=r[13],
                venue=r[14],
                text=r[15],
                created_ns=r[16],
                updated_ns=r[17],
                notional=r[18],
            )
            for r in rows
        ]

    async def fills(self, query: ledger_pb2.LedgerQuery, limit: int) -> list[ledger_pb2.Fill]:
        where, params = _where(
            ("strategy_id", query.strategy_id), ("member_id", query.member_id), ("symbol", query.symbol)
        )
        if query.since_ns:
            where += (" AND " if where else " WHERE ") + "event_ns >= ?"
            params.append(query.since_ns)
        rows = await self._fetchall(
            f"""SELECT execution_id, order_id, client_order_id, strategy_id, member_id, symbol, side, qty, price, fee,
                       venue, event_ns
                FROM fills{where} ORDER BY event_ns DESC, rowid DESC LIMIT ?""",
            [*params, limit],
        )
        return [
            ledger_pb2.Fill(
                execution_id=r[0],
                order_id=r[1],
                client_order_id=r[2],
                strategy_id=r[3],
                member_id=r[4],
                symbol=r[5],
                side=_enum_value(common_pb2.Side, r[6]),  # type: ignore[arg-type]
                qty=r[7],
                price=r[8],
                fee=r[9],
                venue=r[10],
                event_ns=r[11],
            )
            for r in rows
        ]

    async def equity(self, query: ledger_pb2.LedgerQuery, limit: int) -> list[ledger_pb2.EquityPoint]:
        """The newest ``limit`` snapshots matching ``query``, returned oldest first (a curve's tail)."""
        where, params = _where(("e.strategy_id", query.strategy_id), ("a.member_id", query.member_id))
        if query.since_ns:
            where += (" AND " if where else " WHERE ") + "e.ts_ns >= ?"
            params.append(query.since_ns)
        rows = await self._fetchall(
            f"""SELECT e.strategy_id, COALESCE(a.member_id, ''), e.ts_ns, e.equity, e.cash, e.realized, e.unrealized
                FROM equity_snapshots e LEFT JOIN accounts a ON a.strategy_id = e.strategy_id{where}
                ORDER BY e.ts_ns DESC, e.strategy_id DESC LIMIT ?""",
            [*params, limit],
        )
        rows.reverse()
        return [
            ledger_pb2.EquityPoint(
                strategy_id=r[0], member_id=r[1], ts_ns=r[2], equity=r[3], cash=r[4], realized_pnl=r[5], unrealized_pnl=r[6]
            )
            for r in rows
        ]


def _where(*filters: tuple[str, str]) -> tuple[str, list[Any]]:
    clauses = [f"{column} = ?" for column, value in filters if value]
    params: list[Any] = [value for _, value in filters if value]
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def now_ns() -> int:
    return time.time_ns()
