"""The ``alpaca`` venue: Alpaca paper trading through alpaca-py, as a :class:`~.base.Broker`.

* REST: alpaca-py's ``TradingClient`` is synchronous (requests), so every call runs in a worker
  thread (``asyncio.to_thread``) and never stalls the event loop. alpaca-py sets no timeout and
  retries 429/504 itself with 3 s sleeps; the gateway replaces both: its session has a timeout on
  every request, alpaca-py's own retry is off, and :class:`AlpacaRest` retries 429, 5xx and
  timeouts with exponential backoff within ``ALPACA_RETRY_BUDGET`` seconds.
* A POST that reached Alpaca but whose reply was lost is retried with the same client order id;
  Alpaca refuses it (422, 40010001) and the gateway looks the order up
  (``GET /v2/orders:by_client_order_id``) instead of failing.
* Order updates come from ``TradingStream`` (``trade_updates``) running on the gateway's loop. Every
  (re)connect of that stream runs :meth:`AlpacaBroker.reconcile` before events are consumed and
  before new orders are taken: open orders, orders and FILL activities since the last event seen
  (after a restart: ``ALPACA_RECONCILE_LOOKBACK``), so a fill made while the stream was down is
  reported, and one reported already is not reported again (deterministic execution ids; see
  :mod:`.alpaca_book`).
* Internal crosses (two strategies' opposite orders netted inside the desk, :mod:`.netting`) are
  priced only from the Alpaca feed (:class:`AlpacaPrices`: ``md.quote|trade.*`` whose ``source`` is
  ``alpaca``; the quote mid, else the last trade) no older than ``ALPACA_CROSS_MAX_AGE`` seconds.
  Without such a price nothing is crossed (the reason is logged). What is not crossed never meets
  another strategy's resting order at Alpaca (a wash trade, 42210000): an order that executes at
  once pulls those orders, is sent, and they are placed again once it is done ("pull, send,
  re-place"); one that would rest waits at the desk (held) until it would execute or they are gone;
  only an order against its own strategy's resting opposite order is refused, naming it.
* Crashes (docs/alpaca.md, "Crashes"): before the desk cancels a resting order's Alpaca order to
  cross it, a pull record is stored in EXECUTIONS; at start the shell replays EXECUTIONS into
  :meth:`AlpacaBroker.restore` (crosses, fills, statuses, pull records), the reconcile attaches
  Alpaca's orders by placement ``<n>``, and a re-place that did not happen is made. A redelivered
  routed order that has an Alpaca order or is final is never sent again.
* Bracket / OCO / OTO exits (docs/alpaca.md, "Order types at Alpaca") are desk orders ``<id>-tp`` and
  ``<id>-sl`` placed at Alpaca as plain orders (no Alpaca ``order_class``): an entry's exits once it is
  done with fills; of two OCO exits only the take-profit rests at Alpaca, the stop-loss is armed at the
  desk and, once the Alpaca price reaches its stop, a trigger record is stored, the take-profit
  canceled and the rest sent as a market (stop-limit: limit) order through netting.
* Keys: only this process holds them (``SecretStr`` settings); they are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from typing import Any, TypeVar

import requests

from desk.bus.decimals import fmt
from desk.bus.logging import get_logger
from desk.core.ids import order_id_for
from desk.core.matching import MarketUpdate
from desk.core.orders import (
    ORDER_TYPE_WORDS,
    SIDE_WORDS,
    STOP_LOSS_SUFFIX,
    TAKE_PROFIT_SUFFIX,
    TIME_IN_FORCE_WORDS,
    Reports,
    status_name,
)
from desk.v1 import common_pb2, executions_pb2, ledger_pb2, marketdata_pb2, orders_pb2

from . import netting
from .alpaca_book import BRACKET, OCO, OTO, AlpacaBook, AlpacaOrder, DeskOrder, Fill, alpaca_client_order_id, dec, to_ns
from .base import BrokerStats, BrokerUnavailable, PriceSource, Sink

with warnings.catch_warnings():
    # alpaca-py 0.44's TradingStream imports websockets.legacy, deprecated since websockets 14
    warnings.filterwarnings("ignore", message="websockets.legacy is deprecated", category=DeprecationWarning)
    from alpaca.common.enums import Sort
    from alpaca.common.exceptions import APIError
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import OrderSide, QueryOrderStatus, TimeInForce
    from alpaca.trading.requests import (
        GetOrdersRequest,
        LimitOrderRequest,
        MarketOrderRequest,
        OrderRequest,
        StopLimitOrderRequest,
        StopOrderRequest,
        TrailingStopOrderRequest,
    )
    from alpaca.trading.stream import TradingStream

log = get_logger("broker_gateway.alpaca")
T = TypeVar("T")
Emit = Callable[[Reports], object]  # the shell's sink (base.Sink): queues reports; what it returns is awaited by _store

DUPLICATE_CLIENT_ORDER_ID = 40010001
INSUFFICIENT_QTY = 40310000
SETTLE_TIMEOUT = 10.0  # seconds a sell that needed held shares may take to finish before others are re-placed
MAX_BACKOFF = 8.0
PAGE = 500


class AlpacaUnavailable(BrokerUnavailable):
    """Alpaca did not answer within the retry budget: the routed order is retried later (nak)."""


class AlpacaCredentialsError(SystemExit):
    """Missing or refused keys: start-up stops with one line (exit code 2)."""


@dataclass(frozen=True)
class AlpacaConfig:
    api_key: str
    secret_key: str
    paper: bool = True
    rest_url: str | None = None
    stream_url: str | None = None
    timeout: float = 10.0
    retry_budget: float = 30.0
    retry_backoff: float = 0.5
    reconcile_lookback: float = 86400.0
    reconnect_backoff: float = 1.0
    cross_max_age: float = 5.0  # seconds: the oldest Alpaca price an internal cross may use

    def __repr__(self) -> str:  # never show the keys
        return f"AlpacaConfig(paper={self.paper}, rest_url={self.rest_url!r}, stream_url={self.stream_url!r})"


class TimeoutSession(requests.Session):
    """A requests session that puts a timeout on every request (alpaca-py passes none)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        return super().request(method, url, *args, **kwargs)  # type: ignore[arg-type]  # typeshed narrows Session.request


def make_trading_client(config: AlpacaConfig) -> TradingClient:
    client = TradingClient(config.api_key, config.secret_key, paper=config.paper, url_override=config.rest_url)
    client._session.close()  # replaced: same behaviour plus a timeout on every request
    client._session = TimeoutSession(config.timeout)
    client._retry = 0  # alpaca-py's own retry sleeps 3 s in the worker thread; AlpacaRest retries instead
    return client


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, APIError):
        status = exc.status_code or 0
        return status == 429 or status >= 500
    return isinstance(exc, requests.exceptions.Timeout | requests.exceptions.ConnectionError)


def api_code(exc: APIError) -> int | None:
    with contextlib.suppress(Exception):
        return int(exc.code)
    return None


def describe(exc: BaseException) -> str:
    if isinstance(exc, APIError):
        message = ""
        with contextlib.suppress(Exception):
            message = str(exc.message)
        return f"alpaca {exc.status_code} {api_code(exc)}: {message or str(exc)[:200]}"
    return f"alpaca unreachable: {type(exc).__name__}"


