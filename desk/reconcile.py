"""``desk reconcile``: the ledger against the broker account, on everything both sides know.

The checks (:func:`check`; pure, exact ``Decimal``), each difference one :class:`Finding`:

* ``position`` — per symbol, the ledger's quantities summed over every strategy against the
  account's position (all time; a symbol flat on both sides is not a difference).
* ``cash`` — the account's cash change since the :class:`Baseline` against the ledger's: the
  ledger's cash flow is the sum over strategies of ``cash - initial_cash`` (every fill's
  ``-signed qty * price - fee``; internal crosses cancel out). The baseline is the pair (account
  cash, ledger cash flow) at one moment, stored as JSON (``desk reconcile --set-baseline``; recorded
  by itself at the first reconcile that finds no other difference). Within :data:`CASH_TOLERANCE`.
* ``fill`` — every execution of an Alpaca order the desk placed (``GET
  /v2/account/activities/FILL``) is in the ledger under its deterministic execution id (the
  gateway's ``uuid5("alpaca:<alpaca order id>:fill:<cum qty>")``), with Alpaca's quantity and price,
  booked to the strategy and desk order its ``client_order_id`` names
  (``<strategy>.<client order id>[.<n>]``).
* ``attribution`` — per Alpaca order, the ledger's fills of it (every strategy's) add up to the
  order's ``filled_qty``; and Alpaca's FILL activities of it do too.
* ``order`` — per desk order at Alpaca: the ledger order's filled quantity and average price equal
  its own fills', and equal what its Alpaca orders filled (``filled_qty``, ``filled_avg_price``)
  plus what was crossed inside the desk (its ledger fills that are no Alpaca execution); average
  prices within :data:`AVG_PRICE_TOLERANCE`. An Alpaca order the desk placed whose desk order the
  ledger does not have, and a filled Alpaca order the desk did not place, are differences too.
* ``cross`` — per symbol, the internal crosses (ledger fills at the venue that are no Alpaca
  execution) balance: as much bought as sold, for as much cash.

Orders, fills and crosses are checked over a window: Alpaca orders and desk orders created since
``since`` (their fills come later, so all of them are seen); positions and cash are not windowed.
What could not be checked (no keys, no baseline, a ledger reply too large) is listed as ``not
checked``, never passed silently. The I/O (:func:`fetch_books`, :func:`fetch_account`) is at the end.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from desk.bus.decimals import fmt
from desk.core.ids import alpaca_fill_execution_id, order_id_for, parse_alpaca_client_order_id
from desk.v1 import common_pb2, ledger_pb2

ZERO = Decimal(0)
CASH_TOLERANCE = Decimal("0.01")  # USD: a cent, for rounding of Alpaca's cash
AVG_PRICE_TOLERANCE = Decimal("0.0001")  # USD per share: Alpaca rounds filled_avg_price
WINDOW_MARGIN_NS = 300 * 1_000_000_000  # fills and orders are fetched 5 min before the window (clock skew)


# --- positions (the first check; kept as it was for its callers) -------------------------------------


@dataclass(frozen=True)
class Difference:
    symbol: str
    ledger_qty: Decimal
    broker_qty: Decimal
    by_strategy: tuple[tuple[str, Decimal], ...]  # the ledger's per-strategy quantities

    @property
    def delta(self) -> Decimal:
        return self.broker_qty - self.ledger_qty


def net_positions(positions: Iterable[ledger_pb2.Position]) -> dict[str, Decimal]:
    """Signed quantity per symbol, summed over every strategy (empty qty = 0)."""
    totals: dict[str, Decimal] = {}
    for p in positions:
        totals[p.symbol] = totals.get(p.symbol, ZERO) + Decimal(p.qty or "0")
    return totals


def compare(ledger: Iterable[ledger_pb2.Position], broker: Iterable[ledger_pb2.Position]) -> list[Difference]:
    """Every symbol whose summed ledger quantity differs from the broker account's, sorted by symbol."""
    ledger = list(ledger)
    ours, theirs = net_positions(ledger), net_positions(broker)
    differences = []
    for symbol in sorted(set(ours) | set(theirs)):
        mine, venue = ours.get(symbol, ZERO), theirs.get(symbol, ZERO)
        if mine != venue:
            strategies = tuple(
                sorted(
                    (p.strategy_id, Decimal(p.qty or "0"))
                    for p in ledger
                    if p.symbol == symbol and Decimal(p.qty or "0") != 0
                )
            )
            differences.append(Difference(symbol, mine, venue, strategies))
    return differences


