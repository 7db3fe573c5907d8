"""What the pages show, read over the bus: ledger queries, orchestrator control, the router's kill
switch, NATS micro PING/STATS and the DESK_PRICES bucket. Never the SQLite file.

Each page's data is a plain dict (rendered by the templates and served as JSON). A desk service that
does not answer is reported on the page (``errors``) instead of failing the whole page.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Mapping, Sequence
from decimal import Decimal
from typing import Any, TypeVar

import nats.errors
from google.protobuf.message import Message
from nats.aio.client import Client

from desk.bus import codec, subjects
from desk.bus.decimals import dec
from desk.bus.errors import DeskError
from desk.bus.logging import get_logger
from desk.bus.request import request
from desk.v1 import common_pb2, executions_pb2, ledger_pb2, marketdata_pb2, orders_pb2, strategy_pb2
from services.dashboard import metrics
from services.dashboard.live import LiveFeed

log = get_logger("dashboard")
R = TypeVar("R", bound=Message)
T = TypeVar("T")
EQUITY_POINTS = 1000  # the ledger's per-query maximum
TABLE_ROWS = 25
LOG_LINES = 60
CENTS = Decimal("0.01")


class Unavailable(Exception):
    """A desk service did not answer (or refused); the page says so."""


def pct(fraction: Decimal | None) -> str:
    return "" if fraction is None else f"{fraction * 100:.2f}"


def ratio(value: Decimal | None) -> str:
    return "" if value is None else f"{value:.2f}"


def money(value: Decimal) -> str:
    return _no_negative_zero(f"{value:,.2f}")


def price_text(value: str) -> str:
    """A USD price to the cent ("187.123456" -> "187.12"); "" stays ""."""
    if not value:
        return ""
    try:
        return _no_negative_zero(f"{Decimal(value):.2f}")
    except ArithmeticError:
        return value


def qty_text(value: str) -> str:
    """A quantity without trailing zeros ("10.000000" -> "10", "0.5000" -> "0.5")."""
    if not value:
        return ""
    try:
        number = Decimal(value)
    except ArithmeticError:
        return value
    text = f"{number:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return _no_negative_zero(text) or "0"


def money_text(value: str) -> str:
    """A money string from the ledger to the cent, with thousands separators."""
    if not value:
        return ""
    try:
        return money(Decimal(value))
    except ArithmeticError:
        return value


def return_text(value: Decimal) -> str:
    """Percent with three places: desk returns are often small fractions of a percent."""
    return _no_negative_zero(f"{value:.3f}")


def _no_negative_zero(text: str) -> str:
    return text[1:] if text.startswith("-") and not text.strip("-0.,") else text


def performance_row(p: metrics.Performance, rank: int) -> dict[str, Any]:
    return {
        "rank": rank,
        "key": p.key,
        "member_id": p.member_id,
        "equity": money(p.equity),
        "total_pnl": money(p.total_pnl),
        "return_pct": return_text(p.return_pct),
        "max_drawdown_pct": pct(p.max_drawdown),
        "sharpe": ratio(p.sharpe),
        "trades": p.trades,
        "strategies": p.strategies,
    }


def split_traded(rows: Sequence[metrics.Performance]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows with at least one fill, ranked; the others apart (unranked, by name): a strategy that
    never traded has a return of 0, which would rank it above every one that lost a cent."""
    traded = [performance_row(p, i) for i, p in enumerate(metrics.rank(r for r in rows if r.trades > 0), 1)]
    untraded = [performance_row(p, 0) for p in sorted((r for r in rows if r.trades <= 0), key=lambda r: r.key)]
    return traded, untraded


def series(points: Sequence[ledger_pb2.EquityPoint]) -> list[metrics.Point]:
    return [(p.ts_ns, dec(p.equity)) for p in points]


