"""The ledger's reads: accounts, positions, fill counts, orders, fills and equity curves, on the reader connection.

The reader is a second, read-only connection (``PRAGMA query_only``) on a thread of its own; WAL lets
it read while the writer writes. Each query is one hop to that thread (execute and fetch together).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import closing
from typing import Any, TypeVar

from google.protobuf.message import Message

from desk.bus.decimals import dec
from desk.core.books import Account, Position
from desk.v1 import common_pb2, executions_pb2, ledger_pb2
from services.ledger import schema
from services.ledger.connection import SQLiteThread
from services.ledger.rows import AccountRow, PositionRow, enum_value

M = TypeVar("M", bound=Message)


def _fetch(db: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[Any]:
    with closing(db.execute(sql, params)) as cur:
        return list(cur.fetchall())


class LedgerReads:
    """The queries behind the ledger's endpoints, on the reader connection ``db``."""

    def __init__(self, db: SQLiteThread) -> None:
        self._db = db

    async def schema_version(self) -> int:
        return await self._db.run(schema.schema_version)

    async def _fetchall(self, sql: str, params: Sequence[Any]) -> list[Any]:
        return await self._db.run(_fetch, sql, tuple(params))

    async def accounts(self, strategy_id: str = "", member_id: str = "") -> list[AccountRow]:
        where, params = _where(("strategy_id", strategy_id), ("member_id", member_id))
        rows = await self._fetchall(
            f"SELECT strategy_id, member_id, initial_cash, cash, realized_pnl, fees FROM accounts{where} ORDER BY strategy_id",
            params,
        )
        return [
            AccountRow(
                r[0], r[1], Account(initial_cash=dec(r[2]), cash=dec(r[3]), realized_pnl=dec(r[4]), fees=dec(r[5]))
            )
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
        """The newest ``limit`` orders matching ``query`` (updated since ``since_ns``), newest first."""
        return await self._newest(ledger_pb2.OrderRecord, "orders", _ORDER_COLUMNS, "updated_ns", query, limit)

    async def fills(self, query: ledger_pb2.LedgerQuery, limit: int) -> list[ledger_pb2.Fill]:
        """The newest ``limit`` fills matching ``query`` (since ``since_ns``), newest first."""
        return await self._newest(ledger_pb2.Fill, "fills", _FILL_COLUMNS, "event_ns", query, limit)

    async def _newest(
        self,
        message: type[M],
        table: str,
        columns: Sequence[Column],
        time_column: str,
        query: ledger_pb2.LedgerQuery,
        limit: int,
    ) -> list[M]:
        """Rows of ``table`` (each with strategy_id, member_id and symbol) matching ``query``, newest
        ``time_column`` first, as ``message``s: one field per column, enums read back from their names."""
        where, params = _where(
            ("strategy_id", query.strategy_id),
            ("member_id", query.member_id),
            ("symbol", query.symbol),
            since=(time_column, query.since_ns),
        )
        rows = await self._fetchall(
            f"""SELECT {", ".join(column for _, column, _ in columns)}
                FROM {table}{where} ORDER BY {time_column} DESC, rowid DESC LIMIT ?""",
            [*params, limit],
        )
        return [_message(message, columns, row) for row in rows]

    async def equity(self, query: ledger_pb2.LedgerQuery, limit: int) -> list[ledger_pb2.EquityPoint]:
        """The newest ``limit`` snapshots matching ``query``, returned oldest first (a curve's tail)."""
        where, params = _where(
            ("e.strategy_id", query.strategy_id), ("a.member_id", query.member_id), since=("e.ts_ns", query.since_ns)
        )
        rows = await self._fetchall(
            f"""SELECT e.strategy_id, COALESCE(a.member_id, ''), e.ts_ns, e.equity, e.cash, e.realized, e.unrealized
                FROM equity_snapshots e LEFT JOIN accounts a ON a.strategy_id = e.strategy_id{where}
                ORDER BY e.ts_ns DESC, e.strategy_id DESC LIMIT ?""",
            [*params, limit],
        )
        rows.reverse()
        return [
            ledger_pb2.EquityPoint(
                strategy_id=r[0],
                member_id=r[1],
                ts_ns=r[2],
                equity=r[3],
                cash=r[4],
                realized_pnl=r[5],
                unrealized_pnl=r[6],
            )
            for r in rows
        ]


def _where(*filters: tuple[str, str], since: tuple[str, int] = ("", 0)) -> tuple[str, list[Any]]:
    """`` WHERE column = ? AND ...`` for the filters given a value (and ``since``'s column ``>= ?``
    when its value is set), with its parameters; ``""`` for none."""
    clauses = [f"{column} = ?" for column, value in filters if value]
    params: list[Any] = [value for _, value in filters if value]
    since_column, since_ns = since
    if since_ns:
        clauses.append(f"{since_column} >= ?")
        params.append(since_ns)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _message(message: type[M], columns: Sequence[Column], row: Sequence[Any]) -> M:
    values = {
        field: value if enum is None else enum_value(enum, value)
        for (field, _, enum), value in zip(columns, row, strict=True)
    }
    return message(**values)


Column = tuple[str, str, Any]
"""A message field, the column it is read from, and its protobuf enum when the column holds an enum's name."""

_ENUM_OF: dict[str, Any] = {
    "side": common_pb2.Side,
    "type": common_pb2.OrderType,
    "time_in_force": common_pb2.TimeInForce,
    "status": executions_pb2.OrderStatus,
}
_COLUMN_OF = {"time_in_force": "tif"}  # the other fields are read from the column of their name


def _columns(fields: str) -> tuple[Column, ...]:
    return tuple((field, _COLUMN_OF.get(field, field), _ENUM_OF.get(field)) for field in fields.split())


#: ledger_pb2.OrderRecord from the orders table, ledger_pb2.Fill from the fills table.
_ORDER_COLUMNS = _columns(
    "order_id client_order_id strategy_id member_id symbol side type time_in_force qty "
    "limit_price stop_price status filled_qty avg_price venue text created_ns updated_ns notional"
)
_FILL_COLUMNS = _columns(
    "execution_id order_id client_order_id strategy_id member_id symbol side qty price fee venue event_ns"
)