def format_differences(differences: list[Difference], venue: str) -> list[str]:
    """Lines for a terminal: one per difference, or one line saying the books agree."""
    if not differences:
        return [f"reconcile: ledger and {venue} agree on every position"]
    lines = [f"reconcile: {len(differences)} difference(s) between the ledger and {venue}:"]
    for d in differences:
        parts = ", ".join(f"{s} {fmt(q)}" for s, q in d.by_strategy) or "no strategy holds it"
        lines.append(
            f"  {d.symbol}: ledger {fmt(d.ledger_qty)} ({parts}), {venue} {fmt(d.broker_qty)}, "
            f"difference {fmt(d.delta)}"
        )
    return lines


# --- what each side says -----------------------------------------------------------------------------


desk_order_of = parse_alpaca_client_order_id


@dataclass(frozen=True)
class AlpacaOrder:
    id: str
    client_order_id: str
    symbol: str
    side: str  # buy | sell
    status: str
    filled_qty: Decimal
    filled_avg_price: Decimal | None
    created_ns: int


@dataclass(frozen=True)
class AlpacaFill:
    """One FILL activity."""

    order_id: str
    symbol: str
    side: str
    qty: Decimal
    price: Decimal
    cum_qty: Decimal
    ts_ns: int


@dataclass
class Account:
    """The broker account now. ``orders``/``fills``: None when they could not be read (no keys)."""

    positions: list[ledger_pb2.Position]
    cash: Decimal | None = None
    account_id: str = ""
    orders: list[AlpacaOrder] | None = None
    fills: list[AlpacaFill] | None = None


@dataclass
class Books:
    """The ledger now: every strategy's positions, its cash flow, and its venue's orders and fills
    since the window (minus :data:`WINDOW_MARGIN_NS`)."""

    positions: list[ledger_pb2.Position]
    cash_flow: Decimal | None = None
    orders: list[ledger_pb2.OrderRecord] = field(default_factory=list)
    fills: list[ledger_pb2.Fill] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)  # queries whose replies may have been cut


def ledger_cash_flow(pnl: Iterable[ledger_pb2.PnlRow]) -> Decimal:
    """What the ledger's fills did to cash, over every strategy: sum of ``cash - initial_cash``."""
    return sum((Decimal(r.cash or "0") - Decimal(r.initial_cash or "0") for r in pnl if r.strategy_id), ZERO)


@dataclass(frozen=True)
class Baseline:
    """The account's cash and the ledger's cash flow at one moment, taken to correspond."""

    account_id: str
    account_cash: Decimal
    ledger_cash_flow: Decimal
    taken_ns: int

    def to_json(self) -> str:
        return json.dumps({k: str(v) if isinstance(v, Decimal) else v for k, v in asdict(self).items()}, indent=1)

    @classmethod
    def load(cls, path: Path) -> Baseline | None:
        try:
            raw = json.loads(path.read_text())
            return cls(
                str(raw["account_id"]),
                Decimal(raw["account_cash"]),
                Decimal(raw["ledger_cash_flow"]),
                int(raw["taken_ns"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, ArithmeticError) as exc:
            raise ValueError(f"unreadable reconcile baseline {path}: {exc}") from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)


# --- the checks --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    check: str  # position | cash | fill | attribution | order | cross
    subject: str  # a symbol, an Alpaca order id, a desk order (strategy/client order id)
    message: str
    details: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.check} {self.subject}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "subject": self.subject, "message": self.message, **self.details}