class DeskReader:
    """Typed requests to the desk's services with one timeout; construction does no I/O."""

    def __init__(self, nc: Client, live: LiveFeed, timeout: float, service_names: Sequence[str]) -> None:
        self.nc = nc
        self.live = live
        self.timeout = timeout
        self.service_names = list(service_names)

    async def _ask(self, subject: str, message: Message, reply_type: type[R]) -> R:
        try:
            return await request(self.nc, subject, message, reply_type, timeout=self.timeout)
        except DeskError as err:
            raise Unavailable(f"{subject}: {err.code}: {err.message}") from err
        except nats.errors.NoRespondersError as err:
            raise Unavailable(f"{subject}: no service is answering") from err
        except nats.errors.TimeoutError as err:
            raise Unavailable(f"{subject}: no answer within {self.timeout:g} s") from err

    @staticmethod
    async def _soft(what: Awaitable[T], default: T, errors: list[str]) -> T:
        try:
            return await what
        except Unavailable as exc:
            errors.append(str(exc))
            log.warning("dashboard.query_failed", error=str(exc))
            return default

    async def _ask_soft(self, subject: str, message: Message, reply_type: type[R], errors: list[str]) -> R:
        """:meth:`_ask`, or an empty ``reply_type`` with the error noted in ``errors``."""
        return await self._soft(self._ask(subject, message, reply_type), reply_type(), errors)

    async def equity_series(self, strategy_id: str) -> list[metrics.Point]:
        reply = await self._ask(
            subjects.LEDGER_EQUITY,
            ledger_pb2.LedgerQuery(strategy_id=strategy_id, limit=EQUITY_POINTS),
            ledger_pb2.EquityReply,
        )
        return series([p for p in reply.points if p.strategy_id == strategy_id])

    # -- leaderboard ----------------------------------------------------------------------------

    async def leaderboard(self) -> dict[str, Any]:
        errors: list[str] = []
        pnl = await self._ask_soft(subjects.LEDGER_PNL, ledger_pb2.LedgerQuery(), ledger_pb2.PnlReply, errors)
        curves_list = await asyncio.gather(
            *(self._soft(self.equity_series(row.strategy_id), [], errors) for row in pnl.strategies)
        )
        curves = {row.strategy_id: curve for row, curve in zip(pnl.strategies, curves_list, strict=True)}
        strategies = [
            metrics.Performance(
                key=row.strategy_id,
                member_id=row.member_id,
                equity=dec(row.equity),
                total_pnl=dec(row.total_pnl),
                return_pct=dec(row.return_pct),
                max_drawdown=metrics.max_drawdown(v for _, v in curves[row.strategy_id]),
                sharpe=metrics.sharpe_ratio(curves[row.strategy_id]),
                trades=row.fills,
            )
            for row in pnl.strategies
        ]
        members = []
        for row in pnl.members:
            own = {s.strategy_id: curves[s.strategy_id] for s in pnl.strategies if s.member_id == row.member_id}
            combined = metrics.combine_series(own)
            members.append(
                metrics.Performance(
                    key=row.member_id,
                    member_id=row.member_id,
                    equity=dec(row.equity),
                    total_pnl=dec(row.total_pnl),
                    return_pct=dec(row.return_pct),
                    max_drawdown=metrics.max_drawdown(v for _, v in combined),
                    sharpe=metrics.sharpe_ratio(combined),
                    trades=row.fills,
                    strategies=len(own),
                )
            )
        ranked_strategies, untraded_strategies = split_traded(strategies)
        ranked_members, untraded_members = split_traded(members)
        return {
            "strategies": ranked_strategies,
            "members": ranked_members,
            "untraded_strategies": untraded_strategies,
            "untraded_members": untraded_members,
            "errors": errors,
        }

    # -- one strategy ---------------------------------------------------------------------------

    async def _strategy_books(self, strategy_id: str, errors: list[str]) -> tuple[Any, ...]:
        query = ledger_pb2.LedgerQuery(strategy_id=strategy_id, limit=TABLE_ROWS)
        control = strategy_pb2.StrategyControl(strategy_id=strategy_id)
        # Two gathers of four: asyncio.gather is typed for at most six awaitables.
        status, specs, pnl, logs = await asyncio.gather(
            self._ask_soft(subjects.CTL_STATUS, control, strategy_pb2.StrategyStatusList, errors),
            self._ask_soft(subjects.CTL_LIST, control, strategy_pb2.StrategyList, errors),
            self._ask_soft(
                subjects.LEDGER_PNL, ledger_pb2.LedgerQuery(strategy_id=strategy_id), ledger_pb2.PnlReply, errors
            ),
            self._ask_soft(
                subjects.CTL_LOGS,
                strategy_pb2.LogsRequest(strategy_id=strategy_id, tail=LOG_LINES),
                strategy_pb2.LogsReply,
                errors,
            ),
        )
        positions, orders, fills, curve = await asyncio.gather(
            self._ask_soft(subjects.LEDGER_POSITIONS, query, ledger_pb2.PositionsReply, errors),
            self._ask_soft(subjects.LEDGER_ORDERS, query, ledger_pb2.OrdersReply, errors),
            self._ask_soft(
                subjects.LEDGER_FILLS,
                ledger_pb2.LedgerQuery(strategy_id=strategy_id, limit=1000),
                ledger_pb2.FillsReply,
                errors,
            ),
            self._soft(self.equity_series(strategy_id), [], errors),
        )
        return status, specs, pnl, logs, positions, orders, fills, curve

    async def strategy(self, strategy_id: str) -> dict[str, Any] | None:
        """The strategy page's data; None when the desk knows no such strategy (no spec, no status,
        no books), so the page can answer 404 instead of showing the services' errors."""
        errors: list[str] = []
        status, specs, pnl, logs, positions, orders, fills, curve = await self._strategy_books(strategy_id, errors)
        spec = next((s for s in specs.strategies if s.strategy_id == strategy_id), None)
        row = next((r for r in pnl.strategies if r.strategy_id == strategy_id), None)
        st = next((s for s in status.strategies if s.strategy_id == strategy_id), None)
        if spec is None and row is None and st is None and not fills.fills:
            return None
        # Benchmark: buy-and-hold of the strategy's first traded symbol (its earliest fill; the
        # fills come newest first), or of its first configured symbol before it has traded.
        first_symbol = fills.fills[-1].symbol if fills.fills else (spec.symbols[0] if spec and spec.symbols else "")
        prices = await self._soft(self.price_path(first_symbol), [], errors) if first_symbol else []
        benchmark = metrics.buy_and_hold(curve, prices)
        return {
            "strategy_id": strategy_id,
            "member_id": (row.member_id if row else "")
            or (spec.member_id if spec else "")
            or (st.member_id if st else ""),
            "name": spec.name if spec else "",
            "description": spec.description if spec else "",
            "symbols": list(spec.symbols) if spec else [],
            "status": _status(st),
            "desk_halted": status.desk_halted,
            "heartbeat": self.live.heartbeats.get(strategy_id),
            "pnl": _pnl(row),
            "max_drawdown_pct": pct(metrics.max_drawdown(v for _, v in curve)),
            "sharpe": ratio(metrics.sharpe_ratio(curve)),
            "benchmark_symbol": first_symbol,
            # Seconds, not nanoseconds: JavaScript numbers are exact only up to 2**53.
            "equity": [[ts / 1e9, str(v)] for ts, v in curve],
            "drawdown": drawdown_points(curve),
            "benchmark": [[ts / 1e9, str(v.quantize(CENTS))] for ts, v in benchmark],
            "price": price_points(prices),
            "trades": trade_points(fills.fills, first_symbol),
            "positions": [_position(p) for p in positions.positions],
            "orders": [_order(o) for o in orders.orders],
            "fills": [_fill(f) for f in fills.fills[:TABLE_ROWS]],
            "logs": list(logs.lines),
            "errors": errors,
        }

    # -- one member -------------------------------------------------------------------------------

    async def member_strategies(self, member_id: str, errors: list[str]) -> tuple[list[str], ledger_pb2.PnlReply]:
        """The member's strategy ids (booked in the ledger or known to the orchestrator), and their P&L."""
        pnl, status = await asyncio.gather(
            self._ask_soft(
                subjects.LEDGER_PNL, ledger_pb2.LedgerQuery(member_id=member_id), ledger_pb2.PnlReply, errors
            ),
            self._ask_soft(
                subjects.CTL_STATUS, strategy_pb2.StrategyControl(), strategy_pb2.StrategyStatusList, errors
            ),
        )
        ids = {r.strategy_id for r in pnl.strategies if r.member_id == member_id}
        ids |= {s.strategy_id for s in status.strategies if s.member_id == member_id}
        return sorted(ids), pnl

    async def member(self, member_id: str) -> dict[str, Any] | None:
        """The member page's data; None when no strategy on the desk is the member's."""
        errors: list[str] = []
        ids, pnl = await self.member_strategies(member_id, errors)
        if not ids:
            return None
        query = ledger_pb2.LedgerQuery(member_id=member_id, limit=TABLE_ROWS)
        status, positions, orders, fills = await asyncio.gather(
            self._ask_soft(
                subjects.CTL_STATUS, strategy_pb2.StrategyControl(), strategy_pb2.StrategyStatusList, errors
            ),
            self._ask_soft(subjects.LEDGER_POSITIONS, query, ledger_pb2.PositionsReply, errors),
            self._ask_soft(subjects.LEDGER_ORDERS, query, ledger_pb2.OrdersReply, errors),
            self._ask_soft(subjects.LEDGER_FILLS, query, ledger_pb2.FillsReply, errors),
        )
        curves = await asyncio.gather(*(self._soft(self.equity_series(i), [], errors) for i in ids))
        combined = metrics.combine_series(dict(zip(ids, curves, strict=True)))
        states = {s.strategy_id: _status(s) for s in status.strategies if s.member_id == member_id}
        rows = {r.strategy_id: r for r in pnl.strategies}
        total = next((r for r in pnl.members if r.member_id == member_id), None)
        return {
            "member_id": member_id,
            "strategies": [
                {
                    "strategy_id": i,
                    "state": states[i]["state"] if i in states else "unknown",
                    "halted": bool(states[i]["halted"]) if i in states else False,
                    "pnl": _pnl(rows.get(i)),
                }
                for i in ids
            ],
            "desk_halted": status.desk_halted,
            "pnl": _pnl(total),
            "max_drawdown_pct": pct(metrics.max_drawdown(v for _, v in combined)),
            "sharpe": ratio(metrics.sharpe_ratio(combined)),
            "equity": [[ts / 1e9, str(v)] for ts, v in combined],
            "drawdown": drawdown_points(combined),
            "positions": [_position(p) for p in positions.positions if p.member_id == member_id],
            "orders": [_order(o) for o in orders.orders if o.member_id == member_id],
            "fills": [_fill(f) for f in fills.fills if f.member_id == member_id],
            "logs": {},
            "errors": errors,
        }

    async def logs(self, strategy_id: str, tail: int = LOG_LINES) -> list[str]:
        reply = await self._ask(
            subjects.CTL_LOGS, strategy_pb2.LogsRequest(strategy_id=strategy_id, tail=tail), strategy_pb2.LogsReply
        )
        return list(reply.lines)

    async def price_path(self, symbol: str) -> list[metrics.Point]:
        """The symbol's prices, oldest first: the feed's trades the dashboard recorded since it
        started, and before those the desk's fill prices in that symbol (any strategy's, from the
        ledger), so a benchmark reaches back before the dashboard's own start."""
        live = list(self.live.prices.get(symbol, ()))
        reply = await self._ask(
            subjects.LEDGER_FILLS, ledger_pb2.LedgerQuery(symbol=symbol, limit=EQUITY_POINTS), ledger_pb2.FillsReply
        )
        start = live[0][0] if live else None
        earlier = sorted((f.event_ns, dec(f.price)) for f in reply.fills if start is None or f.event_ns < start)
        return earlier + live

    # -- the desk -------------------------------------------------------------------------------

    async def _micro(self, name: str) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            ping = await self.nc.request(f"$SRV.PING.{name}", b"", timeout=self.timeout)
            rtt_ms = (time.perf_counter() - started) * 1000
            stats_msg = await self.nc.request(f"$SRV.STATS.{name}", b"", timeout=self.timeout)
            info, stats = json.loads(ping.data), json.loads(stats_msg.data)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return {
                "name": name,
                "up": False,
                "version": "",
                "id": "",
                "rtt_ms": "",
                "started": "",
                "requests": 0,
                "errors": 0,
                "endpoints": [],
            }
        except ValueError as exc:
            return {
                "name": name,
                "up": False,
                "version": "",
                "id": "",
                "rtt_ms": "",
                "started": str(exc),
                "requests": 0,
                "errors": 0,
                "endpoints": [],
            }
        endpoints = stats.get("endpoints") or []
        return {
            "name": name,
            "up": True,
            "version": str(info.get("version", "")),
            "id": str(info.get("id", "")),
            "rtt_ms": f"{rtt_ms:.1f}",
            "started": str(stats.get("started", "")),
            "requests": sum(int(e.get("num_requests", 0)) for e in endpoints),
            "errors": sum(int(e.get("num_errors", 0)) for e in endpoints),
            "endpoints": [
                {
                    "name": str(e.get("name", "")),
                    "subject": str(e.get("subject", "")),
                    "requests": int(e.get("num_requests", 0)),
                    "errors": int(e.get("num_errors", 0)),
                    "refusals": json.dumps((e.get("data") or {}).get("errors", {}), sort_keys=True),
                }
                for e in endpoints
            ],
        }

    async def prices(self) -> list[dict[str, str]]:
        try:
            kv = await self.nc.jetstream().key_value(subjects.KV_PRICES)
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            return []
        except (nats.js.errors.BucketNotFoundError, nats.errors.TimeoutError) as exc:
            raise Unavailable(f"KV {subjects.KV_PRICES}: {exc!r}") from exc
        rows = []
        for key in sorted(keys):
            try:
                entry = await kv.get(key)
                trade = codec.decode(entry.value or b"", marketdata_pb2.Trade)
            except (nats.js.errors.KeyNotFoundError, DeskError):
                continue
            rows.append({"symbol": key, "price": trade.price, "ts_ns": str(trade.ts_ns), "source": trade.source})
        return rows

    async def _prices_soft(self) -> list[dict[str, str]]:
        return await self.prices()

    async def desk(self) -> dict[str, Any]:
        errors: list[str] = []
        services, risk, prices, status = await asyncio.gather(
            asyncio.gather(*(self._micro(name) for name in self.service_names)),
            self._soft(self._ask(subjects.RISK_STATUS, orders_pb2.HaltRequest(), orders_pb2.HaltAck), None, errors),
            self._soft(self._prices_soft(), [], errors),
            self._ask_soft(
                subjects.CTL_STATUS, strategy_pb2.StrategyControl(), strategy_pb2.StrategyStatusList, errors
            ),
        )
        return {
            "services": list(services),
            "risk": None
            if risk is None
            else {
                "known": True,
                "global_halted": risk.global_halted,
                "halted_strategies": list(risk.halted_strategies),
            },
            "prices": prices,
            "strategies": [_status(s) for s in status.strategies],
            "desk_halted": status.desk_halted,
            "errors": errors,
        }

    # -- operator actions -------------------------------------------------------------------------

    async def halt(self, strategy_id: str, resume: bool, requested_by: str, reason: str) -> orders_pb2.HaltAck:
        subject = subjects.RISK_RESUME if resume else subjects.RISK_HALT
        return await self._ask(
            subject,
            orders_pb2.HaltRequest(strategy_id=strategy_id, reason=reason, requested_by=requested_by),
            orders_pb2.HaltAck,
        )

    async def control(self, action: str, strategy_id: str) -> strategy_pb2.StrategyStatusList:
        subject = {"start": subjects.CTL_START, "stop": subjects.CTL_STOP}[action]
        return await self._ask(
            subject, strategy_pb2.StrategyControl(strategy_id=strategy_id), strategy_pb2.StrategyStatusList
        )


