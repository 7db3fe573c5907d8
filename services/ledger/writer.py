"""The ledger's single writer: each batch of execution reports booked in ONE transaction, strategy specs, snapshots.

* Every write runs as one synchronous function on the writer connection's own thread
  (:class:`~services.ledger.connection.SQLiteThread`), under an ``asyncio.Lock`` so a batch, a
  strategy upsert and an equity snapshot never interleave inside one transaction.
* The writer holds the committed accounts and positions in memory (loaded per key on first use) and
  writes each one a batch touches once, with its final values; a rolled-back transaction leaves that
  copy as it was (:class:`_WriteSet`). Rows go in as multi-row ``INSERT ... VALUES`` statements.
* Decimals are stored as TEXT (``desk.bus.decimals.fmt``) and computed with ``Decimal`` only.
* Idempotency: ``order_events`` and ``fills`` are keyed by ``execution_id``; a report whose
  execution id is already stored changes nothing, so a redelivered batch books nothing twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import decimal
import functools
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from desk.bus.decimals import dec, fmt
from desk.core.books import Account, Booking, FillBooking, Position
from desk.v1 import common_pb2, executions_pb2, ledger_pb2
from services.ledger.connection import SQLiteThread
from services.ledger.rows import AccountRow, PositionRow, enum_name


@dataclass
class BatchResult:
    """What one committed batch did."""

    fills_booked: int = 0
    events_stored: int = 0
    duplicates: list[str] = field(default_factory=list)


#: A report's place in its order's life, for the ``orders`` row: a final status beats an open one, then
#: more filled beats less, then the later venue time. Venue time alone is not an order: the sim venue's
#: clock is its market data's, and a fill priced from one symbol's update can carry an earlier stamp
#: than the NEW of an order placed after another symbol's later bar (kill -9 suite, under load: the
#: row stayed NEW after its FILL). A report with no status (a cancel refused) never sets the status.
_FINALS = "('ORDER_STATUS_FILLED', 'ORDER_STATUS_CANCELED', 'ORDER_STATUS_EXPIRED', 'ORDER_STATUS_REJECTED')"
_PLACE = "({t}.status IN {finals}, COALESCE(CAST(NULLIF({t}.filled_qty, '') AS REAL), 0), {t}.updated_ns)"
_NEWER = (
    f"excluded.status NOT IN ('', 'ORDER_STATUS_UNSPECIFIED') AND "
    f"{_PLACE.format(t='excluded', finals=_FINALS)} >= {_PLACE.format(t='orders', finals=_FINALS)}"
)
_UPSERT_ORDER = f"""INSERT INTO orders (order_id, client_order_id, strategy_id, member_id, symbol, side, type, tif,
       qty, notional, limit_price, stop_price, status, filled_qty, avg_price, venue, text, created_ns, updated_ns)
   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
   ON CONFLICT(order_id) DO UPDATE SET
       status = CASE WHEN {_NEWER} THEN excluded.status ELSE orders.status END,
       filled_qty = CASE WHEN {_NEWER} AND excluded.filled_qty != '' THEN excluded.filled_qty ELSE orders.filled_qty END,
       avg_price = CASE WHEN {_NEWER} AND excluded.avg_price != '' THEN excluded.avg_price ELSE orders.avg_price END,
       text = CASE WHEN excluded.text != '' THEN excluded.text ELSE orders.text END,
       qty = CASE WHEN orders.qty = '' THEN excluded.qty ELSE orders.qty END,
       member_id = CASE WHEN orders.member_id = '' THEN excluded.member_id ELSE orders.member_id END,
       symbol = CASE WHEN orders.symbol = '' THEN excluded.symbol ELSE orders.symbol END,
       side = CASE WHEN orders.side = '' THEN excluded.side ELSE orders.side END,
       venue = CASE WHEN orders.venue = '' THEN excluded.venue ELSE orders.venue END,
       updated_ns = MAX(orders.updated_ns, excluded.updated_ns)"""
_INSERT_EVENT = (
    "INSERT INTO order_events (execution_id, order_id, exec_type, status, payload, event_ns) VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_FILL = """INSERT OR IGNORE INTO fills (execution_id, order_id, client_order_id, strategy_id, member_id, symbol,
       side, qty, price, fee, venue, event_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
_UPSERT_POSITION = """INSERT INTO positions (strategy_id, symbol, qty, avg_cost, cost_basis, realized_pnl, fees, updated_ns)
   VALUES (?, ?, ?, ?, ?, ?, ?, ?)
   ON CONFLICT(strategy_id, symbol) DO UPDATE SET qty = excluded.qty, avg_cost = excluded.avg_cost,
       cost_basis = excluded.cost_basis, realized_pnl = excluded.realized_pnl, fees = excluded.fees,
       updated_ns = excluded.updated_ns"""
_UPSERT_ACCOUNT = """INSERT INTO accounts (strategy_id, member_id, initial_cash, cash, realized_pnl, fees, updated_ns)
   VALUES (?, ?, ?, ?, ?, ?, ?)
   ON CONFLICT(strategy_id) DO UPDATE SET member_id = excluded.member_id, initial_cash = excluded.initial_cash,
       cash = excluded.cash, realized_pnl = excluded.realized_pnl, fees = excluded.fees,
       updated_ns = excluded.updated_ns"""
_UPSERT_STRATEGY = """INSERT INTO strategies (strategy_id, member_id, initial_cash, name, updated_ns)
   VALUES (?, ?, ?, ?, ?)
   ON CONFLICT(strategy_id) DO UPDATE SET member_id = excluded.member_id,
       initial_cash = excluded.initial_cash, name = excluded.name, updated_ns = excluded.updated_ns"""
_INSERT_SNAPSHOT = """INSERT OR REPLACE INTO equity_snapshots (strategy_id, ts_ns, equity, cash, realized, unrealized)
                       VALUES (?, ?, ?, ?, ?, ?)"""
#: Execution ids per ``IN (...)`` query: below SQLite's smallest host-parameter limit (999).
_IDS_PER_QUERY = 400
#: Most host parameters in one multi-row INSERT (SQLite's default limit is 32766 since 3.32).
_MAX_PARAMS = 32766


@functools.cache
def _split_values(sql: str) -> tuple[str, str, str]:
    """``INSERT ... VALUES (?, ...) [ON CONFLICT ...]`` -> (head, one row's ``(?, ...)``, tail)."""
    head, _, rest = sql.partition("VALUES (")
    group, _, tail = rest.partition(")")
    return head + "VALUES ", f"({group})", tail


def _insert_rows(db: sqlite3.Connection, sql: str, rows: Sequence[tuple[Any, ...]]) -> int:
    """Run the one-row ``sql`` for every row in order, as few multi-row statements: returns rows changed.

    One ``VALUES (...), (...), ...`` statement is one ``sqlite3_step`` (rows are inserted, and
    ON CONFLICT clauses applied, in order), where ``executemany`` steps, and hands the GIL back and
    forth with the event loop's thread, once per row.
    """
    if not rows:
        return 0
    head, group, tail = _split_values(sql)
    width = len(rows[0])
    limit = min(_MAX_PARAMS, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    per = max(1, limit // width)
    changed = 0
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        statement = head + ",".join([group] * len(chunk)) + tail
        cur = db.execute(statement, [value for row in chunk for value in row])
        changed += cur.rowcount
        cur.close()
    return changed


def _stored_ids(db: sqlite3.Connection, execution_ids: list[str]) -> tuple[set[str], set[str]]:
    """Which of ``execution_ids`` already have an ``order_events`` row, and which a ``fills`` row."""
    events: set[str] = set()
    fills: set[str] = set()
    unique = list(dict.fromkeys(execution_ids))
    for start in range(0, len(unique), _IDS_PER_QUERY):
        chunk = unique[start : start + _IDS_PER_QUERY]
        marks = ",".join("?" * len(chunk))
        rows = db.execute(
            f"SELECT execution_id, 0 FROM order_events WHERE execution_id IN ({marks})"
            f" UNION ALL SELECT execution_id, 1 FROM fills WHERE execution_id IN ({marks})",
            (*chunk, *chunk),
        ).fetchall()
        for execution_id, in_fills in rows:
            (fills if in_fills else events).add(execution_id)
    return events, fills


@dataclass
class _AccountState:
    """A committed ``accounts`` row, held by the writer."""

    member_id: str
    account: Account
    updated_ns: int

    def copy(self) -> _AccountState:
        return _AccountState(self.member_id, dataclasses.replace(self.account), self.updated_ns)


@dataclass
class _PositionState:
    """A committed ``positions`` row, held by the writer."""

    position: Position
    updated_ns: int

    def copy(self) -> _PositionState:
        return _PositionState(dataclasses.replace(self.position), self.updated_ns)


class _WriteSet:
    """One transaction's view of the writer's in-memory accounts and positions (copy-on-write).

    The first touch of a key copies the committed state (loaded from SQLite once, the first time
    any transaction needs it); the transaction changes only its copies. :meth:`write` stores each
    touched key once with its final values; :meth:`publish`, called only after COMMIT, makes the
    copies the committed state. A rolled-back transaction simply drops its write set, so the
    in-memory state always equals what is committed. Used on the writer's thread only.
    """

    def __init__(self, writer: LedgerWriter, db: sqlite3.Connection) -> None:
        self._writer, self._db = writer, db
        self.accounts: dict[str, _AccountState] = {}
        self.positions: dict[tuple[str, str], _PositionState] = {}
        self._written_accounts: set[str] = set()

    def account(self, strategy_id: str) -> _AccountState | None:
        state = self.accounts.get(strategy_id)
        if state is not None:
            return state
        committed = self._writer._committed_account(self._db, strategy_id)
        if committed is None:
            return None
        state = self.accounts[strategy_id] = committed.copy()
        return state

    def open_account(self, strategy_id: str, member_id: str, initial: Decimal, now_ns: int) -> _AccountState:
        state = self.accounts[strategy_id] = _AccountState(
            member_id, Account(initial_cash=initial, cash=initial), now_ns
        )
        return state

    def ensure_account(self, strategy_id: str, member_id: str, now_ns: int) -> str:
        """Open the strategy's account if it has none; returns its member id (the report's, else the spec's)."""
        state = self.account(strategy_id)
        if state is None:
            spec = self._db.execute(
                "SELECT member_id, initial_cash FROM strategies WHERE strategy_id = ?", (strategy_id,)
            ).fetchone()
            initial = dec(spec[1], self._writer.default_initial_cash) if spec else self._writer.default_initial_cash
            member = member_id or (str(spec[0]) if spec else "")
            self.open_account(strategy_id, member, initial, now_ns)
            return member
        if not state.member_id and member_id:
            state.member_id = member_id
            return member_id
        return member_id or state.member_id

    def position(self, strategy_id: str, symbol: str) -> _PositionState:
        key = (strategy_id, symbol)
        state = self.positions.get(key)
        if state is None:
            state = self.positions[key] = self._writer._committed_position(self._db, strategy_id, symbol).copy()
        return state

    def write_accounts(self, db: sqlite3.Connection) -> None:
        rows = [
            (
                sid,
                s.member_id,
                fmt(s.account.initial_cash),
                fmt(s.account.cash),
                fmt(s.account.realized_pnl),
                fmt(s.account.fees),
                s.updated_ns,
            )
            for sid, s in self.accounts.items()
            if sid not in self._written_accounts
        ]
        if rows:
            _insert_rows(db, _UPSERT_ACCOUNT, rows)
            self._written_accounts.update(self.accounts)

    def write(self, db: sqlite3.Connection) -> None:
        """The touched accounts (not yet written) and positions, one row each, final values."""
        self.write_accounts(db)
        if self.positions:
            _insert_rows(
                db,
                _UPSERT_POSITION,
                [
                    (
                        sid,
                        symbol,
                        fmt(s.position.qty),
                        fmt(s.position.avg_cost),
                        fmt(s.position.cost_basis),
                        fmt(s.position.realized_pnl),
                        fmt(s.position.fees),
                        s.updated_ns,
                    )
                    for (sid, symbol), s in self.positions.items()
                ],
            )

    def publish(self) -> None:
        self._writer._accounts.update(self.accounts)
        self._writer._positions.update(self.positions)


class LedgerWriter:
    """The single writer on the writer connection's thread; :attr:`lock` keeps its transactions in turn."""

    def __init__(self, db: SQLiteThread, default_initial_cash: Decimal) -> None:
        self._db = db
        self.default_initial_cash = default_initial_cash
        self.lock = asyncio.Lock()
        # The writer's copy of the committed accounts and positions, loaded per key on first use
        # (see _WriteSet); touched only on the writer connection's thread.
        self._accounts: dict[str, _AccountState] = {}
        self._positions: dict[tuple[str, str], _PositionState] = {}

    def forget(self) -> None:
        """Drop the in-memory copy (the file is being (re)opened): it is loaded again per key."""
        self._accounts, self._positions = {}, {}

    async def apply_batch(self, bookings: Sequence[Booking]) -> BatchResult:
        """Book ``bookings`` in ONE transaction; execution ids already stored are skipped.

        The whole transaction (BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error) runs as one
        synchronous function on the writer connection's own thread: one hand-off per batch instead of
        a dozen awaited statements per fill. The writer's thread runs one job at a time, in order, so
        nothing else can interleave with the transaction; the lock keeps our own writes in turn. If
        the caller is cancelled, the job still finishes (commit or rollback) on that thread; the
        caller then acks nothing, and the redelivered reports are skipped as duplicates.

        Accounts and positions are read from the writer's in-memory copy (see :class:`_WriteSet`),
        and each one the batch touches is written once, with its final values, in the same transaction.
        """
        result = BatchResult()
        if not bookings:
            return result
        context = decimal.getcontext().copy()  # the worker thread has its own decimal context
        async with self.lock:
            await self._db.run(self._apply_batch_sync, list(bookings), result, context)
        return result

    def _transaction(self, db: sqlite3.Connection, work: Callable[[_WriteSet], None]) -> None:
        """BEGIN IMMEDIATE, ``work``, write the touched accounts/positions, COMMIT; then (and only
        then) the in-memory copy takes the committed values. On any error: ROLLBACK, copy untouched."""
        changes = _WriteSet(self, db)
        db.execute("BEGIN IMMEDIATE")
        try:
            work(changes)
            changes.write(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        changes.publish()

    def _apply_batch_sync(
        self, db: sqlite3.Connection, bookings: list[Booking], result: BatchResult, context: decimal.Context
    ) -> None:
        with decimal.localcontext(context):
            self._transaction(db, lambda changes: self._book(db, changes, bookings, result))

    def _book(self, db: sqlite3.Connection, changes: _WriteSet, bookings: list[Booking], result: BatchResult) -> None:
        """Every statement of one batch: one duplicate check, then one multi-row insert per table
        (:func:`_insert_rows`), in an order the foreign keys accept (the touched accounts first)."""
        stored_events, stored_fills = _stored_ids(db, [b.report.execution_id for b in bookings])
        seen: set[str] = set()
        order_rows: list[tuple[Any, ...]] = []
        event_rows: list[tuple[Any, ...]] = []
        fill_rows: list[tuple[Any, ...]] = []
        for booking in bookings:
            r = booking.report
            execution_id = r.execution_id
            if execution_id in seen or execution_id in stored_events:
                result.duplicates.append(execution_id)
                continue
            seen.add(execution_id)
            event_ns = booking.event_ns
            member_id = changes.ensure_account(r.strategy_id, r.member_id, event_ns)
            side = enum_name(common_pb2.Side, r.side)
            status = enum_name(executions_pb2.OrderStatus, r.status)
            order_rows.append(_order_row(booking, member_id, side, status))
            event_rows.append(
                (
                    execution_id,
                    booking.order_id,
                    enum_name(executions_pb2.ExecType, r.exec_type),
                    status,
                    booking.payload,
                    event_ns,
                )
            )
            result.events_stored += 1
            fill = booking.fill
            if fill is None:
                continue
            if execution_id in stored_fills:  # belt and braces: the event row normally guards this
                result.duplicates.append(execution_id)
                continue
            fill_rows.append(
                (
                    execution_id,
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
                    event_ns,
                )
            )
            _apply_fill(changes, r.strategy_id, r.symbol, fill, event_ns)
            result.fills_booked += 1
        changes.write_accounts(db)  # before the rows that reference them
        _insert_rows(db, _UPSERT_ORDER, order_rows)
        _insert_rows(db, _INSERT_EVENT, event_rows)
        inserted = _insert_rows(db, _INSERT_FILL, fill_rows)
        if inserted != len(fill_rows):
            raise RuntimeError(f"{len(fill_rows) - inserted} fills of this batch were already stored")

    async def upsert_strategy(
        self, strategy_id: str, member_id: str, initial_cash: Decimal | None, name: str, now_ns: int
    ) -> None:
        """Store a strategy spec and open its account (cash = initial cash) if it has none.

        If the account already exists with another initial cash (a fill came before the spec, or the
        spec changed), cash moves by the difference: P&L (equity - initial cash) is unchanged. Runs on
        the writer's thread through the same in-memory accounts as the batches: one truth.
        """
        initial = initial_cash if initial_cash is not None else self.default_initial_cash
        context = decimal.getcontext().copy()
        async with self.lock:
            await self._db.run(self._upsert_strategy_sync, strategy_id, member_id, initial, name, now_ns, context)

    def _upsert_strategy_sync(
        self,
        db: sqlite3.Connection,
        strategy_id: str,
        member_id: str,
        initial: Decimal,
        name: str,
        now_ns: int,
        context: decimal.Context,
    ) -> None:
        def work(changes: _WriteSet) -> None:
            db.execute(_UPSERT_STRATEGY, (strategy_id, member_id, fmt(initial), name, now_ns))
            state = changes.account(strategy_id)
            if state is None:
                changes.open_account(strategy_id, member_id, initial, now_ns)
                return
            account = state.account
            account.cash = account.cash + initial - account.initial_cash
            account.initial_cash = initial
            state.member_id = member_id or state.member_id

        with decimal.localcontext(context):
            self._transaction(db, work)

    async def cached_books(self) -> tuple[dict[str, AccountRow], dict[tuple[str, str], PositionRow]]:
        """The writer's in-memory accounts and positions (copies; those loaded so far), for tests and checks."""

        def copy(_db: sqlite3.Connection) -> tuple[dict[str, AccountRow], dict[tuple[str, str], PositionRow]]:
            accounts = {
                k: AccountRow(k, s.member_id, dataclasses.replace(s.account)) for k, s in self._accounts.items()
            }
            positions = {
                k: PositionRow(
                    k[0],
                    accounts[k[0]].member_id if k[0] in accounts else "",
                    dataclasses.replace(s.position),
                    s.updated_ns,
                )
                for k, s in self._positions.items()
            }
            return accounts, positions

        async with self.lock:
            return await self._db.run(copy)

    def _committed_account(self, db: sqlite3.Connection, strategy_id: str) -> _AccountState | None:
        """The committed account of ``strategy_id`` (loaded once, then held), None if it has none."""
        state = self._accounts.get(strategy_id)
        if state is None:
            row = db.execute(
                "SELECT member_id, initial_cash, cash, realized_pnl, fees, updated_ns FROM accounts WHERE strategy_id = ?",
                (strategy_id,),
            ).fetchone()
            if row is None:
                return None
            account = Account(initial_cash=dec(row[1]), cash=dec(row[2]), realized_pnl=dec(row[3]), fees=dec(row[4]))
            state = self._accounts[strategy_id] = _AccountState(str(row[0]), account, int(row[5]))
        return state

    def _committed_position(self, db: sqlite3.Connection, strategy_id: str, symbol: str) -> _PositionState:
        """The committed position (flat if there is no row yet); loaded once, then held."""
        key = (strategy_id, symbol)
        state = self._positions.get(key)
        if state is None:
            row = db.execute(
                "SELECT qty, cost_basis, realized_pnl, fees, updated_ns FROM positions WHERE strategy_id = ? AND symbol = ?",
                key,
            ).fetchone()
            if row is None:
                return _PositionState(Position(symbol=symbol), 0)  # not held: nothing committed yet
            position = Position(
                symbol=symbol, qty=dec(row[0]), cost_basis=dec(row[1]), realized_pnl=dec(row[2]), fees=dec(row[3])
            )
            state = self._positions[key] = _PositionState(position, int(row[4]))
        return state

    async def write_snapshots(self, rows: Iterable[ledger_pb2.EquityPoint]) -> int:
        """Insert equity snapshot rows in one transaction; returns how many."""
        values = [(p.strategy_id, p.ts_ns, p.equity, p.cash, p.realized_pnl, p.unrealized_pnl) for p in rows]
        if not values:
            return 0
        async with self.lock:
            await self._db.run(_write_snapshots_sync, values)
        return len(values)


def _write_snapshots_sync(db: sqlite3.Connection, values: list[tuple[Any, ...]]) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        db.executemany(_INSERT_SNAPSHOT, values)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def now_ns() -> int:
    return time.time_ns()


def _order_row(booking: Booking, member_id: str, side: str, status: str) -> tuple[Any, ...]:
    """The ``orders`` row (an upsert) of one booked report."""
    r, event_ns = booking.report, booking.event_ns
    return (
        booking.order_id,
        r.client_order_id,
        r.strategy_id,
        member_id,
        r.symbol,
        side,
        enum_name(common_pb2.OrderType, r.type),
        enum_name(common_pb2.TimeInForce, r.time_in_force),
        r.order_qty,
        r.notional,
        r.limit_price,
        r.stop_price,
        status,
        r.cum_qty,
        r.avg_price,
        r.venue,
        r.text,
        event_ns,
        event_ns,
    )


def _apply_fill(changes: _WriteSet, strategy_id: str, symbol: str, fill: FillBooking, event_ns: int) -> None:
    """A fill on the strategy's position in ``symbol`` and on its account (cash, realized P&L)."""
    position = changes.position(strategy_id, symbol)
    realized = position.position.apply_fill(fill.side, fill.qty, fill.price, fill.fee)
    position.updated_ns = event_ns
    account = changes.account(strategy_id)
    assert account is not None, "the account is opened before any fill is booked"
    account.account.apply_fill(fill.side, fill.qty, fill.price, fill.fee, realized)
    account.updated_ns = event_ns