@dataclass
class Result:
    findings: list[Finding]
    checked: list[str]
    not_checked: list[str]
    since_ns: int

    @property
    def clean(self) -> bool:
        return not self.findings

    def lines(self, venue: str) -> list[str]:
        since = _iso(self.since_ns)
        if self.findings:
            head = f"reconcile: {len(self.findings)} difference(s) between the ledger and {venue}:"
        else:
            head = f"reconcile: ledger and {venue} agree ({', '.join(self.checked)}; orders since {since})"
        return [
            head,
            *(f"  {f.line()}" for f in self.findings),
            *(f"  not checked: {reason}" for reason in self.not_checked),
        ]

    def as_dict(self, venue: str) -> dict[str, Any]:
        return {
            "venue": venue,
            "clean": self.clean,
            "since": _iso(self.since_ns),
            "checked": self.checked,
            "not_checked": self.not_checked,
            "differences": [f.as_dict() for f in self.findings],
        }


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="seconds")


def _signed(side: int | str, qty: Decimal) -> Decimal:
    return qty if side in (common_pb2.SIDE_BUY, "buy") else -qty


def _avg(cost: Decimal, qty: Decimal) -> Decimal | None:
    return cost / qty if qty else None


def _avg_differs(a: Decimal | None, b: Decimal | None) -> bool:
    if a is None or b is None:
        return (a is None) != (b is None)
    return abs(a - b) > AVG_PRICE_TOLERANCE


def _qty_at(qty: Decimal, avg: Decimal | None) -> str:
    return f"{fmt(qty)} @ {fmt(avg)}" if avg is not None else fmt(qty)


def check(
    books: Books, account: Account, since_ns: int, baseline: Baseline | None = None, venue: str = "alpaca"
) -> Result:
    """Every difference between the ledger and the account (see the module's docstring)."""
    findings: list[Finding] = []
    checked = ["positions"]
    not_checked = list(books.incomplete)
    for d in compare(books.positions, account.positions):
        parts = ", ".join(f"{s} {fmt(q)}" for s, q in d.by_strategy) or "no strategy holds it"
        findings.append(
            Finding(
                "position",
                d.symbol,
                f"ledger {fmt(d.ledger_qty)} ({parts}), {venue} {fmt(d.broker_qty)}, difference {fmt(d.delta)}",
                {"ledger_qty": fmt(d.ledger_qty), "broker_qty": fmt(d.broker_qty), "difference": fmt(d.delta)},
            )
        )
    findings += _check_cash(books, account, baseline, checked, not_checked)
    if account.orders is None or account.fills is None:
        not_checked.append(
            f"fills, orders, attribution, crosses: the {venue} account's orders and fills were not read "
            "(ALPACA_API_KEY/ALPACA_SECRET_KEY are not set here)"
        )
    else:
        checked += ["fills", "attribution", "orders", "crosses"]
        findings += _check_orders(books, account.orders, account.fills, since_ns)
    return Result(findings, checked, not_checked, since_ns)


def _check_cash(
    books: Books, account: Account, baseline: Baseline | None, checked: list[str], not_checked: list[str]
) -> list[Finding]:
    if account.cash is None or books.cash_flow is None:
        not_checked.append("cash: the account's cash or the ledger's P&L was not read")
        return []
    if baseline is None:
        not_checked.append(
            "cash: no baseline yet (recorded at the first reconcile without differences, or "
            "`desk reconcile --set-baseline`)"
        )
        return []
    if baseline.account_id and account.account_id and baseline.account_id != account.account_id:
        not_checked.append(
            f"cash: the baseline is of account {baseline.account_id}, this is {account.account_id} "
            "(`desk reconcile --set-baseline`)"
        )
        return []
    checked.append("cash")
    moved = account.cash - baseline.account_cash
    booked = books.cash_flow - baseline.ledger_cash_flow
    if abs(moved - booked) <= CASH_TOLERANCE:
        return []
    return [
        Finding(
            "cash",
            "USD",
            f"the account's cash moved {fmt(moved)} since the baseline of "
            f"{_iso(baseline.taken_ns)}, the ledger's fills {fmt(booked)}, difference {fmt(moved - booked)}",
            {
                "account_change": fmt(moved),
                "ledger_change": fmt(booked),
                "difference": fmt(moved - booked),
                "account_cash": fmt(account.cash),
                "baseline_ns": str(baseline.taken_ns),
            },
        )
    ]