# -- rows ---------------------------------------------------------------------------------------------


def _status(s: strategy_pb2.StrategyStatus | None) -> dict[str, Any]:
    if s is None:
        return {
            "strategy_id": "",
            "state": "unknown",
            "restarts": 0,
            "last_error": "",
            "pid": 0,
            "started_ns": 0,
            "last_heartbeat_ns": 0,
            "member_id": "",
            "halted": False,
        }
    return {
        "strategy_id": s.strategy_id,
        "member_id": s.member_id,
        "state": codec.enum_word(strategy_pb2.StrategyState, s.state),
        "restarts": s.restarts,
        "last_error": s.last_error,
        "pid": s.pid,
        "started_ns": s.started_ns,
        "last_heartbeat_ns": s.last_heartbeat_ns,
        "halted": s.halted,  # its own kill switch (the desk-wide one is the list's desk_halted)
    }


def _pnl(row: ledger_pb2.PnlRow | None) -> Mapping[str, str]:
    if row is None:
        return {}
    return {
        "initial_cash": money(dec(row.initial_cash)),
        "cash": money(dec(row.cash)),
        "equity": money(dec(row.equity)),
        "realized_pnl": money(dec(row.realized_pnl)),
        "unrealized_pnl": money(dec(row.unrealized_pnl)),
        "fees": money(dec(row.fees)),
        "total_pnl": money(dec(row.total_pnl)),
        "return_pct": return_text(dec(row.return_pct)),
        "fills": str(row.fills),
    }