class AlpacaRest:
    """alpaca-py's REST calls off the event loop, with a retry budget for 429/5xx/timeouts."""

    def __init__(
        self, client: TradingClient, config: AlpacaConfig, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        self.client = client
        self.config = config
        self._sleep = sleep
        self.retries = 0

    async def call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        deadline = time.monotonic() + self.config.retry_budget
        pause = self.config.retry_backoff
        while True:
            try:
                return await asyncio.to_thread(fn, *args)
            except Exception as exc:
                if not is_retryable(exc):
                    raise
                if time.monotonic() + pause > deadline:
                    log.error("alpaca.retry_budget_exhausted", call=what, error=describe(exc))
                    raise AlpacaUnavailable(f"{what}: {describe(exc)}") from exc
                self.retries += 1
                log.warning("alpaca.retrying", call=what, error=describe(exc), pause=round(pause, 3))
                await self._sleep(pause * (0.5 + random.random() / 2))
                pause = min(pause * 2, MAX_BACKOFF)


class DeskTradingStream(TradingStream):
    """alpaca-py's TradingStream, plus a hook run after every (re)connect, before events are consumed."""

    def __init__(self, config: AlpacaConfig, on_connected: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config.api_key, config.secret_key, paper=config.paper, url_override=config.stream_url)  # type: ignore[arg-type]  # alpaca-py types it str, None is its default
        self._on_connected = on_connected
        self._reconnect_min_backoff = config.reconnect_backoff

    async def _start_ws(self) -> None:
        await super()._start_ws()  # type: ignore[no-untyped-call]  # alpaca-py is untyped here
        await self._on_connected()


FEED_SOURCE = "alpaca"  # md.* messages of MD_FEED=alpaca carry this source


@dataclass(frozen=True)
class _Seen:
    price: Decimal | None  # the quote's mid (None: not a usable quote) or the trade's price
    ts_ns: int  # the market's time of the price (its arrival when the feed gave none)


class AlpacaPrices:
    """The fair price of an internal cross: the Alpaca feed's quote mid, else its last trade, if fresh.

    Fed every ``md.*`` message (the gateway's shell subscribes for brokers with ``wants_market_data``).
    Only messages whose ``source`` is ``alpaca`` count: a synthetic or replayed price (``MD_FEED``
    not ``alpaca``) never prices a cross of the shared Alpaca account. A price is fresh when its
    market time (``ts_ns``; the arrival time when it has none) is at most ``max_age`` seconds old."""

    def __init__(self, max_age: float, clock: Callable[[], int] = time.time_ns) -> None:
        self.max_age_ns = int(max_age * 1e9)
        self.max_age = max_age
        self._clock = clock
        self.quotes: dict[str, _Seen] = {}
        self.trades: dict[str, _Seen] = {}
        self.ignored: dict[str, int] = {}  # source -> md.* messages ignored (not the Alpaca feed)
        self._arrivals: dict[str, asyncio.Event] = {}  # symbol -> set when its next Alpaca price arrives

    def update(self, update: MarketUpdate) -> None:
        if isinstance(update, marketdata_pb2.Bar):
            return  # a bar's close is up to a bar old: crosses use quotes and trades only
        if update.source != FEED_SOURCE:
            source = update.source or "(none)"
            if source not in self.ignored:
                log.warning(
                    "marketdata.not_alpaca",
                    source=source,
                    symbol=update.symbol,
                    hint="internal crosses are priced only from MD_FEED=alpaca; set MD_FEED=alpaca",
                )
            self.ignored[source] = self.ignored.get(source, 0) + 1
            return
        ts_ns = update.ts_ns or self._clock()
        try:
            if isinstance(update, marketdata_pb2.Quote):
                bid, ask = dec(update.bid_price), dec(update.ask_price)
                mid = netting.fair_price(None, bid, ask)
                self._keep(self.quotes, update.symbol, _Seen(mid, ts_ns))
            else:
                self._keep(self.trades, update.symbol, _Seen(dec(update.price), ts_ns))
            arrived = self._arrivals.pop(update.symbol, None)
            if arrived is not None:
                arrived.set()
        except ArithmeticError:
            log.warning("marketdata.bad_price", symbol=update.symbol, source=update.source)

    @staticmethod
    def _keep(table: dict[str, _Seen], symbol: str, seen: _Seen) -> None:
        known = table.get(symbol)
        if known is None or seen.ts_ns >= known.ts_ns:  # never replace a newer price by an older one
            table[symbol] = seen

    async def wait_fresh(self, symbol: str, timeout: float) -> None:
        """Until a fresh price of ``symbol`` is known, ``timeout`` seconds at most."""
        deadline = time.monotonic() + timeout
        while self.fair_price(symbol)[0] is None and (left := deadline - time.monotonic()) > 0:
            arrived = self._arrivals.setdefault(symbol, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), left)

    def fair_price(self, symbol: str) -> tuple[Decimal | None, str]:
        """``(price, how)``: the quote mid or last trade and which, or ``(None, why there is none)``."""
        now = self._clock()
        described = []
        for kind, table in (("quote mid", self.quotes), ("last trade", self.trades)):
            seen = table.get(symbol)
            if seen is None or seen.price is None or seen.price <= 0:
                continue
            age = max(now - seen.ts_ns, 0)
            if age <= self.max_age_ns:
                return seen.price, f"alpaca {kind} {fmt(seen.price)}, {age / 1e9:.1f} s old"
            described.append(f"its {kind} is {age / 1e9:.1f} s old")
        why = f"no Alpaca price for {symbol} at most {self.max_age:g} s old (ALPACA_CROSS_MAX_AGE)"
        if described:
            why += ": " + ", ".join(described)
        elif self.ignored:
            why += (
                ": the feed is "
                + "/".join(sorted(self.ignored))
                + ", whose prices never price a cross (MD_FEED=alpaca)"
            )
        else:
            why += ": none received (MD_FEED=alpaca?)"
        return None, why


def order_request(
    routed: orders_pb2.RoutedOrder, qty: Decimal | None = None, placement: int = 1, notional: Decimal | None = None
) -> OrderRequest:
    """The alpaca-py request for a routed order (client_order_id = ``<strategy_id>.<client_order_id>``),
    for ``qty`` (or, for an order by value, ``notional`` dollars) when only part of it goes to Alpaca
    (the rest was crossed inside the desk)."""
    request = routed.new_order
    fields: dict[str, Any] = {
        "symbol": request.symbol,
        "side": OrderSide.BUY if request.side == common_pb2.SIDE_BUY else OrderSide.SELL,
        "time_in_force": TimeInForce(TIME_IN_FORCE_WORDS.get(int(request.time_in_force), "day")),
        "client_order_id": alpaca_client_order_id(routed.strategy_id, request.client_order_id, placement),
    }
    if request.extended_hours:
        fields["extended_hours"] = True
    if qty is not None:
        fields["qty"] = float(qty)
    elif notional is not None:
        fields["notional"] = float(notional)
    elif request.qty:
        fields["qty"] = float(Decimal(request.qty))
    else:
        fields["notional"] = float(Decimal(request.notional))
    if request.type == common_pb2.ORDER_TYPE_LIMIT:
        # an OCO order is its own take-profit: its limit may be given as take_profit_limit_price only
        limit = request.limit_price or request.take_profit_limit_price
        return LimitOrderRequest(limit_price=float(Decimal(limit)), **fields)
    if request.type == common_pb2.ORDER_TYPE_STOP:
        return StopOrderRequest(stop_price=float(Decimal(request.stop_price)), **fields)
    if request.type == common_pb2.ORDER_TYPE_STOP_LIMIT:
        return StopLimitOrderRequest(
            limit_price=float(Decimal(request.limit_price)), stop_price=float(Decimal(request.stop_price)), **fields
        )
    if request.type == common_pb2.ORDER_TYPE_TRAILING_STOP:
        if request.trail_price:
            return TrailingStopOrderRequest(trail_price=float(Decimal(request.trail_price)), **fields)
        return TrailingStopOrderRequest(trail_percent=float(Decimal(request.trail_percent)), **fields)
    return MarketOrderRequest(**fields)