def _check_orders(books: Books, orders: list[AlpacaOrder], fills: list[AlpacaFill], since_ns: int) -> list[Finding]:
    findings: list[Finding] = []
    ledger_fills = {f.execution_id: f for f in books.fills}
    fills_by_order: dict[str, list[ledger_pb2.Fill]] = {}
    for f in books.fills:
        fills_by_order.setdefault(f.order_id, []).append(f)
    activities: dict[str, list[AlpacaFill]] = {}
    for a in fills:
        activities.setdefault(a.order_id, []).append(a)
    alpaca_exec_ids = {alpaca_fill_execution_id(a.order_id, a.cum_qty) for a in fills}
    ledger_orders = {o.order_id: o for o in books.orders}
    by_desk_order: dict[str, list[AlpacaOrder]] = {}

    for order in sorted(orders, key=lambda o: (o.created_ns, o.id)):
        ids = desk_order_of(order.client_order_id)
        if ids is None:
            if order.filled_qty and order.created_ns >= since_ns:
                findings.append(
                    Finding(
                        "order",
                        order.id,
                        f"{order.side} {fmt(order.filled_qty)} {order.symbol} "
                        f"filled at Alpaca by an order the desk did not place (client_order_id "
                        f"{order.client_order_id!r})",
                        {"filled_qty": fmt(order.filled_qty)},
                    )
                )
            continue
        strategy_id, client_id = ids
        desk_order_id = order_id_for(strategy_id, client_id)
        by_desk_order.setdefault(desk_order_id, []).append(order)
        if order.created_ns < since_ns:
            continue
        findings += _check_alpaca_order(
            order, (strategy_id, client_id, desk_order_id), activities.get(order.id, []), ledger_fills, ledger_orders
        )

    for record in sorted(books.orders, key=lambda o: (o.created_ns, o.order_id)):
        if record.venue != "alpaca" or record.created_ns < since_ns:
            continue
        findings += _check_desk_order(
            record, fills_by_order.get(record.order_id, []), by_desk_order.get(record.order_id, []), alpaca_exec_ids
        )

    findings += _check_crosses(books, alpaca_exec_ids, since_ns)
    return findings


def _check_alpaca_order(
    order: AlpacaOrder,
    desk_ids: tuple[str, str, str],
    activities: list[AlpacaFill],
    ledger_fills: dict[str, ledger_pb2.Fill],
    ledger_orders: dict[str, ledger_pb2.OrderRecord],
) -> list[Finding]:
    """One Alpaca order the desk placed (``desk_ids``: strategy id, client order id, desk order id):
    each of its FILL activities booked once, to the right strategy and order; the activities and the
    ledger's fills add up to its filled quantity; the ledger knows the desk order."""
    strategy_id, client_id, desk_order_id = desk_ids
    findings: list[Finding] = []
    where = order.client_order_id
    booked: dict[str, Decimal] = {}
    seen_qty = ZERO
    for a in sorted(activities, key=lambda a: a.cum_qty):
        seen_qty += a.qty
        exec_id = alpaca_fill_execution_id(order.id, a.cum_qty)
        fill = ledger_fills.get(exec_id)
        what = f"{a.side} {fmt(a.qty)} {a.symbol} @ {fmt(a.price)} at {_iso(a.ts_ns)} (alpaca order {order.id})"
        if fill is None:
            findings.append(
                Finding(
                    "fill",
                    where,
                    f"Alpaca filled {what}: not in the ledger",
                    {"alpaca_order_id": order.id, "execution_id": exec_id, "qty": fmt(a.qty), "price": fmt(a.price)},
                )
            )
            continue
        booked[fill.strategy_id] = booked.get(fill.strategy_id, ZERO) + Decimal(fill.qty or "0")
        wrong = []
        if Decimal(fill.qty or "0") != a.qty or Decimal(fill.price or "0") != a.price:
            wrong.append(f"booked as {fill.qty} @ {fill.price}")
        if (fill.strategy_id, fill.order_id) != (strategy_id, desk_order_id):
            wrong.append(f"booked to {fill.strategy_id}/{fill.client_order_id}, not {strategy_id}/{client_id}")
        if wrong:
            findings.append(
                Finding(
                    "fill",
                    where,
                    f"Alpaca filled {what}: {'; '.join(wrong)}",
                    {"alpaca_order_id": order.id, "execution_id": exec_id},
                )
            )
    if seen_qty != order.filled_qty:
        findings.append(
            Finding(
                "attribution",
                where,
                f"filled {fmt(order.filled_qty)} at Alpaca (order {order.id}), "
                f"its FILL activities add up to {fmt(seen_qty)}",
                {"alpaca_order_id": order.id, "filled_qty": fmt(order.filled_qty), "activities_qty": fmt(seen_qty)},
            )
        )
    total = sum(booked.values(), ZERO)
    if total != order.filled_qty:
        parts = ", ".join(f"{s} {fmt(q)}" for s, q in sorted(booked.items())) or "none"
        findings.append(
            Finding(
                "attribution",
                where,
                f"filled {fmt(order.filled_qty)} at Alpaca (order {order.id}), "
                f"the strategies' fills of it in the ledger add up to {fmt(total)} ({parts})",
                {"alpaca_order_id": order.id, "filled_qty": fmt(order.filled_qty), "ledger_qty": fmt(total)},
            )
        )
    if desk_order_id not in ledger_orders:
        findings.append(
            Finding(
                "order",
                f"{strategy_id}/{client_id}",
                f"Alpaca has {where} (order {order.id}, "
                f"{order.status}, filled {fmt(order.filled_qty)}); the ledger has no such desk order",
                {"order_id": desk_order_id, "alpaca_order_id": order.id},
            )
        )
    return findings