def _position(p: ledger_pb2.Position) -> dict[str, str]:
    return {
        "strategy_id": p.strategy_id,
        "symbol": p.symbol,
        "qty": qty_text(p.qty),
        "avg_cost": price_text(p.avg_cost),
        "last_price": price_text(p.last_price),
        "market_value": money_text(p.market_value),
        "realized_pnl": money_text(p.realized_pnl),
        "unrealized_pnl": money_text(p.unrealized_pnl),
    }


def _order(o: ledger_pb2.OrderRecord) -> dict[str, Any]:
    return {
        "strategy_id": o.strategy_id,
        "client_order_id": o.client_order_id,
        "symbol": o.symbol,
        "side": codec.enum_word(common_pb2.Side, o.side),
        "type": codec.enum_word(common_pb2.OrderType, o.type),
        "qty": qty_text(o.qty) if o.qty else money_text(o.notional),
        "limit_price": price_text(o.limit_price),
        "status": codec.enum_word(executions_pb2.OrderStatus, o.status),
        "filled_qty": qty_text(o.filled_qty),
        "avg_price": price_text(o.avg_price),
        "text": o.text,
        "ts_ns": o.updated_ns,
    }


def _fill(f: ledger_pb2.Fill) -> dict[str, Any]:
    return {
        "strategy_id": f.strategy_id,
        "execution_id": f.execution_id,
        "client_order_id": f.client_order_id,
        "symbol": f.symbol,
        "side": codec.enum_word(common_pb2.Side, f.side),
        "qty": qty_text(f.qty),
        "price": price_text(f.price),
        "fee": money_text(f.fee),
        "ts_ns": f.event_ns,
    }