def net_view(order: DeskOrder) -> netting.NetOrder:
    """``order`` as netting sees it; an order by value carries the dollars it has still to trade."""
    by_value = order.qty is None and order.notional is not None and not order.is_final
    kind = ORDER_TYPE_WORDS.get(order.type, "")
    if order.type == common_pb2.ORDER_TYPE_TRAILING_STOP:
        kind = "stop"  # a trailing stop is a stop at the price Alpaca last gave it (none before it is placed)
    elif order.triggered:  # a triggered stop-loss exit goes to Alpaca as a market order (a stop-limit: its limit)
        kind = "limit" if order.limit_price is not None else "market"
    return netting.NetOrder(
        order_id=order.order_id,
        strategy_id=order.strategy_id,
        symbol=order.symbol,
        side=SIDE_WORDS.get(order.side, ""),
        type=kind,
        leaves=order.leaves_qty or Decimal(0),
        limit_price=order.limit_price,
        stop_price=None if order.triggered else order.stop_price,
        created_ns=order.created_ns,
        client_order_id=order.client_order_id,
        notional=max((order.notional or Decimal(0)) - order.cost, Decimal(0)) if by_value else None,
    )


def oco_text(done: DeskOrder) -> str:
    """The text of an OCO exit ended because ``done``, its partner, ended (as on the sim venue)."""
    if done.status == executions_pb2.ORDER_STATUS_FILLED:
        return f"OCO: {done.client_order_id} filled"
    return f"OCO: {done.client_order_id} was {status_name(done.status)}"


def fill_from_activity(row: dict[str, Any]) -> Fill:
    activity_id = str(row.get("id", ""))
    return Fill(
        alpaca_order_id=str(row["order_id"]),
        cum_qty=dec(row["cum_qty"]) or Decimal(0),
        qty=dec(row["qty"]) or Decimal(0),
        price=dec(row["price"]) or Decimal(0),
        event_ns=to_ns(dt.datetime.fromisoformat(str(row["transaction_time"]))),
        alpaca_execution_id=activity_id.split("::")[-1],
    )