def _check_crosses(books: Books, alpaca_exec_ids: set[str], since_ns: int) -> list[Finding]:
    """The internal crosses since ``since_ns`` (the ledger's venue-alpaca fills that
    match no Alpaca FILL activity) balance per symbol: each cross is a buy and a sell at one price."""
    findings: list[Finding] = []
    crosses: dict[str, list[ledger_pb2.Fill]] = {}
    for f in books.fills:
        if f.venue == "alpaca" and f.event_ns >= since_ns and f.execution_id not in alpaca_exec_ids:
            crosses.setdefault(f.symbol, []).append(f)
    for symbol, legs in sorted(crosses.items()):
        qty = sum((_signed(f.side, Decimal(f.qty or "0")) for f in legs), ZERO)
        cash = sum((_signed(f.side, Decimal(f.qty or "0")) * Decimal(f.price or "0") for f in legs), ZERO)
        if qty or cash:
            findings.append(
                Finding(
                    "cross",
                    symbol,
                    f"the internal crosses since {_iso(since_ns)} do not balance: "
                    f"{len(legs)} fills, net {fmt(qty)} shares for {fmt(-cash)} USD (each cross is a "
                    "buy and a sell of the same quantity at one price)",
                    {"net_qty": fmt(qty), "net_cash": fmt(-cash)},
                )
            )
    return findings


def _check_desk_order(
    record: ledger_pb2.OrderRecord, fills: list[ledger_pb2.Fill], alpaca: list[AlpacaOrder], alpaca_exec_ids: set[str]
) -> list[Finding]:
    name = f"{record.strategy_id}/{record.client_order_id}"
    filled = Decimal(record.filled_qty or "0")
    avg = Decimal(record.avg_price) if record.avg_price else None
    own_qty = sum((Decimal(f.qty or "0") for f in fills), ZERO)
    own_cost = sum((Decimal(f.qty or "0") * Decimal(f.price or "0") for f in fills), ZERO)
    findings = []
    if own_qty != filled or (own_qty and _avg_differs(avg, _avg(own_cost, own_qty))):
        findings.append(
            Finding(
                "order",
                name,
                f"the ledger's order says filled {_qty_at(filled, avg)}, its fills "
                f"add up to {_qty_at(own_qty, _avg(own_cost, own_qty))}",
                {"order_id": record.order_id, "ledger_filled_qty": fmt(filled), "fills_qty": fmt(own_qty)},
            )
        )
    crossed = [f for f in fills if f.execution_id not in alpaca_exec_ids]
    cross_qty = sum((Decimal(f.qty or "0") for f in crossed), ZERO)
    cross_cost = sum((Decimal(f.qty or "0") * Decimal(f.price or "0") for f in crossed), ZERO)
    at_alpaca = sum((o.filled_qty for o in alpaca), ZERO)
    alpaca_cost = sum((o.filled_qty * (o.filled_avg_price or ZERO) for o in alpaca), ZERO)
    expected = at_alpaca + cross_qty
    expected_avg = _avg(alpaca_cost + cross_cost, expected)
    if expected != filled or (expected and _avg_differs(avg, expected_avg)):
        names = ", ".join(o.client_order_id for o in alpaca) or "none"
        findings.append(
            Finding(
                "order",
                name,
                f"the ledger says filled {_qty_at(filled, avg)}; Alpaca filled "
                f"{_qty_at(at_alpaca, _avg(alpaca_cost, at_alpaca))} ({names}) + crossed inside the "
                f"desk {_qty_at(cross_qty, _avg(cross_cost, cross_qty))} = "
                f"{_qty_at(expected, expected_avg)}",
                {
                    "order_id": record.order_id,
                    "ledger_filled_qty": fmt(filled),
                    "alpaca_filled_qty": fmt(at_alpaca),
                    "crossed_qty": fmt(cross_qty),
                },
            )
        )
    return findings


