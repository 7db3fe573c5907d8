"""The ledger's reads: accounts, positions, fill counts, orders, fills and equity curves, on the reader connection.

The reader is a second, read-only connection (``PRAGMA query_only``) on a thread of its own; WAL lets
it read while the writer writes. Each query is one hop to that thread (execute and fetch together).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import closing
from typing import Any

from desk.bus.decimals import dec
from desk.core.books import Account, Position
from desk.v1 import common_pb2, executions_pb2, ledger_pb2
from services.ledger import schema
from services.ledger.connection import SQLiteThread
from services.ledger.rows import AccountRow, PositionRow, enum_value


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
                side=enum_value(common_pb2.Side, r[5]),  # type: ignore[arg-type]
                type=enum_value(common_pb2.OrderType, r[6]),  # type: ignore[arg-type]
                time_in_force=enum_value(common_pb2.TimeInForce, r[7]),  # type: ignore[arg-type]
                qty=r[8],
                limit_price=r[9],
                stop_price=r[10],
                status=enum_value(executions_pb2.OrderStatus, r[11]),  # type: ignore[arg-type]
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
                side=enum_value(common_pb2.Side, r[6]),  # type: ignore[arg-type]
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