class AlpacaBroker:
    """The :class:`~.base.Broker` for Alpaca. Reports go out through ``emit`` as soon as they are known
    (from REST replies and the stream alike, in the order the book made them); ``submit`` and
    ``cancel`` return ``[]``."""

    venue = "alpaca"
    wants_market_data = True  # the Alpaca feed's quotes and trades price internal crosses (AlpacaPrices)
    reports_async = True

    def __init__(
        self, config: AlpacaConfig, clock: Callable[[], int] = time.time_ns, client: TradingClient | None = None
    ) -> None:
        if not config.api_key or not config.secret_key:
            raise AlpacaCredentialsError("BROKER=alpaca needs ALPACA_API_KEY and ALPACA_SECRET_KEY (paper keys)")
        self.config = config
        self.rest = AlpacaRest(client or make_trading_client(config), config)
        self.book = AlpacaBook(clock)
        self._clock = clock
        self._emit: Emit = lambda reports: None
        self._sink: Sink = lambda reports: None
        self._prices: PriceSource | None = None  # DESK_PRICES (no source or age): not used to price crosses
        self.market = AlpacaPrices(config.cross_max_age, clock)
        self._routed: dict[str, orders_pb2.RoutedOrder] = {}  # desk order id -> its routed order (re-placing)
        self._symbol_locks: dict[str, asyncio.Lock] = {}
        self._final: dict[str, asyncio.Event] = {}  # desk order id -> set once it is final
        self._tasks: set[asyncio.Task[None]] = set()  # re-places and held orders worked in the background
        self._working: set[str] = set()  # symbols with such a task running
        self._exits_working: set[str] = set()  # symbols whose exits are being worked (_schedule_exits)
        self._exits_again: set[str] = set()  # ... and asked for again meanwhile
        self._stream: DeskTradingStream | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()  # set while reconciled and connected
        self._reconcile_lock = asyncio.Lock()
        self.reconciles = 0
        self.connects = 0
        self._started_ns = clock()
        self._restored = 0  # desk orders restore() rebuilt from EXECUTIONS (> 0: a restarted gateway)
        self._price_wait_until = 0.0  # monotonic: until then a missing Alpaca price is waited for (restart)

    # --- lifecycle ---------------------------------------------------------------------------------

    def check(self) -> None:
        """Start-up check (synchronous, before the service runs): one GET /v2/account."""
        try:
            self.rest.client.get_account()
        except APIError as exc:
            if exc.status_code in (401, 403):
                raise AlpacaCredentialsError(
                    f"Alpaca refused ALPACA_API_KEY/ALPACA_SECRET_KEY (HTTP {exc.status_code}); check the paper keys"
                ) from None
            raise AlpacaCredentialsError(f"Alpaca account check failed: {describe(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise AlpacaCredentialsError(f"Alpaca unreachable at start-up: {type(exc).__name__}") from None

    def restore(self, reports: Iterable[executions_pb2.ExecutionReport]) -> Reports:
        """What the desk decided before a restart, from EXECUTIONS (the shell calls it before :meth:`start`).

        Every stored report of venue alpaca rebuilds the desk orders: their reports (never made
        again), internal crosses and fills (``cum_qty``), status, and the "pull" records of Alpaca
        orders the desk canceled itself. The reconcile in :meth:`start` then attaches Alpaca's open
        and recent orders (ordered by placement ``<n>``) and completes a re-place that did not
        happen. Nothing to publish: ``[]``."""
        restored = self._restored = self.book.restore(list(reports))
        log.info("alpaca.book_restored", orders=restored)
        return []

    async def start(self, emit: Sink, prices: PriceSource | None = None, timeout: float = 30.0) -> None:
        """Connect the stream; return once the first reconcile is done (before any new work)."""

        def emit_and_notify(reports: Reports) -> Awaitable[bool] | None:
            stored = emit(reports)
            for report in reports:
                order = self.book.orders.get(report.order_id)
                waiter = self._final.get(report.order_id)
                if waiter is not None and order is not None and order.is_final:
                    waiter.set()
            self._follow_exits(reports)
            return stored

        self._sink = emit_and_notify
        self._emit = emit_and_notify
        self._prices = prices
        self._stream = DeskTradingStream(self.config, self._on_connected)
        self._stream.subscribe_trade_updates(self._on_trade_update)
        self._stream_task = asyncio.create_task(self._stream._run_forever(), name="alpaca.trade_updates")  # type: ignore[no-untyped-call]  # untyped in alpaca-py
        ready = asyncio.create_task(self._ready.wait())
        done, _ = await asyncio.wait({ready, self._stream_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            await self.stop()
            raise AlpacaUnavailable(f"trade_updates stream not connected and reconciled within {timeout} s")
        await self._complete_replacements()  # re-places the last process decided but did not make
        await self._work_held()  # orders held at the desk before the restart
        for symbol in sorted({o.symbol for o in self.book.orders.values() if o.order_class or o.parent_order_id}):
            await self._work_exits(symbol)  # exits to place, armed stop-losses to check, triggered ones to send
        if self._restored:
            # a restarted gateway has no prices yet (the process before had them): for its first
            # ALPACA_CROSS_MAX_AGE seconds an order is netted only once the feed's next price is in,
            # so a crash does not turn a cross into a pull (docs/alpaca.md, "Crashes")
            self._price_wait_until = time.monotonic() + self.config.cross_max_age

    async def _store(self, reports: Reports) -> None:
        """Publish ``reports`` and wait until EXECUTIONS holds them (a record written before acting).

        AlpacaUnavailable if they could not be stored: the desk then does not act (the routed order
        is nak'ed and comes back)."""
        stored = self._sink(reports)
        if stored is not None and not await stored:
            raise AlpacaUnavailable("execution reports not stored in EXECUTIONS; not acting on them")

    async def stop(self) -> None:
        if self._stream_task is not None:
            self._stream_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._stream_task
            self._stream_task = None
        if self._stream is not None:
            with contextlib.suppress(Exception):
                await self._stream.close()
        await asyncio.to_thread(self.rest.client._session.close)

    async def _on_connected(self) -> None:
        self.connects += 1
        self._ready.clear()
        log.info("alpaca.stream_connected", connects=self.connects)
        await self.reconcile()
        self._ready.set()
        for symbol in {o.symbol for o in self.book.orders.values() if o.order_class or o.parent_order_id}:
            self._schedule_exits(symbol)  # the reconcile may have found an entry filled, an exit done

    async def wait_ready(self) -> None:
        """Until the stream is connected and reconciled; AlpacaUnavailable after the retry budget."""
        try:
            await asyncio.wait_for(self._ready.wait(), self.config.retry_budget)
        except TimeoutError:
            raise AlpacaUnavailable("trade_updates stream not connected and reconciled") from None

    # --- Broker ------------------------------------------------------------------------------------

    async def submit(self, routed: orders_pb2.RoutedOrder) -> Reports:
        await self.wait_ready()
        order = self.book.remember(routed)
        if self._handled(order):
            return []  # a redelivered routed order: placed at Alpaca, or done (filled, crossed, refused)
        self._routed[order.order_id] = routed
        try:
            order_request(routed)
        except (ValueError, ArithmeticError) as exc:
            self._emit(self.book.rejected(order, f"invalid order for alpaca: {exc}"))
            return []
        async with self._lock(order.symbol):  # one netting decision per symbol at a time
            await self._complete_replacements(order.symbol, locked=True)
            if self._handled(order):
                return []
            if routed.new_order.replaces:
                replacing = await self._replace_old(routed, order)
                if replacing is None:
                    return []
                routed = self._routed[order.order_id] = replacing
            if order.order_class == OCO and order.qty is not None:
                # its stop-loss is armed at the desk (stored first), the order itself is the take-profit
                stop_loss = self.book.exit_leg(order, STOP_LOSS_SUFFIX, order.qty)
                await self._store(self.book.arm(stop_loss, order))
            await self._work(routed, order)
        return []

    async def _replace_old(self, routed: orders_pb2.RoutedOrder, new: DeskOrder) -> orders_pb2.RoutedOrder | None:
        """A replace at Alpaca: the order it names is canceled there (or ended at the desk, when nothing
        of it is at Alpaca), and ``new`` becomes an order of its own for its total less what the old one
        filled; the routed order to work for it, or None when it is rejected (old unknown, closed, or
        filled up to ``new``'s total). Not Alpaca's PATCH: so the new numbers meet the netting rule as
        any order does. ``new``'s NEW (with ``replaces``) is stored before the cancel: a restart at any
        point finishes the replace (:meth:`AlpacaBook.restore`)."""
        request = routed.new_order
        old = self.book.orders.get(order_id_for(routed.strategy_id, request.replaces))
        reason = ""
        if old is None:
            reason = f"UNKNOWN_ORDER: no order {request.replaces} of this strategy to replace"
        elif old.is_final and old.replaced_by != new.order_id:
            reason = f"ORDER_CLOSED: order {request.replaces} is already {status_name(old.status)}; nothing to replace"
        elif (old.symbol, old.side, old.type) != (new.symbol, new.side, new.type):
            reason = f"INVALID_FIELD: a replacing order keeps the symbol, side and type of {request.replaces}"
        if old is None or reason:
            self._emit(self.book.rejected(new, reason))
            return None
        total = Decimal(request.qty)
        racing = Decimal(0)
        if not old.is_final:
            new.qty = total - old.cum_qty
            await self._store(self.book.replacing(new, old))
            racing = await self._end_replaced(old)
        new.qty = total - old.cum_qty - racing
        if new.qty <= 0:
            filled = fmt(old.cum_qty + racing)
            text = f"INVALID_FIELD: {request.replaces} filled {filled} of the new total {fmt(total)} before it was replaced"
            self._emit(self.book.refused_remainder(new, text))
            return None
        replacing = orders_pb2.RoutedOrder()
        replacing.CopyFrom(routed)
        replacing.new_order.qty = fmt(new.qty)
        return replacing

    async def _end_replaced(self, old: DeskOrder) -> Decimal:
        """The replaced order ends: its Alpaca order is canceled (fills that raced the cancel stay its
        own), or, when nothing of it is at Alpaca (held at the desk, pulled), it is CANCELED at once.
        Returns the fills Alpaca made that the book has not booked yet (their events are on the way)."""
        if not self._live(old):
            self._emit(self.book.replaced(old))
            return Decimal(0)
        alpaca_id = old.alpaca_ids[-1]
        try:
            await self.rest.call("cancel_order_by_id", self.rest.client.cancel_order_by_id, alpaca_id)
        except APIError as exc:
            log.info("alpaca.replace_cancel_refused", alpaca_order_id=alpaca_id, error=describe(exc))
        snapshot = AlpacaOrder.from_model(
            await self.rest.call("get_order_by_id", self.rest.client.get_order_by_id, alpaca_id)
        )
        self._emit(self.book.on_order(snapshot))  # CANCELED "replaced by ..." once its fills are in
        return max(snapshot.filled_qty - old.filled_at_alpaca.get(alpaca_id, Decimal(0)), Decimal(0))

    def _lock(self, symbol: str) -> asyncio.Lock:
        return self._symbol_locks.setdefault(symbol, asyncio.Lock())

    @staticmethod
    def _handled(order: DeskOrder) -> bool:
        """Nothing more to do for a (redelivered) routed order: an Alpaca order of it exists (found
        by the reconcile, or placed by this process), or it is final (filled, crossed, refused).
        Known from EXECUTIONS and the account after a restart, not only from this process's memory.
        A desk order partly crossed whose remainder was never placed is not handled: its leaves go on."""
        return bool(order.alpaca_ids) or order.is_final

    def _live(self, order: DeskOrder) -> bool:
        """``order`` rests at Alpaca now (placed, not final, not pulled and waiting to be placed again)."""
        return bool(order.alpaca_ids) and not order.is_final and not self.book.needs_replacing(order)

    def _blocker(self, order: DeskOrder) -> DeskOrder | None:
        """An order live at Alpaca that ``order`` could trade against there (Alpaca would refuse it: 42210000)."""
        view = net_view(order)
        for other in self.book.orders.values():
            if (
                other.symbol == order.symbol
                and other.order_id != order.order_id
                and self._live(other)
                and netting.could_wash(view, net_view(other))
            ):
                return other
        return None

    def _routed_of(self, order: DeskOrder) -> orders_pb2.RoutedOrder:
        """The routed order of ``order`` (rebuilt from the book for an order of a previous process)."""
        known = self._routed.get(order.order_id)
        if known is not None:
            return known
        request = orders_pb2.OrderRequest(
            strategy_id=order.strategy_id,
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,
            type=order.type,
            time_in_force=order.tif,
            qty=fmt(order.qty),
            notional=fmt(order.notional),
            limit_price=fmt(order.limit_price),
            stop_price="" if order.type == common_pb2.ORDER_TYPE_TRAILING_STOP else fmt(order.stop_price),
            trail_price=fmt(order.trail_price),
            trail_percent=fmt(order.trail_percent),
        )
        return orders_pb2.RoutedOrder(
            order_id=order.order_id, strategy_id=order.strategy_id, member_id=order.member_id, new_order=request
        )

    async def _complete_replacements(self, symbol: str | None = None, locked: bool = False) -> None:
        """Place again the leaves of every order whose Alpaca order the desk canceled to cross it and
        whose re-place did not happen (a crash, or Alpaca unavailable past the budget): as the next
        ``<id>.<n>``. Alpaca's fills of the canceled order not yet booked are not leaves."""
        pending = [
            o
            for o in self.book.orders.values()
            if (symbol is None or o.symbol == symbol) and self.book.needs_replacing(o)
        ]
        for order in pending:
            if locked:
                await self._replace(order)
                continue
            async with self._lock(order.symbol):
                try:
                    await self._replace(order)
                except AlpacaUnavailable as exc:  # retried with the next order of the symbol, or restart
                    log.error("alpaca.replace_deferred", order_id=order.order_id, error=str(exc))

    async def _replace(self, order: DeskOrder) -> None:
        if not self.book.needs_replacing(order):
            return
        latest = order.latest_alpaca_id
        assert latest is not None and order.qty is not None
        _, filled = order.alpaca_state[latest]
        racing = filled - order.filled_at_alpaca.get(latest, Decimal(0))
        leaves = order.qty - order.cum_qty - max(racing, Decimal(0))
        if leaves <= 0:
            return
        blocker = self._blocker(order)
        if blocker is not None:  # the order it was pulled for still works at Alpaca: placed once that is done
            log.info(
                "alpaca.replace_waits",
                order_id=order.order_id,
                for_order=blocker.order_id,
                for_strategy=blocker.strategy_id,
            )
            return
        log.info(
            "alpaca.replacing_leaves",
            order_id=order.order_id,
            strategy_id=order.strategy_id,
            client_order_id=order.client_order_id,
            qty=fmt(leaves),
            placement=order.next_placement,
            canceled_alpaca_order=latest,
        )
        await self._place(self._routed_of(order), order, leaves, placement=order.next_placement)

    async def _net(self, order: DeskOrder) -> tuple[netting.NettingPlan, Decimal | None, str]:
        """Cross ``order`` with other strategies' orders live at Alpaca (netting.plan) and make the
        crosses; the plan for the rest, the fair price used and where it came from."""
        resting = [
            net_view(o)
            for o in self.book.orders.values()
            if o.symbol == order.symbol and o.order_id != order.order_id and self._live(o)
        ]
        incoming = net_view(order)
        if not resting:
            return netting.NettingPlan((), incoming.leaves, send_notional=incoming.notional), None, ""
        price, how = self.market.fair_price(order.symbol)
        if price is None and time.monotonic() < self._price_wait_until:
            log.info("order.waiting_for_price", symbol=order.symbol, reason=how)  # just restarted
            await self.market.wait_fresh(order.symbol, self._price_wait_until - time.monotonic())
            price, how = self.market.fair_price(order.symbol)
        if price is None and any(r.side != incoming.side and r.strategy_id != incoming.strategy_id for r in resting):
            log.warning("order.not_crossed", symbol=order.symbol, reason=how)
        plan = netting.plan(incoming, resting, price)
        for cross in plan.crosses:
            other = self.book.orders[cross.resting_order_id]
            left = await self._pull(other, order)  # the pull record is stored before the cancel
            room = order.qty - order.cum_qty if order.qty is not None else cross.qty
            qty = min(cross.qty, left, room)
            if qty > 0:
                log.info(
                    "order.crossed_internally",
                    with_order=other.order_id,
                    with_strategy=other.strategy_id,
                    qty=fmt(qty),
                    price=fmt(cross.price),
                    price_source=how,
                )
                # stored before the routed order is acked (the shell flushes first); a cross lost
                # in a crash is made again when the routed order comes back, and the re-place
                # below is then pulled again: the pull record already covers the resting order
                self._emit(self.book.cross(order, other, qty, cross.price))
            await self._replace(other)
        return plan, price, how

    def _rest_of(self, order: DeskOrder) -> tuple[Decimal | None, Decimal | None, bool]:
        """What of ``order`` goes to Alpaca: ``(qty, notional, anything)``; ``None`` for the order's own
        number (nothing crossed). An order by value sends its dollars not yet crossed (cents, down)."""
        if order.qty is not None:
            left = order.qty - order.cum_qty
            return (None if left == order.qty else left), None, left > 0
        value = ((order.notional or Decimal(0)) - order.cost).quantize(netting.CENT, ROUND_DOWN)
        return None, (None if order.cost == 0 else value), value > 0

    async def _work(self, routed: orders_pb2.RoutedOrder, order: DeskOrder) -> None:
        """The netting rule for one order (``brokers/netting.py``; under its symbol's lock): cross,
        then refuse (its own opposite order), hold at the desk, or send - pulling the other
        strategies' orders it could trade against and placing their leaves again once it is done."""
        plan, price, how = await self._net(order)
        if order.is_final:
            return
        if plan.conflict is not None:
            reason = (
                plan.conflict
                if price is not None or not how
                else f"{plan.conflict}; not crossed inside the desk: {how}"
            )
            log.warning("order.net_refused", reason=reason)
            self._emit(self.book.refused_remainder(order, reason))
            return
        if plan.hold is not None:
            reason = plan.hold if price is not None else f"{plan.hold} ({how})"
            if not self.book.is_held(order):
                log.info("order.held_at_desk", order_id=order.order_id, reason=reason)
            self._emit(self.book.hold(order, reason))
            return
        qty, notional, anything = self._rest_of(order)
        if not anything:
            return
        pulled = [self.book.orders[i] for i in plan.pulls if self._live(self.book.orders[i])]
        if pulled:
            log.info(
                "alpaca.pulling_for_order",
                order_id=order.order_id,
                orders=[o.order_id for o in pulled],
                price_source=how or None,
            )
        for other in pulled:
            await self._pull(other, order)  # pull record stored first; leaves placed again below
        done = self._final.setdefault(order.order_id, asyncio.Event())
        try:
            await self._place(routed, order, qty, placement=1, notional=notional)
            if pulled and not order.is_final:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), SETTLE_TIMEOUT)
        finally:
            self._final.pop(order.order_id, None)
            for other in pulled:
                await self._replace(other)  # waits (placed when this one is done) while it still works

    async def _work_held(self, symbol: str | None = None) -> None:
        """Work again the orders held at the desk (of ``symbol``): a fresh price may make them
        executable, or what they could trade against may be gone."""
        held = sorted(
            (o for o in self.book.held_orders() if symbol is None or o.symbol == symbol), key=lambda o: o.created_ns
        )
        for order in held:
            async with self._lock(order.symbol):
                if not self.book.is_held(order):
                    continue
                try:
                    await self._complete_replacements(order.symbol, locked=True)
                    await self._work(self._routed_of(order), order)
                except AlpacaUnavailable as exc:
                    log.error("alpaca.held_deferred", order_id=order.order_id, error=str(exc))

    def _schedule(self, symbol: str) -> None:
        """Re-places and held orders of ``symbol`` worked again, in the background (one task per symbol)."""
        if symbol in self._working or not self._ready.is_set():
            return
        self._working.add(symbol)

        async def run() -> None:
            try:
                await self._complete_replacements(symbol)
                await self._work_held(symbol)
            finally:
                self._working.discard(symbol)

        task = asyncio.create_task(run(), name=f"alpaca.work.{symbol}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- exits of bracket / OTO / OCO orders (docs/alpaca.md, "Order types at Alpaca") ------------

    def _follow_exits(self, reports: Reports) -> None:
        """What reports mean for exits: an OCO exit filled ends its armed stop-loss partner (nothing of
        it is at Alpaca), one ended otherwise ends it too; a bracket / OTO entry done with fills, or an
        armed stop-loss, has its symbol's exits worked (in the background)."""
        for report in reports:
            order = self.book.orders.get(report.order_id)
            if order is None:
                continue
            partner = self.book.partner(order)
            if order.is_final and partner is not None and self.book.is_armed(partner):
                self._emit(self.book.end_at_desk(partner, oco_text(order)))
            wanted = (order.take_profit is not None) + (order.stop_loss is not None)
            if self._entry_done(order) and len(self.book.legs_of(order)) < wanted:
                self._schedule_exits(order.symbol)

    @staticmethod
    def _entry_done(order: DeskOrder) -> bool:
        """A bracket / OTO entry whose exits are due: final with fills (filled; canceled after fills)."""
        return order.order_class in (BRACKET, OTO) and order.is_final and order.cum_qty > 0

    def _schedule_exits(self, symbol: str) -> None:
        """:meth:`_work_exits` of ``symbol`` in the background; asked again while it runs, it runs again."""
        if not self._ready.is_set():
            return  # the start (after the reconcile) works every symbol's exits
        if symbol in self._exits_working:
            self._exits_again.add(symbol)
            return
        self._exits_working.add(symbol)

        async def run() -> None:
            try:
                while True:
                    self._exits_again.discard(symbol)
                    try:
                        await self._work_exits(symbol)
                    except AlpacaUnavailable as exc:  # tried again with the next price or report of the symbol
                        log.error("alpaca.exits_deferred", symbol=symbol, error=str(exc))
                    if symbol not in self._exits_again:
                        return
            finally:
                self._exits_working.discard(symbol)

        task = asyncio.create_task(run(), name=f"alpaca.exits.{symbol}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _work_exits(self, symbol: str) -> None:
        """Under ``symbol``'s lock: the exits of its bracket / OTO entries done with fills (made once),
        its armed stop-losses whose stop the Alpaca price reached (triggered), and triggered ones not
        yet at Alpaca (after a restart) sent."""
        async with self._lock(symbol):
            orders = sorted((o for o in self.book.orders.values() if o.symbol == symbol), key=lambda o: o.created_ns)
            for order in orders:
                if self._entry_done(order):
                    await self._place_exits(order)
            for order in orders:
                partner = self.book.partner(order)
                if self.book.is_armed(order) and partner is not None and partner.is_final:
                    self._emit(
                        self.book.end_at_desk(order, oco_text(partner))
                    )  # (its end was not seen before a restart)
                elif self.book.is_armed(order):
                    await self._check_trigger(order)
                elif order.triggered and not order.alpaca_ids and not order.is_final:
                    await self._send_stop_loss(order)

    async def _place_exits(self, entry: DeskOrder) -> None:
        """``entry``'s exits for what it filled: a bracket's take-profit goes to Alpaca (through netting,
        as any order) with its stop-loss armed at the desk first; an OTO's one exit goes to Alpaca."""
        legs = []
        if entry.take_profit is not None:
            legs.append(self.book.exit_leg(entry, TAKE_PROFIT_SUFFIX, entry.cum_qty))
        if entry.stop_loss is not None:
            legs.append(self.book.exit_leg(entry, STOP_LOSS_SUFFIX, entry.cum_qty))
        if len(legs) == 2:
            take_profit, stop_loss = legs
            if not stop_loss.is_final and not stop_loss.triggered:
                await self._store(self.book.arm(stop_loss, take_profit))
            legs = [take_profit]
        for leg in legs:
            if not self._handled(leg) and not self.book.is_held(leg):
                log.info("alpaca.exit_placed", order_id=leg.order_id, parent=entry.order_id, qty=fmt(leg.qty))
                await self._work(self._routed_of(leg), leg)

    def _reached(self, order: DeskOrder) -> tuple[bool, str]:
        """Whether the Alpaca price reached ``order``'s stop (a sell stop: at or below; a buy: at or
        above), and what that price was; never on a price older than ALPACA_CROSS_MAX_AGE."""
        price, how = self.market.fair_price(order.symbol)
        if price is None or order.stop_price is None:
            return False, how
        sell = order.side == common_pb2.SIDE_SELL
        reached = price <= order.stop_price if sell else price >= order.stop_price
        return reached, f"{how}: {fmt(price)} reached the stop {fmt(order.stop_price)}"

    async def _check_trigger(self, order: DeskOrder) -> None:
        reached, why = self._reached(order)
        if not reached:
            return
        log.info("alpaca.stop_loss_triggered", order_id=order.order_id, why=why)
        await self._store(self.book.trigger(order, why))  # stored first: a restart finishes what follows
        await self._send_stop_loss(order)

    async def _send_stop_loss(self, order: DeskOrder) -> None:
        """A triggered stop-loss: its take-profit partner is canceled at Alpaca (its fills that raced the
        cancel count), then what is left goes to Alpaca as a market order (a stop-limit as its limit),
        through netting as any order; nothing left: it ends (``OCO: <tp> filled``)."""
        partner = self.book.partner(order)
        racing = Decimal(0)
        if partner is not None and not partner.is_final:
            if self._live(partner):
                racing = await self._end_partner(partner)
            else:  # held at the desk, or pulled and waiting to go again: nothing of it is at Alpaca
                self._emit(self.book.end_at_desk(partner, partner.canceled_text))
        assert order.qty is not None
        left = order.qty - order.cum_qty - (partner.cum_qty + racing if partner is not None else Decimal(0))
        if left <= 0:
            done = partner.client_order_id if partner is not None else order.client_order_id
            self._emit(self.book.end_at_desk(order, f"OCO: {done} filled"))
            return
        order.qty = order.cum_qty + left
        routed = orders_pb2.RoutedOrder()
        routed.CopyFrom(self._routed_of(order))
        routed.new_order.stop_price = ""
        routed.new_order.type = (
            common_pb2.ORDER_TYPE_LIMIT if order.limit_price is not None else common_pb2.ORDER_TYPE_MARKET
        )
        await self._work(routed, order)

    async def _end_partner(self, partner: DeskOrder) -> Decimal:
        """Cancel ``partner``'s Alpaca order (an OCO exit whose other exit now acts): the fills Alpaca
        made of it that the book has not booked yet."""
        alpaca_id = partner.alpaca_ids[-1]
        try:
            await self.rest.call("cancel_order_by_id", self.rest.client.cancel_order_by_id, alpaca_id)
        except APIError as exc:
            log.info("alpaca.oco_cancel_refused", alpaca_order_id=alpaca_id, error=describe(exc))
        snapshot = AlpacaOrder.from_model(
            await self.rest.call("get_order_by_id", self.rest.client.get_order_by_id, alpaca_id)
        )
        self._emit(self.book.on_order(snapshot))  # CANCELED "OCO: ... triggered" once its fills are in
        return max(snapshot.filled_qty - partner.filled_at_alpaca.get(alpaca_id, Decimal(0)), Decimal(0))

    async def _cancel_partner(self, order: DeskOrder) -> None:
        """The strategy canceled ``order``: its OCO partner ends too (``OCO: <id> was canceled``)."""
        partner = self.book.partner(order)
        if partner is None or partner.is_final:
            return
        partner.canceled_text = f"OCO: {order.client_order_id} was canceled"
        if self._live(partner):
            await self._end_partner(partner)
        else:
            self._emit(self.book.end_at_desk(partner, partner.canceled_text))

    async def _pull(self, order: DeskOrder, incoming: DeskOrder) -> Decimal:
        """Cancel ``order``'s Alpaca order so its leaves can be crossed (or sold past); its leaves now.

        The pull record (:meth:`AlpacaBook.pulling`) is stored in EXECUTIONS first: after a crash at
        any later point the cancel is known to be the desk's and the leaves are placed again."""
        alpaca_id = order.alpaca_ids[-1]
        await self._store(self.book.pulling(order, alpaca_id, incoming))
        try:
            await self.rest.call("cancel_order_by_id", self.rest.client.cancel_order_by_id, alpaca_id)
        except APIError as exc:
            log.info("alpaca.pull_refused", alpaca_order_id=alpaca_id, error=describe(exc))
        snapshot = AlpacaOrder.from_model(
            await self.rest.call("get_order_by_id", self.rest.client.get_order_by_id, alpaca_id)
        )
        self._emit(self.book.on_order(snapshot))  # its state (canceled, or filled by a race): never an end here
        racing = snapshot.filled_qty - order.filled_at_alpaca.get(alpaca_id, Decimal(0))  # fills not yet seen
        assert order.qty is not None
        return max(order.qty - order.cum_qty - racing, Decimal(0))

    async def _place(
        self,
        routed: orders_pb2.RoutedOrder,
        order: DeskOrder,
        qty: Decimal | None,
        placement: int,
        may_pull: bool = True,
        notional: Decimal | None = None,
    ) -> None:
        client_order_id = alpaca_client_order_id(routed.strategy_id, routed.new_order.client_order_id, placement)
        self.book.expect(order, client_order_id)
        try:
            placed = await self.rest.call(
                "submit_order", self.rest.client.submit_order, order_request(routed, qty, placement, notional)
            )
        except APIError as exc:
            if may_pull and placement == 1 and self._held_by_others(exc, order):
                await self._sell_past_held_shares(routed, order, qty)
                return
            if api_code(exc) != DUPLICATE_CLIENT_ORDER_ID:
                log.warning("alpaca.order_refused", error=describe(exc))
                self._emit(self.book.refused_remainder(order, describe(exc)))
                return
            log.info("alpaca.duplicate_client_order_id", alpaca_client_order_id=client_order_id)
            placed = await self.rest.call(
                "get_order_by_client_id", self.rest.client.get_order_by_client_id, client_order_id
            )
        self._emit(self.book.on_order(AlpacaOrder.from_model(placed)))

    def _resting_sells_of_others(self, order: DeskOrder) -> list[DeskOrder]:
        return [
            o
            for o in self.book.orders.values()
            if o.symbol == order.symbol
            and o.side == common_pb2.SIDE_SELL
            and o.strategy_id != order.strategy_id
            and o.alpaca_ids
            and not o.is_final
            and o.order_id != order.order_id
        ]

    def _held_by_others(self, exc: APIError, order: DeskOrder) -> bool:
        """A 403 40310000 on a sell whose shares are held by other strategies' resting sells."""
        if api_code(exc) != INSUFFICIENT_QTY or order.side != common_pb2.SIDE_SELL:
            return False
        try:
            held = Decimal(str(json.loads(str(exc)).get("held_for_orders") or "0"))
        except (ValueError, ArithmeticError, AttributeError):
            return False
        return held > 0 and bool(self._resting_sells_of_others(order))

    async def _sell_past_held_shares(
        self, routed: orders_pb2.RoutedOrder, order: DeskOrder, qty: Decimal | None
    ) -> None:
        """Another strategy's resting sell holds the shares: pull it, sell, then place it again.

        One account cannot both keep shares reserved for strategy A's resting sell and sell them
        for strategy B; the desk steps A's order aside until B's sell is done (Alpaca fills market
        orders at once while the market is open), then places A's leaves again. If Alpaca refuses
        A's order then, A's order is canceled with Alpaca's reason."""
        pulled = self._resting_sells_of_others(order)
        log.info("alpaca.pulling_resting_sells", orders=[o.order_id for o in pulled])
        leaves = {o.order_id: await self._pull(o, order) for o in pulled}
        done = self._final.setdefault(order.order_id, asyncio.Event())
        try:
            await self._place(routed, order, qty, placement=1, may_pull=False)
            if not order.is_final:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), SETTLE_TIMEOUT)
        finally:
            self._final.pop(order.order_id, None)
            for other in pulled:
                if leaves[other.order_id] > 0:
                    await self._replace(other)

    async def cancel(self, routed: orders_pb2.RoutedOrder) -> Reports:
        await self.wait_ready()
        order = self.book.orders.get(routed.order_id)
        if order is None:
            client_order_id = alpaca_client_order_id(routed.strategy_id, routed.cancel.client_order_id)
            try:
                found = await self.rest.call(
                    "get_order_by_client_id", self.rest.client.get_order_by_client_id, client_order_id
                )
            except APIError as exc:
                return self.book.cancel_rejected(routed, f"unknown order {routed.order_id}: {describe(exc)}")
            self._emit(self.book.on_order(AlpacaOrder.from_model(found)))
            order = self.book.orders.get(routed.order_id)
        if order is not None and (self.book.is_held(order) or self.book.is_armed(order)):
            async with self._lock(order.symbol):
                if self.book.is_armed(order):  # a stop-loss armed at the desk: ended, and its take-profit
                    self._emit(self.book.end_at_desk(order, "canceled on request (armed at the desk, never sent)"))
                    await self._cancel_partner(order)
                    return []
                if self.book.is_held(order):  # never sent to Alpaca: the desk ends it
                    self._emit(self.book.cancel_held(order))
                    await self._cancel_partner(order)
                    return []
        if order is None or not order.alpaca_ids:
            return self.book.cancel_rejected(routed, f"unknown order {routed.order_id}")
        if order.is_final:
            return self.book.cancel_rejected(routed, "order is already closed")
        alpaca_id = order.alpaca_ids[-1]
        pending_replace = self.book.needs_replacing(order)  # pulled; its leaves wait to go to Alpaca again
        order.superseded.discard(alpaca_id)  # the strategy's own cancel: its end, never re-placed
        if pending_replace:
            snapshot = await self.rest.call("get_order_by_id", self.rest.client.get_order_by_id, alpaca_id)
            self._emit(self.book.on_order(AlpacaOrder.from_model(snapshot)))  # CANCELED, after its fills
            return []
        try:
            await self.rest.call("cancel_order_by_id", self.rest.client.cancel_order_by_id, alpaca_id)
        except APIError as exc:
            return self.book.cancel_rejected(routed, describe(exc))
        snapshot = await self.rest.call("get_order_by_id", self.rest.client.get_order_by_id, alpaca_id)
        self._emit(self.book.on_order(AlpacaOrder.from_model(snapshot)))
        if order.is_final:
            async with self._lock(order.symbol):
                await self._cancel_partner(order)
        return []

    async def on_market_data(self, update: MarketUpdate) -> Reports:
        self.market.update(update)
        if (
            self.book.held
            and not isinstance(update, marketdata_pb2.Bar)
            and any(o.symbol == update.symbol for o in self.book.held_orders())
        ):
            self._schedule(update.symbol)  # a fresh price may make a held order executable
        if (
            self.book.armed
            and not isinstance(update, marketdata_pb2.Bar)
            and any(o.symbol == update.symbol and self.book.is_armed(o) for o in self.book.orders.values())
        ):
            self._schedule_exits(update.symbol)  # a fresh price may reach an armed stop-loss
        return []

    async def shutdown(self) -> Reports:
        await self.stop()
        return []  # orders rest at Alpaca across a restart; the next start reconciles them

    def open_orders(self) -> list[ledger_pb2.OrderRecord]:
        return self.book.open_orders()

    def stats(self) -> BrokerStats:
        return {"restore_skipped": 0}  # the book's restore logs what it rebuilt (alpaca.book_restored)

    async def positions(self) -> list[ledger_pb2.Position]:
        """The account's positions at Alpaca (the ``positions`` endpoint, for ``desk reconcile``)."""
        rows = await self.rest.call("get_all_positions", self.rest.client.get_all_positions)
        result = []
        for row in rows:
            if isinstance(row, str):  # alpaca-py's raw-data typing; the client here returns models
                continue
            qty = dec(row.qty) or Decimal(0)
            side = str(getattr(row.side, "value", row.side))
            if side == "short" and qty > 0:
                qty = -qty
            result.append(
                ledger_pb2.Position(
                    symbol=str(row.symbol),
                    qty=fmt(qty),
                    avg_cost=fmt(dec(row.avg_entry_price)),
                    cost_basis=fmt(dec(row.cost_basis)),
                    last_price=fmt(dec(row.current_price)),
                    market_value=fmt(dec(row.market_value)),
                    unrealized_pnl=fmt(dec(row.unrealized_pl)),
                    updated_ns=self._clock(),
                )
            )
        return result

    # --- stream and reconciliation -----------------------------------------------------------------

    async def _on_trade_update(self, update: Any) -> None:
        try:
            alpaca = AlpacaOrder.from_model(update.order)
            event = str(getattr(update.event, "value", update.event))
            fill = None
            if update.qty is not None and update.price is not None:
                fill = Fill(
                    alpaca_order_id=alpaca.id,
                    cum_qty=alpaca.filled_qty,
                    qty=dec(update.qty) or Decimal(0),
                    price=dec(update.price) or Decimal(0),
                    event_ns=to_ns(update.timestamp),
                    alpaca_execution_id=str(update.execution_id or ""),
                )
            self._emit(self.book.on_update(event, alpaca, fill))
            order = self.book.by_alpaca_id(alpaca.id)
            if order is not None and (self.book.needs_replacing(order) or order.is_final):
                # a pulled order whose cancel Alpaca confirmed only now (its leaves go again), or an
                # order done at Alpaca: what was pulled or held for it may go to Alpaca now
                self._schedule(order.symbol)
        except Exception as exc:
            log.error("alpaca.trade_update_failed", error=repr(exc), exc_info=exc)

    async def reconcile(self) -> None:
        """Open orders, then orders and fills since the last event seen, into the book (idempotent)."""
        async with self._reconcile_lock:
            since_ns = self.book.last_event_ns or self._started_ns - int(self.config.reconcile_lookback * 1e9)
            since = dt.datetime.fromtimestamp((since_ns - 5_000_000_000) / 1e9, dt.UTC)  # 5 s of overlap
            client = self.rest.client
            open_orders = await self.rest.call(
                "get_orders",
                client.get_orders,
                GetOrdersRequest(status=QueryOrderStatus.OPEN, limit=PAGE, direction=Sort.ASC),
            )
            recent = await self.rest.call(
                "get_orders",
                client.get_orders,
                GetOrdersRequest(status=QueryOrderStatus.ALL, after=since, limit=PAGE, direction=Sort.ASC),
            )
            orders = {str(o.id): AlpacaOrder.from_model(o) for o in [*open_orders, *recent]}
            fills = await self._fills_since(since)
            reports: Reports = []
            for alpaca in orders.values():  # NEW for every desk order first, fills next, final states last
                if self.book.attach(alpaca) is not None:
                    reports += self.book.on_order(AlpacaOrder(**{**alpaca.__dict__, "status": "new"}))
            for fill in fills:
                alpaca_or_none = orders.get(fill.alpaca_order_id)
                if alpaca_or_none is None:
                    model = await self.rest.call("get_order_by_id", client.get_order_by_id, fill.alpaca_order_id)
                    alpaca_or_none = orders[fill.alpaca_order_id] = AlpacaOrder.from_model(model)
                reports += self.book.on_fill(AlpacaOrder(**{**alpaca_or_none.__dict__, "status": "new"}), fill)
            for alpaca in orders.values():
                reports += self.book.on_order(alpaca)
            self.reconciles += 1
            log.info(
                "alpaca.reconciled", orders=len(orders), fills=len(fills), reports=len(reports), since=since.isoformat()
            )
            self._emit(reports)

    async def _fills_since(self, since: dt.datetime) -> list[Fill]:
        fills: list[Fill] = []
        params: dict[str, Any] = {"after": since.isoformat(), "direction": "asc", "page_size": 100}
        while True:
            rows = await self.rest.call(
                "account_activities_fill", self.rest.client.get, "/account/activities/FILL", dict(params)
            )
            rows = rows if isinstance(rows, list) else []
            fills.extend(fill_from_activity(r) for r in rows if r.get("order_id"))
            if len(rows) < params["page_size"]:
                return fills
            params["page_token"] = rows[-1]["id"]


def alpaca_config(settings: Any) -> AlpacaConfig:
    """The broker's config from the gateway's settings (the keys leave their SecretStr only here)."""
    key = settings.alpaca_api_key.get_secret_value() if settings.alpaca_api_key else ""
    secret = settings.alpaca_secret_key.get_secret_value() if settings.alpaca_secret_key else ""
    if not key or not secret:
        raise AlpacaCredentialsError("BROKER=alpaca needs ALPACA_API_KEY and ALPACA_SECRET_KEY (paper keys)")
    return AlpacaConfig(
        api_key=key,
        secret_key=secret,
        paper=settings.alpaca_paper,
        rest_url=settings.alpaca_rest_url,
        stream_url=settings.alpaca_stream_url,
        timeout=settings.alpaca_timeout,
        retry_budget=settings.alpaca_retry_budget,
        retry_backoff=settings.alpaca_retry_backoff,
        reconcile_lookback=settings.alpaca_reconcile_lookback,
        reconnect_backoff=settings.alpaca_reconnect_backoff,
        cross_max_age=settings.alpaca_cross_max_age,
    )