# --- I/O: the two sides --------------------------------------------------------------------------------

MAX_ROWS = 1000  # the ledger's reply limit (services/ledger/queries.py MAX_LIMIT)


def _maybe_cut(rows: list[Any], reply: Any) -> bool:
    """Could the ledger have cut this reply (row limit, or rows dropped to fit the message limit)?"""
    from desk.bus.codec import MAX_MESSAGE_BYTES

    if len(rows) >= MAX_ROWS:
        return True
    biggest = max((r.ByteSize() for r in rows), default=0)
    return bool(reply.ByteSize() > MAX_MESSAGE_BYTES - 1024 - 2 * biggest - 16)


async def fetch_books(nc: Any, since_ns: int, venue: str = "alpaca", timeout: float = 5.0) -> Books:
    """The ledger's side, over NATS: per strategy, its positions, orders and fills (per symbol when a
    strategy's do not fit one reply)."""
    from desk.bus import subjects
    from desk.bus.request import request

    Q = ledger_pb2.LedgerQuery
    pnl = await request(nc, subjects.LEDGER_PNL, Q(limit=MAX_ROWS), ledger_pb2.PnlReply, timeout=timeout)
    books = Books(positions=[], cash_flow=ledger_cash_flow(pnl.strategies))
    if _maybe_cut(list(pnl.strategies), pnl):
        books.incomplete.append("cash and positions: more strategies than one ledger reply holds")
    window = max(since_ns - WINDOW_MARGIN_NS, 0)
    for strategy in sorted({r.strategy_id for r in pnl.strategies if r.strategy_id}):
        positions = await request(
            nc,
            subjects.LEDGER_POSITIONS,
            Q(strategy_id=strategy, limit=MAX_ROWS),
            ledger_pb2.PositionsReply,
            timeout=timeout,
        )
        books.positions += positions.positions
        symbols = sorted({p.symbol for p in positions.positions})
        for subject, reply_type, rows_of, into in (
            (subjects.LEDGER_FILLS, ledger_pb2.FillsReply, lambda r: list(r.fills), books.fills),
            (subjects.LEDGER_ORDERS, ledger_pb2.OrdersReply, lambda r: list(r.orders), books.orders),
        ):
            rows = await _rows(
                nc, subject, Q(strategy_id=strategy, since_ns=window, limit=MAX_ROWS), reply_type, rows_of, timeout
            )
            if rows is None:  # too many for one reply: one query per symbol the strategy trades
                rows = []
                for symbol in symbols:
                    part = await _rows(
                        nc,
                        subject,
                        Q(strategy_id=strategy, symbol=symbol, since_ns=window, limit=MAX_ROWS),
                        reply_type,
                        rows_of,
                        timeout,
                    )
                    if part is None:
                        books.incomplete.append(
                            f"{subject.rsplit('.', 1)[-1]} of {strategy} {symbol} since "
                            f"{_iso(window)}: more than one ledger reply holds (use a later --since)"
                        )
                        part = []
                    rows += part
            into += [r for r in rows if r.venue == venue]
    return books


async def _rows(
    nc: Any,
    subject: str,
    query: ledger_pb2.LedgerQuery,
    reply_type: Any,
    rows_of: Callable[[Any], list[Any]],
    timeout: float,
) -> list[Any] | None:
    from desk.bus.request import request

    reply = await request(nc, subject, query, reply_type, timeout=timeout)
    rows = rows_of(reply)
    return None if _maybe_cut(rows, reply) else rows


