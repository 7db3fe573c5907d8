"""The ledger's SQLite file, opened: its two connections, the schema brought up to date, writer and reads.

* Two connections, each a stdlib ``sqlite3`` connection on a thread the ledger owns
  (:class:`~services.ledger.connection.SQLiteThread`): the writer's (:mod:`services.ledger.writer`,
  the only one that writes, one transaction per batch) and a read-only one for the queries
  (:mod:`services.ledger.reads`); WAL lets it read while the writer writes.
* ``journal_mode=WAL`` and ``synchronous=FULL``: the ledger acks an execution only after its
  transaction commits, and the ack is the only thing that stops JetStream from redelivering it.
  With ``NORMAL`` a commit in WAL mode can be lost on power failure *after* we acked, which would
  lose a fill for good; ``FULL`` syncs the WAL on every commit. One commit per batch keeps the
  cost small.
* On open, the writer migrates the file to this code's schema (:mod:`services.ledger.schema`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Self

from desk.core.books import Booking
from desk.v1 import ledger_pb2
from services.ledger import schema
from services.ledger.connection import SQLiteThread
from services.ledger.reads import LedgerReads
from services.ledger.rows import AccountRow, PositionRow
from services.ledger.writer import BatchResult, LedgerWriter

WRITER_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
)
READER_PRAGMAS = ("PRAGMA query_only=ON", "PRAGMA busy_timeout=5000")


class LedgerStore:
    """The ledger's SQLite file. ``open()`` before use, ``close()`` after."""

    def __init__(self, path: str | Path, default_initial_cash: Decimal = Decimal(100000)) -> None:
        self.path = Path(path)
        self.default_initial_cash = default_initial_cash
        self._writer_db = SQLiteThread("ledger-writer")
        self._reader_db = SQLiteThread("ledger-reader")
        self.writer = LedgerWriter(self._writer_db, default_initial_cash)
        self.reads = LedgerReads(self._reader_db)

    # -- life cycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer.forget()
        await self._writer_db.open(self.path, WRITER_PRAGMAS)
        await self._writer_db.run(schema.migrate, self.path)
        await self._reader_db.open(self.path, READER_PRAGMAS)

    async def close(self) -> None:
        async with self.writer.lock:
            for db in (self._reader_db, self._writer_db):
                await db.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- writes (the single writer) -------------------------------------------------------------

    async def apply_batch(self, bookings: Sequence[Booking]) -> BatchResult:
        """Book ``bookings`` in ONE transaction (:meth:`LedgerWriter.apply_batch`)."""
        return await self.writer.apply_batch(bookings)

    async def upsert_strategy(
        self, strategy_id: str, member_id: str, initial_cash: Decimal | None, name: str, now_ns: int
    ) -> None:
        """Store a strategy spec and open or re-base its account (:meth:`LedgerWriter.upsert_strategy`)."""
        await self.writer.upsert_strategy(strategy_id, member_id, initial_cash, name, now_ns)

    async def write_snapshots(self, rows: Iterable[ledger_pb2.EquityPoint]) -> int:
        """Insert equity snapshot rows in one transaction; returns how many."""
        return await self.writer.write_snapshots(rows)

    async def cached_books(self) -> tuple[dict[str, AccountRow], dict[tuple[str, str], PositionRow]]:
        """The writer's in-memory accounts and positions (copies), for tests and checks."""
        return await self.writer.cached_books()

    # -- reads (the reader connection) ----------------------------------------------------------

    async def schema_version(self) -> int:
        return await self.reads.schema_version()

    async def accounts(self, strategy_id: str = "", member_id: str = "") -> list[AccountRow]:
        return await self.reads.accounts(strategy_id, member_id)

    async def positions(
        self, strategy_id: str = "", member_id: str = "", symbol: str = "", nonzero: bool = True
    ) -> list[PositionRow]:
        return await self.reads.positions(strategy_id, member_id, symbol, nonzero)

    async def fill_counts(self) -> dict[str, int]:
        return await self.reads.fill_counts()

    async def orders(self, query: ledger_pb2.LedgerQuery, limit: int) -> list[ledger_pb2.OrderRecord]:
        return await self.reads.orders(query, limit)

    async def fills(self, query: ledger_pb2.LedgerQuery, limit: int) -> list[ledger_pb2.Fill]:
        return await self.reads.fills(query, limit)

    async def equity(self, query: ledger_pb2.LedgerQuery, limit: int) -> list[ledger_pb2.EquityPoint]:
        """The newest ``limit`` snapshots matching ``query``, returned oldest first (a curve's tail)."""
        return await self.reads.equity(query, limit)