CHART_POINTS = 1500  # at most this many points of a price path go to the page


def drawdown_points(curve: Sequence[metrics.Point]) -> list[list[Any]]:
    """The fall from the running peak at each snapshot, in percent (0 or negative), for the chart."""
    return [[ts / 1e9, f"{-dd * 100:.3f}"] for ts, dd in metrics.drawdown_series(curve)]


def price_points(prices: Sequence[metrics.Point]) -> list[list[Any]]:
    """The price path for the chart, thinned to at most :data:`CHART_POINTS` (the last point kept)."""
    step = max(1, -(-len(prices) // CHART_POINTS))
    kept = list(prices[::step])
    if prices and kept[-1] != prices[-1]:
        kept.append(prices[-1])
    return [[ts / 1e9, price_text(str(v))] for ts, v in kept]


def trade_points(fills: Sequence[ledger_pb2.Fill], symbol: str) -> list[list[Any]]:
    """The strategy's fills in ``symbol``, oldest first: ``[seconds, side, price, qty]`` (trade markers)."""
    return [
        [f.event_ns / 1e9, codec.enum_word(common_pb2.Side, f.side), price_text(f.price), qty_text(f.qty)]
        for f in sorted(fills, key=lambda f: f.event_ns)
        if f.symbol == symbol
    ]