def _ns(value: dt.datetime | str | None) -> int:
    if value is None:
        return 0
    when = dt.datetime.fromisoformat(value) if isinstance(value, str) else value  # 3.11 reads a trailing Z
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def _dec(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))


def _word(value: Any) -> str:
    return str(getattr(value, "value", value))


def fetch_account(client: Any, since_ns: int) -> Account:
    """The account's side through alpaca-py's ``TradingClient`` (synchronous): cash, positions, every
    order created since the window (paged) and every FILL activity since (paged)."""
    from alpaca.common.enums import Sort
    from alpaca.trading.enums import QueryOrderStatus
    from alpaca.trading.requests import GetOrdersRequest

    account = client.get_account()
    positions = []
    for row in client.get_all_positions():
        qty = _dec(row.qty) or ZERO
        if _word(row.side) == "short" and qty > 0:
            qty = -qty
        positions.append(
            ledger_pb2.Position(symbol=str(row.symbol), qty=fmt(qty), avg_cost=fmt(_dec(row.avg_entry_price)))
        )
    after = dt.datetime.fromtimestamp(max(since_ns - WINDOW_MARGIN_NS, 0) / 1e9, dt.UTC)
    orders: dict[str, AlpacaOrder] = {}
    page_after = after
    while True:
        page = client.get_orders(
            GetOrdersRequest(status=QueryOrderStatus.ALL, after=page_after, limit=500, direction=Sort.ASC, nested=False)
        )
        for o in page:
            orders[str(o.id)] = AlpacaOrder(
                id=str(o.id),
                client_order_id=str(o.client_order_id),
                symbol=str(o.symbol),
                side=_word(o.side),
                status=_word(o.status),
                filled_qty=_dec(o.filled_qty) or ZERO,
                filled_avg_price=_dec(o.filled_avg_price),
                created_ns=_ns(o.created_at),
            )
        if len(page) < 500:
            break
        page_after = page[-1].created_at - dt.timedelta(microseconds=1)  # ties at the edge: deduplicated by id
    fills: list[AlpacaFill] = []
    params: dict[str, Any] = {"after": after.isoformat(), "direction": "asc", "page_size": 100}
    while True:
        rows = client.get("/account/activities/FILL", dict(params))
        rows = rows if isinstance(rows, list) else []
        for r in rows:
            if r.get("order_id"):
                fills.append(
                    AlpacaFill(
                        order_id=str(r["order_id"]),
                        symbol=str(r.get("symbol", "")),
                        side=str(r.get("side", "")),
                        qty=_dec(r["qty"]) or ZERO,
                        price=_dec(r["price"]) or ZERO,
                        cum_qty=_dec(r["cum_qty"]) or ZERO,
                        ts_ns=_ns(r.get("transaction_time")),
                    )
                )
        if len(rows) < params["page_size"]:
            break
        params["page_token"] = rows[-1]["id"]
    return Account(
        positions=positions,
        cash=_dec(account.cash),
        account_id=str(account.id),
        orders=list(orders.values()),
        fills=fills,
    )


def make_trading_client(
    api_key: str, secret_key: str, paper: bool = True, rest_url: str | None = None, timeout: float = 10.0
) -> Any:
    """alpaca-py's TradingClient with a timeout on every request (alpaca-py sets none) and no 3 s retry
    sleeps: the gateway's ALPACA_* names, so the same environment works for both."""
    import requests
    from alpaca.trading.client import TradingClient

    class TimeoutSession(requests.Session):
        def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", timeout)
            return super().request(method, url, *args, **kwargs)

    client = TradingClient(api_key, secret_key, paper=paper, url_override=rest_url)
    client._session.close()
    client._session = TimeoutSession()
    client._retry = 0
    return client


def parse_since(text: str, now_ns: int) -> int:
    """``--since``: an ISO-8601 time (UTC when naive), or an age: ``90m``, ``6h``, ``1d``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return now_ns - int(Decimal(text[:-1]) * units[text[-1]] * 1_000_000_000)
    return _ns(dt.datetime.fromisoformat(text))
