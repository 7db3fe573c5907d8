"""A faithful fake of Alpaca's paper trading API for tests, driven through the real alpaca-py clients.

Real servers on 127.0.0.1, in a thread with their own event loop (so a test may call the synchronous
``TradingClient`` directly, and the gateway's worker threads may block on it):

* REST v2 (a small asyncio HTTP/1.1 server, keep-alive): ``POST/GET/DELETE /v2/orders``,
  ``GET /v2/orders/{id}``, ``GET /v2/orders:by_client_order_id``, ``GET /v2/account``,
  ``GET /v2/positions[/{symbol}]``, ``GET /v2/clock``, ``GET /v2/account/activities/FILL``.
  Numbers are accepted as JSON numbers or strings and returned as strings; every error body is
  ``{"code": int, "message": str}`` as Alpaca's are.
* Historical market data (``historical.py``): ``GET /v2/stocks/bars`` and ``/v2/stocks/{symbol}/bars``
  with Alpaca's query parameters, pagination and 422/403/429 errors; deterministic bars.
* ``ws://.../stream``: the JSON ``trade_updates`` stream (authenticate -> authorized -> listen).
* ``ws://.../v2/iex``: the msgpack market-data stream (``t`` as msgpack Timestamps, bars with n/vw).

Alpaca's refusals it reproduces (shapes from /work/shared/ALPACA.md): duplicate client_order_id
(422, 40010001), potential wash trade (422, 42210000), insufficient qty available because shares are
held for open sell orders (403, 40310000 with available/existing_qty/held_for_orders), insufficient
buying power (403, 40310000), unknown order (404, 40410000), not cancelable (422, 42210000), 401
(40110000) for a wrong key. Test controls: :meth:`FakeAlpaca.fill` (partial fills), ``auto_fill``
for market orders, :meth:`inject` (429 / 5xx / a POST whose reply is lost after the order was
placed), :meth:`drop_trade_streams` with refusal of reconnects until :meth:`allow_trade_streams`,
and market-data publishing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import msgpack
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .historical import HistoricalBars, HistoricalError

T = TypeVar("T")
ZERO = Decimal(0)
OPEN_STATUSES = {"new", "partially_filled", "accepted", "pending_new", "held"}


def _iso(ts: dt.datetime | None) -> str | None:
    return None if ts is None else ts.isoformat().replace("+00:00", "Z")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _dec(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    return Decimal(str(value))


def _fmt(value: Decimal | None) -> str | None:
    if value is None:
        return None
    text = format(value.normalize(), "f")
    return text


def _client_order_id(query: dict[str, str], raw: bytes) -> str:
    """The client order id a request names: its query's, else its JSON body's."""
    if "client_order_id" in query:
        return query["client_order_id"]
    with contextlib.suppress(ValueError):
        body = json.loads(raw) if raw else None
        if isinstance(body, dict):
            return str(body.get("client_order_id") or "")
    return ""


class ApiError(Exception):
    def __init__(self, status: int, code: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.extra}


@dataclass
class FakeOrder:
    id: str
    client_order_id: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    qty: Decimal
    limit_price: Decimal | None
    stop_price: Decimal | None
    created_at: dt.datetime
    status: str = "new"
    filled_qty: Decimal = ZERO
    cost: Decimal = ZERO
    updated_at: dt.datetime = field(default_factory=_now)
    filled_at: dt.datetime | None = None
    canceled_at: dt.datetime | None = None
    asset_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    trail_price: Decimal | None = None  # trailing_stop: the trail, and
    trail_percent: Decimal | None = None
    hwm: Decimal | None = None  # the best price seen since it was placed (set_price ratchets it)
    order_class: str = "simple"  # bracket / oco / oto: the parent (an oco: its take-profit) and
    legs: list[FakeOrder] = field(default_factory=list)  # its legs (held until a bracket / oto parent fills)
    parent_id: str | None = None  # a leg: its parent's id

    def trail(self) -> None:
        """A trailing stop's stop_price from its hwm (Alpaca's rule: hwm -/+ trail, or hwm x (1 -/+ %))."""
        assert self.hwm is not None
        sign = -1 if self.side == "sell" else 1
        offset = self.trail_price if self.trail_price is not None else self.hwm * (self.trail_percent or ZERO) / 100
        self.stop_price = self.hwm + sign * offset

    @property
    def leaves(self) -> Decimal:
        return self.qty - self.filled_qty

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def to_json(self, nested: bool = True) -> dict[str, Any]:
        """Alpaca's order JSON; a parent's ``legs`` when ``nested`` (a POST reply, GET of one order,
        ``GET /v2/orders?nested=true``), else null."""
        avg = self.cost / self.filled_qty if self.filled_qty else None
        return {
            "id": self.id,
            "client_order_id": self.client_order_id,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "submitted_at": _iso(self.created_at),
            "filled_at": _iso(self.filled_at),
            "expired_at": None,
            "expires_at": None,
            "canceled_at": _iso(self.canceled_at),
            "failed_at": None,
            "replaced_at": None,
            "replaced_by": None,
            "replaces": None,
            "asset_id": self.asset_id,
            "symbol": self.symbol,
            "asset_class": "us_equity",
            "notional": None,
            "qty": _fmt(self.qty),
            "filled_qty": _fmt(self.filled_qty),
            "filled_avg_price": _fmt(avg),
            "order_class": self.order_class,
            "order_type": self.type,
            "type": self.type,
            "side": self.side,
            "time_in_force": self.time_in_force,
            "limit_price": _fmt(self.limit_price),
            "stop_price": _fmt(self.stop_price),
            "status": self.status,
            "extended_hours": False,
            "legs": [leg.to_json() for leg in self.legs] if nested and self.legs else None,
            "trail_percent": _fmt(self.trail_percent),
            "trail_price": _fmt(self.trail_price),
            "hwm": _fmt(self.hwm),
            "position_intent": None,
        }


@dataclass
class Injection:
    """One injected failure: ``status`` with an Alpaca error body, for requests matching method/path."""

    status: int
    method: str = ""
    path_prefix: str = ""
    after_commit: bool = False  # POST /v2/orders: place the order, then lose the reply
    client_order_id: str = ""  # only requests naming this client order id (POST body or query)


@dataclass
class Gate:
    """Matching requests are held unanswered until :meth:`FakeAlpaca.release`: a test kills the client
    while it waits on one (an exact step of its work). ``commit``: the request is applied to the account
    on arrival and only its reply is held (the client dies not knowing it happened); otherwise a held
    request released with ``proceed=False`` never reaches the account."""

    method: str
    path: str = ""  # exact path, or
    path_prefix: str = ""  # a prefix of it
    client_order_id: str = ""  # only requests naming this client order id (POST body or query)
    commit: bool = False
    reached: threading.Event = field(default_factory=threading.Event)  # set when the first one arrives
    held: int = 0  # requests held so far
    proceed: bool = False
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    def matches(self, method: str, path: str, client_order_id: str) -> bool:
        return (
            self.method == method
            and (path == self.path if self.path else path.startswith(self.path_prefix))
            and (not self.client_order_id or self.client_order_id == client_order_id)
        )


class FakeAlpaca:
    """The fake. ``start()`` it, point alpaca-py at :attr:`rest_url` / :attr:`stream_url` / :attr:`data_url`."""

    def __init__(self, key: str = "PKFAKEKEY", secret: str = "fake-secret", cash: Decimal = Decimal(1_000_000)) -> None:
        self.key, self.secret = key, secret
        self.cash = cash
        self.auto_fill = True  # market orders fill at the symbol's price as soon as they are placed
        self.prices: dict[str, Decimal] = {}
        self.orders: dict[str, FakeOrder] = {}
        self.positions: dict[str, tuple[Decimal, Decimal]] = {}  # symbol -> (qty, cost basis)
        self.activities: list[dict[str, Any]] = []
        self.injections: list[Injection] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) of every REST request
        self.refusals: list[tuple[int, int]] = []  # (http status, code) of every error sent
        self.trade_streams_refused = False
        self.trade_connections = 0  # authorized trade_updates connections so far
        self.trade_refusals = 0  # trade_updates handshakes refused (drop_trade_streams): reconnect attempts
        self.gates: list[Gate] = []  # requests held until released (hold / release)
        self.market_open = True  # GET /v2/clock's is_open; while closed market orders rest (close_market)
        self._trade_queues: set[asyncio.Queue[str | None]] = set()
        self._data_conns: dict[ServerConnection, dict[str, set[str]]] = {}
        self.data_connections = 0  # authenticated market-data connections so far
        self._data_changed = threading.Condition()
        self._closing: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._http: asyncio.Server | None = None
        self._http_tasks: set[asyncio.Task[None]] = set()
        self._ws: Server | None = None
        self.rest_port = 0
        self.ws_port = 0
        self._lock = threading.Lock()
        self.historical = HistoricalBars()  # GET /v2/stocks/bars, /v2/stocks/{symbol}/bars: see historical.py

    # --- lifecycle ---------------------------------------------------------------------------------

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def stream_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/stream"

    @property
    def historical_url(self) -> str:
        """``StockHistoricalDataClient(url_override=...)``: the historical bars live on the REST server."""
        return self.rest_url

    @property
    def data_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/v2/iex"

    def start(self) -> FakeAlpaca:
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self._start_servers())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._stop_servers())
            loop.close()

        self._thread = threading.Thread(target=main, name="fake-alpaca", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake alpaca did not start")
        return self

    @classmethod
    @contextlib.contextmanager
    def serving(cls, prices: dict[str, str] | None = None) -> Iterator[FakeAlpaca]:
        """A started fake (with these last prices), stopped on the way out: a test fixture's body."""
        server = cls().start()
        for symbol, price in (prices or {}).items():
            server.set_price(symbol, price)
        try:
            yield server
        finally:
            server.stop()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    async def _start_servers(self) -> None:
        self._http = await asyncio.start_server(self._serve_http, "127.0.0.1", 0)
        self.rest_port = self._http.sockets[0].getsockname()[1]
        self._ws = await serve(self._serve_ws, "127.0.0.1", 0, process_request=self._ws_gate, compression=None)
        self.ws_port = next(iter(self._ws.sockets)).getsockname()[1]

    async def _stop_servers(self) -> None:
        assert self._http is not None and self._ws is not None
        self._http.close()
        for task in list(self._http_tasks):
            task.cancel()
        await asyncio.gather(*self._http_tasks, return_exceptions=True)
        for conn in list(self._data_conns):
            await conn.close()
        for queue in list(self._trade_queues):
            queue.put_nowait(None)
        self._ws.close()
        await self._ws.wait_closed()
        await self._http.wait_closed()

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the fake's loop (state lives there) and return its result."""
        assert self._loop is not None
        if threading.current_thread() is self._thread:
            return fn()

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def _run_coro(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # --- test controls -----------------------------------------------------------------------------

    def set_price(self, symbol: str, price: str | Decimal) -> None:
        """The symbol's last price; an open trailing stop's hwm (and stop) follows it (it never triggers:
        fills come from :meth:`fill` here, as for stops)."""

        def run() -> None:
            value = Decimal(str(price))
            self.prices[symbol] = value
            for order in self.orders.values():
                if order.is_open and order.symbol == symbol and order.hwm is not None:
                    better = value > order.hwm if order.side == "sell" else value < order.hwm
                    if better:
                        order.hwm = value
                        order.trail()

        self.call(run)

    def inject(
        self,
        status: int,
        count: int = 1,
        method: str = "",
        path_prefix: str = "",
        after_commit: bool = False,
        client_order_id: str = "",
    ) -> None:
        """The next ``count`` matching requests get ``status`` (429, 500, 503, 504...)."""

        def add() -> None:
            for _ in range(count):
                self.injections.append(Injection(status, method, path_prefix, after_commit, client_order_id))

        self.call(add)

    def hold(
        self, method: str, path: str = "", path_prefix: str = "", client_order_id: str = "", commit: bool = False
    ) -> Gate:
        """Hold matching requests unanswered from now on (a :class:`Gate`) until :meth:`release`."""

        def add() -> Gate:
            gate = Gate(method, path, path_prefix, client_order_id, commit)
            self.gates.append(gate)
            return gate

        return self.call(add)

    def release(self, gate: Gate, proceed: bool = False) -> int:
        """Stop holding; the held requests are answered (``proceed``) or dropped unanswered (the
        connection closes; a request held without ``commit`` never reaches the account). How many."""

        def run() -> int:
            if gate in self.gates:
                self.gates.remove(gate)
            gate.proceed = proceed
            gate.opened.set()
            return gate.held

        return self.call(run)

    def close_market(self) -> None:
        """The market closes: market orders rest (accepted, unfilled) until :meth:`open_market`."""

        def run() -> None:
            self.market_open = False
            self.auto_fill = False

        self.call(run)

    def open_market(self) -> int:
        """The market opens: every resting market order fills at its symbol's price. How many filled."""

        def run() -> int:
            self.market_open = True
            self.auto_fill = True
            resting = [o for o in self.orders.values() if o.is_open and o.type == "market" and o.symbol in self.prices]
            for order in sorted(resting, key=lambda o: o.created_at):
                self._execute(order, order.leaves, self.prices[order.symbol])
            return len(resting)

        return self.call(run)

    def clear_injections(self) -> int:
        """Forget the injected failures not used yet (Alpaca is healthy again); how many there were."""

        def run() -> int:
            left = len(self.injections)
            self.injections.clear()
            return left

        return self.call(run)

    def fill(self, client_order_id: str, qty: str | Decimal, price: str | Decimal) -> dict[str, Any]:
        """Fill ``qty`` of an open order at ``price`` (a partial fill when less than its leaves)."""

        def run() -> dict[str, Any]:
            order = self._by_client_id(client_order_id)
            return self._execute(order, Decimal(str(qty)), Decimal(str(price)))

        return self.call(run)

    def order(self, client_order_id: str) -> FakeOrder:
        return self.call(lambda: self._by_client_id(client_order_id))

    def drop_trade_streams(self, refuse_reconnect: bool = True) -> None:
        """Close every trade_updates connection; with ``refuse_reconnect`` new handshakes get HTTP 503."""

        def run() -> None:
            self.trade_streams_refused = refuse_reconnect
            for queue in list(self._trade_queues):
                queue.put_nowait(None)

        self.call(run)

    def allow_trade_streams(self) -> None:
        self.call(lambda: setattr(self, "trade_streams_refused", False))

    def drop_data_streams(self) -> None:
        """Close every market-data connection (without waiting: the client may share the caller's loop)."""

        def run() -> None:
            for conn in list(self._data_conns):
                task = asyncio.ensure_future(conn.close(1011, "injected drop"))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

        self.call(run)

    def data_subscriptions(self) -> list[dict[str, set[str]]]:
        return self.call(lambda: [dict(s) for s in self._data_conns.values()])

    def wait_data_subscribed(self, symbols: set[str], connections: int = 1, timeout: float = 15.0) -> None:
        """Block (call it through ``asyncio.to_thread``) until connection number ``connections`` or later
        has subscribed trades, quotes and bars of every symbol in ``symbols``."""

        def done() -> bool:
            return self.data_connections >= connections and any(
                all(symbols <= subs[c] for c in ("trades", "quotes", "bars"))
                for subs in list(self._data_conns.values())
            )

        with self._data_changed:
            if not self._data_changed.wait_for(done, timeout):
                raise TimeoutError(f"no market-data subscription to {sorted(symbols)} within {timeout} s")

    def _notify_data(self) -> None:
        with self._data_changed:
            self._data_changed.notify_all()

    def publish_market(self, messages: list[dict[str, Any]]) -> int:
        """Send market-data messages (``T`` t/q/b with fields, ``t`` a datetime) to subscribed connections."""

        async def run() -> int:
            sent = 0
            for conn, subs in list(self._data_conns.items()):
                batch = []
                for message in messages:
                    channel = {"t": "trades", "q": "quotes", "b": "bars"}[message["T"]]
                    if message["S"] in subs.get(channel, set()) or "*" in subs.get(channel, set()):
                        wire = dict(message)
                        wire["t"] = msgpack.Timestamp.from_datetime(message["t"])
                        batch.append(wire)
                if batch:
                    try:
                        await conn.send(msgpack.packb(batch))
                        sent += len(batch)
                    except ConnectionClosed:
                        pass
            return sent

        return self._run_coro(run())

    # --- the account's state (on the fake's loop) --------------------------------------------------

    def _by_client_id(self, client_order_id: str) -> FakeOrder:
        for order in self.orders.values():
            if order.client_order_id == client_order_id:
                return order
        raise ApiError(404, 40410000, "order not found")

    def _position(self, symbol: str) -> Decimal:
        return self.positions.get(symbol, (ZERO, ZERO))[0]

    def _held_for_sells(self, symbol: str) -> Decimal:
        """Shares resting sells hold: a held leg none yet, the two exits of one bracket / oco once."""
        held: dict[str, Decimal] = {}
        for o in self.orders.values():
            if o.is_open and o.status != "held" and o.symbol == symbol and o.side == "sell":
                group = self._group_of(o)
                held[group] = max(held.get(group, ZERO), o.leaves)
        return sum(held.values(), ZERO)

    def _group_of(self, order: FakeOrder) -> str:
        """The exits one position's shares back once: a bracket's two legs, an oco order and its leg."""
        parent = self.orders.get(order.parent_id) if order.parent_id else None
        if parent is not None and (parent.order_class == "oco" or len(parent.legs) == 2):
            return parent.id
        if order.order_class == "oco":
            return order.id
        return order.id + ":own"

    def _make_legs(self, order: FakeOrder, body: dict[str, Any]) -> None:
        """A bracket's / oto's exits (other side, ``held`` until it fills) or an oco's stop-loss (same
        side, ``new`` at once), each an order of its own with an Alpaca-made client_order_id."""
        take_profit, stop_loss = body.get("take_profit") or {}, body.get("stop_loss") or {}
        exit_side = order.side if order.order_class == "oco" else ("sell" if order.side == "buy" else "buy")
        status = "new" if order.order_class == "oco" else "held"
        specs: list[tuple[str, Decimal | None, Decimal | None]] = []
        if take_profit and order.order_class != "oco":
            specs.append(("limit", _dec(take_profit.get("limit_price")), None))
        if stop_loss:
            limit = _dec(stop_loss.get("limit_price"))
            specs.append(("stop_limit" if limit is not None else "stop", limit, _dec(stop_loss.get("stop_price"))))
        for kind, limit_price, stop_price in specs:
            leg = FakeOrder(
                str(uuid.uuid4()), str(uuid.uuid4()), order.symbol, exit_side, kind, order.time_in_force,
                order.qty, limit_price, stop_price, order.created_at, status=status, parent_id=order.id,
            )  # fmt: skip
            order.legs.append(leg)
            self.orders[leg.id] = leg

    def _check_class(self, body: dict[str, Any], kind: str) -> str:
        """``order_class`` as Alpaca checks it: bracket (take_profit and stop_loss), oto (one of them),
        oco (a limit whose take_profit is its limit, and a stop_loss)."""
        order_class = str(body.get("order_class") or "simple")
        take_profit, stop_loss = body.get("take_profit"), body.get("stop_loss")
        if order_class == "simple":
            return order_class
        if order_class not in ("bracket", "oco", "oto"):
            raise ApiError(422, 40010000, f"invalid order_class {order_class}")
        if order_class in ("bracket", "oco") and not (take_profit and stop_loss):
            raise ApiError(422, 40010000, f"{order_class} orders require take_profit and stop_loss")
        if order_class == "oto" and bool(take_profit) == bool(stop_loss):
            raise ApiError(422, 40010000, "oto orders require exactly one of take_profit or stop_loss")
        if order_class == "oco" and kind != "limit":
            raise ApiError(422, 40010000, "oco orders must be limit orders")
        if order_class != "oco" and kind not in ("market", "limit"):
            raise ApiError(422, 40010000, f"{order_class} orders must be market or limit orders")
        return order_class

    def _legs_after_fill(self, order: FakeOrder) -> None:
        """A bracket / oto parent filled: its legs go live; an oco exit executed: its other one is canceled."""
        if order.status == "filled" and order.order_class in ("bracket", "oto"):
            for leg in order.legs:
                if leg.status == "held":
                    leg.status, leg.updated_at = "new", _now()
                    self._emit("new", leg)
        for sibling in self._siblings(order):
            if sibling.is_open:
                sibling.status = "canceled"
                sibling.canceled_at = sibling.updated_at = _now()
                self._emit("canceled", sibling)

    def _siblings(self, order: FakeOrder) -> list[FakeOrder]:
        """The other exit(s) of the oco pair ``order`` belongs to (none for a simple order or an entry)."""
        group = self._group_of(order)
        if group.endswith(":own"):
            return []
        parent = self.orders[group]
        members = [*parent.legs] if parent.order_class != "oco" else [parent, *parent.legs]
        return [m for m in members if m.id != order.id]

    def _emit(self, event: str, order: FakeOrder, **extra: Any) -> None:
        data: dict[str, Any] = {"event": event, "order": order.to_json(), "timestamp": _iso(_now())}
        data["execution_id"] = extra.pop("execution_id", str(uuid.uuid4()))
        data.update(extra)
        text = json.dumps({"stream": "trade_updates", "data": data})
        for queue in list(self._trade_queues):
            queue.put_nowait(text)

    def _execute(self, order: FakeOrder, qty: Decimal, price: Decimal) -> dict[str, Any]:
        if not order.is_open:
            raise ApiError(422, 42210000, f"order is {order.status}")
        qty = min(qty, order.leaves)
        now = _now()
        order.filled_qty += qty
        order.cost += qty * price
        order.updated_at = now
        order.status = "filled" if order.leaves == 0 else "partially_filled"
        if order.status == "filled":
            order.filled_at = now
        signed = qty if order.side == "buy" else -qty
        position, basis = self.positions.get(order.symbol, (ZERO, ZERO))
        if position == 0 or (position > 0) == (signed > 0):
            basis += signed * price
        else:
            closing = min(abs(signed), abs(position))
            basis -= basis / position * (closing if position > 0 else -closing)
            if abs(signed) > abs(position):
                basis = (signed + position) * price
        position += signed
        self.positions[order.symbol] = (position, basis if position else ZERO)
        self.cash -= signed * price
        execution_id = str(uuid.uuid4())
        event = "fill" if order.status == "filled" else "partial_fill"
        activity = {
            "id": f"{now.strftime('%Y%m%d%H%M%S%f')[:17]}::{execution_id}",
            "activity_type": "FILL",
            "transaction_time": _iso(now),
            "type": event,
            "price": _fmt(price),
            "qty": _fmt(qty),
            "side": order.side,
            "symbol": order.symbol,
            "leaves_qty": _fmt(order.leaves),
            "order_id": order.id,
            "cum_qty": _fmt(order.filled_qty),
            "order_status": order.status,
        }
        self.activities.append(activity)
        self._emit(
            event, order, execution_id=execution_id, price=_fmt(price), qty=_fmt(qty), position_qty=_fmt(position)
        )
        self._legs_after_fill(order)
        return activity

    def _place(self, body: dict[str, Any]) -> FakeOrder:
        try:
            symbol = str(body["symbol"])
            side = str(body["side"])
            kind = str(body.get("type") or body.get("order_type"))
            tif = str(body["time_in_force"])
            qty = _dec(body.get("qty"))
            limit_price, stop_price = _dec(body.get("limit_price")), _dec(body.get("stop_price"))
        except (KeyError, ArithmeticError, ValueError) as exc:
            raise ApiError(422, 40010000, f"invalid order request: {exc}") from None
        if qty is None or qty <= 0:
            raise ApiError(422, 40010000, "qty must be > 0")
        if side not in ("buy", "sell") or kind not in ("market", "limit", "stop", "stop_limit", "trailing_stop"):
            raise ApiError(422, 40010000, "invalid side or type")
        trail_price, trail_percent = _dec(body.get("trail_price")), _dec(body.get("trail_percent"))
        if kind == "trailing_stop" and (trail_price is None) == (trail_percent is None):
            raise ApiError(422, 40010000, "trailing_stop orders require exactly one of trail_price or trail_percent")
        if kind != "trailing_stop" and (trail_price is not None or trail_percent is not None):
            raise ApiError(422, 40010000, "trail_price and trail_percent are for trailing_stop orders")
        client_order_id = str(body.get("client_order_id") or uuid.uuid4())
        if len(client_order_id) > 128:
            raise ApiError(422, 40010000, "client_order_id must be no more than 128 characters")
        if any(o.client_order_id == client_order_id for o in self.orders.values()):
            raise ApiError(422, 40010001, "client_order_id must be unique")
        order_class = self._check_class(body, kind)
        if order_class == "oco" and limit_price is None:
            limit_price = _dec((body.get("take_profit") or {}).get("limit_price"))
        self._check_wash_trade(symbol, side, kind, limit_price)
        price = limit_price or self.prices.get(symbol, Decimal(100))
        if side == "sell":
            position = self._position(symbol)
            held = self._held_for_sells(symbol)
            if position > 0 and qty > position - held:
                related = [o.id for o in self.orders.values() if o.is_open and o.symbol == symbol and o.side == "sell"]
                raise ApiError(
                    403,
                    40310000,
                    f"insufficient qty available for order (requested: {_fmt(qty)}, available: {_fmt(position - held)})",
                    available=_fmt(position - held),
                    existing_qty=_fmt(position),
                    held_for_orders=_fmt(held),
                    related_orders=related,
                    symbol=symbol,
                )
        elif qty * price > self.cash:
            raise ApiError(
                403, 40310000, "insufficient buying power", buying_power=_fmt(self.cash), cost_basis=_fmt(qty * price)
            )
        now = _now()
        order = FakeOrder(
            str(uuid.uuid4()), client_order_id, symbol, side, kind, tif, qty, limit_price, stop_price, now
        )
        if kind == "trailing_stop":
            order.trail_price, order.trail_percent = trail_price, trail_percent
            order.hwm = self.prices.get(symbol, Decimal(100))
            order.trail()
        self.orders[order.id] = order
        order.order_class = order_class
        if order_class != "simple":
            self._make_legs(order, body)
        self._emit("new", order)
        for leg in order.legs if order_class == "oco" else []:
            self._emit("new", leg)
        if self.auto_fill and kind == "market" and symbol in self.prices:
            self._execute(order, qty, self.prices[symbol])
        return order

    def _check_wash_trade(self, symbol: str, side: str, kind: str, limit_price: Decimal | None) -> None:
        for other in self.orders.values():
            if not other.is_open or other.status == "held" or other.symbol != symbol or other.side == side:
                continue
            buy_limit, sell_limit = (
                (limit_price, other.limit_price) if side == "buy" else (other.limit_price, limit_price)
            )
            could_cross = (
                kind == "market"
                or other.type in ("market", "stop", "stop_limit", "trailing_stop")
                or kind in ("stop", "stop_limit", "trailing_stop")
                or (buy_limit is not None and sell_limit is not None and buy_limit >= sell_limit)
            )
            if could_cross:
                raise ApiError(
                    422,
                    42210000,
                    "potential wash trade detected. use complex orders",
                    reject_reason="opposite side market/stop order exists",
                )

    def _cancel(self, order_id: str) -> None:
        order = self.orders.get(order_id)
        if order is None:
            raise ApiError(404, 40410000, "order not found")
        if not order.is_open:
            raise ApiError(422, 42210000, f'order is already in "{order.status}" state')
        order.status = "canceled"
        order.canceled_at = order.updated_at = _now()
        self._emit("canceled", order)
        # a parent's held legs go with it; an oco exit's other exit too
        tied = [leg for leg in order.legs if leg.status == "held"] + self._siblings(order)
        for other in tied:
            if other.is_open:
                other.status = "canceled"
                other.canceled_at = other.updated_at = _now()
                self._emit("canceled", other)

    def _account(self) -> dict[str, Any]:
        market_value = sum(
            (q * self.prices.get(s, b / q if q else ZERO) for s, (q, b) in self.positions.items() if q), ZERO
        )
        return {
            "id": "3f7ae1a4-8a0d-4b4e-9f6e-6a4d2a8d7c11",
            "account_number": "PA3FAKE00001",
            "status": "ACTIVE",
            "crypto_status": "ACTIVE",
            "currency": "USD",
            "buying_power": _fmt(self.cash),
            "cash": _fmt(self.cash),
            "portfolio_value": _fmt(self.cash + market_value),
            "equity": _fmt(self.cash + market_value),
            "last_equity": _fmt(self.cash + market_value),
            "pattern_day_trader": False,
            "trading_blocked": False,
            "transfers_blocked": False,
            "account_blocked": False,
            "created_at": "2024-01-02T14:30:00Z",
            "trade_suspended_by_user": False,
            "multiplier": "2",
            "shorting_enabled": True,
            "long_market_value": "0",
            "short_market_value": "0",
            "daytrade_count": 0,
            "accrued_fees": "0",
            "pending_transfer_in": "0",
            "pending_transfer_out": "0",
            "sma": "0",
        }

    def _position_json(self, symbol: str) -> dict[str, Any]:
        qty, basis = self.positions[symbol]
        price = self.prices.get(symbol, basis / qty)
        return {
            "asset_id": str(uuid.uuid5(uuid.NAMESPACE_URL, symbol)),
            "symbol": symbol,
            "exchange": "NASDAQ",
            "asset_class": "us_equity",
            "asset_marginable": True,
            "avg_entry_price": _fmt(basis / qty),
            "qty": _fmt(qty),
            "qty_available": _fmt(qty - self._held_for_sells(symbol)) if qty > 0 else _fmt(qty),
            "side": "long" if qty > 0 else "short",
            "market_value": _fmt(qty * price),
            "cost_basis": _fmt(basis),
            "unrealized_pl": _fmt(qty * price - basis),
            "current_price": _fmt(price),
        }

    # --- REST --------------------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        if self.historical.handles(path):
            try:
                return self.historical.route(method, path, query)
            except HistoricalError as err:
                raise ApiError(err.status, err.code, err.message) from None
        if method == "POST" and path == "/v2/orders":
            return 200, self._place(body if isinstance(body, dict) else {}).to_json()
        if method == "GET" and path == "/v2/orders":
            return 200, self._list_orders(query)
        if method == "DELETE" and path == "/v2/orders":
            result = []
            for order in list(self.orders.values()):
                if order.is_open:
                    self._cancel(order.id)
                    result.append({"id": order.id, "status": 200, "body": order.to_json()})
            return 207, result
        if method == "GET" and path == "/v2/orders:by_client_order_id":
            return 200, self._by_client_id(query.get("client_order_id", "")).to_json()
        if path.startswith("/v2/orders/"):
            order_id = path.removeprefix("/v2/orders/")
            if method == "GET":
                found = self.orders.get(order_id)
                if found is None:
                    raise ApiError(404, 40410000, "order not found")
                return 200, found.to_json()
            if method == "DELETE":
                self._cancel(order_id)
                return 204, None
        if method == "GET" and path == "/v2/account":
            return 200, self._account()
        if method == "GET" and path == "/v2/positions":
            return 200, [self._position_json(s) for s, (q, _) in sorted(self.positions.items()) if q]
        if method == "GET" and path.startswith("/v2/positions/"):
            symbol = path.removeprefix("/v2/positions/")
            if not self._position(symbol):
                raise ApiError(404, 40410000, "position does not exist")
            return 200, self._position_json(symbol)
        if method == "GET" and path == "/v2/clock":
            now = _now()
            return 200, {
                "timestamp": _iso(now),
                "is_open": self.market_open,
                "next_open": _iso(now + dt.timedelta(days=1)),
                "next_close": _iso(now + dt.timedelta(hours=6)),
            }
        if method == "GET" and path == "/v2/account/activities/FILL":
            return 200, self._list_activities(query)
        raise ApiError(404, 40410000, "endpoint not found")

    def _list_orders(self, query: dict[str, str]) -> list[dict[str, Any]]:
        status = query.get("status", "open")
        orders = sorted(self.orders.values(), key=lambda o: o.created_at)
        if status == "open":
            orders = [o for o in orders if o.is_open]
        elif status == "closed":
            orders = [o for o in orders if not o.is_open]
        if "after" in query:
            after = dt.datetime.fromisoformat(query["after"])
            orders = [o for o in orders if o.created_at > after]
        if "symbols" in query:
            wanted = set(query["symbols"].split(","))
            orders = [o for o in orders if o.symbol in wanted]
        nested = query.get("nested", "").lower() == "true"
        if nested:  # legs under their parents, not listed on their own
            orders = [o for o in orders if o.parent_id is None]
        if query.get("direction", "desc") == "desc":
            orders.reverse()
        return [o.to_json(nested) for o in orders[: int(query.get("limit", 50))]]

    def _list_activities(self, query: dict[str, str]) -> list[dict[str, Any]]:
        items = list(self.activities)
        if "after" in query:
            after = dt.datetime.fromisoformat(query["after"])
            items = [a for a in items if dt.datetime.fromisoformat(a["transaction_time"]) > after]
        if query.get("direction", "desc") == "desc":
            items.reverse()
        if "page_token" in query:
            ids = [a["id"] for a in items]
            if query["page_token"] in ids:
                items = items[ids.index(query["page_token"]) + 1 :]
        return items[: int(query.get("page_size", 100))]

    def _handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
        parts = urlsplit(target)
        path = unquote(parts.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.requests.append((method, path))
        if headers.get("apca-api-key-id") != self.key or headers.get("apca-api-secret-key") != self.secret:
            raise ApiError(401, 40110000, "request is not authorized")
        for injection in list(self.injections):
            if (
                (not injection.method or injection.method == method)
                and path.startswith(injection.path_prefix)
                and (not injection.client_order_id or injection.client_order_id == _client_order_id(query, raw))
            ):
                self.injections.remove(injection)
                if injection.status == 429:
                    raise ApiError(429, 42910000, "rate limit exceeded")
                if injection.after_commit:
                    self._route(method, path, query, json.loads(raw or b"null"))
                raise ApiError(injection.status, injection.status * 100000, "upstream failure (injected)")
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            raise ApiError(400, 40010000, "request body format is invalid") from None
        return self._route(method, path, query, body)

    def _answer(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
        try:
            return self._handle(method, target, headers, raw)
        except ApiError as err:
            self.refusals.append((err.status, err.code))
            return err.status, err.body()

    def _gate_for(self, method: str, target: str, raw: bytes) -> Gate | None:
        if not self.gates:
            return None
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        client_order_id = _client_order_id(query, raw)
        return next((g for g in self.gates if g.matches(method, unquote(parts.path), client_order_id)), None)

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._http_tasks.add(task)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                raw = await reader.readexactly(int(headers.get("content-length", "0")))
                gate = self._gate_for(method, target, raw)
                answer = self._answer(method, target, headers, raw) if gate is None or gate.commit else None
                if gate is not None:
                    gate.held += 1
                    gate.reached.set()
                    await gate.opened.wait()
                    if not gate.proceed:
                        break  # dropped: the connection closes unanswered
                status, payload = answer or self._answer(method, target, headers, raw)
                data = b"" if payload is None else json.dumps(payload).encode()
                reason = {200: "OK", 204: "No Content", 207: "Multi-Status"}.get(status, "Error")
                head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(data)}\r\n"
                if data:
                    head += "Content-Type: application/json\r\n"
                if status == 429:
                    head += "X-RateLimit-Limit: 200\r\nX-RateLimit-Remaining: 0\r\n"
                writer.write(head.encode() + b"\r\n" + data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, asyncio.CancelledError):  # stop: end quietly
            pass
        finally:
            self._http_tasks.discard(task)
            writer.close()

    # --- websockets --------------------------------------------------------------------------------

    def _ws_gate(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/stream" and self.trade_streams_refused:
            self.trade_refusals += 1
            return Response(503, "Service Unavailable", Headers(), b"stream unavailable (injected)\n")
        if request.path not in ("/stream", "/v2/iex", "/v2/sip"):
            return Response(404, "Not Found", Headers(), b"not found\n")
        return None

    async def _serve_ws(self, conn: ServerConnection) -> None:
        if conn.request is not None and conn.request.path == "/stream":
            await self._serve_trade_updates(conn)
        else:
            await self._serve_market_data(conn)

    async def _serve_trade_updates(self, conn: ServerConnection) -> None:
        try:
            auth = json.loads(await conn.recv())
            data = auth.get("data") or {}
            ok = (
                auth.get("action") == "authenticate"
                and data.get("key_id") == self.key
                and data.get("secret_key") == self.secret
            )
            status = "authorized" if ok else "unauthorized"
            await conn.send(
                json.dumps({"stream": "authorization", "data": {"status": status, "action": "authenticate"}})
            )
            if not ok:
                await conn.close(1008, "unauthorized")
                return
            listen = json.loads(await conn.recv())
            streams = (listen.get("data") or {}).get("streams", [])
            await conn.send(json.dumps({"stream": "listening", "data": {"streams": streams}}))
            queue: asyncio.Queue[str | None] = asyncio.Queue()
            self._trade_queues.add(queue)
            self.trade_connections += 1
            try:
                while (text := await queue.get()) is not None:
                    await conn.send(text)
            finally:
                self._trade_queues.discard(queue)
            await conn.close(1001, "going away (injected drop)")
        except ConnectionClosed:
            pass

    async def _serve_market_data(self, conn: ServerConnection) -> None:
        try:
            await conn.send(msgpack.packb([{"T": "success", "msg": "connected"}]))
            auth = msgpack.unpackb(await conn.recv())
            if auth.get("action") != "auth" or auth.get("key") != self.key or auth.get("secret") != self.secret:
                await conn.send(msgpack.packb([{"T": "error", "code": 402, "msg": "auth failed"}]))
                await conn.close()
                return
            await conn.send(msgpack.packb([{"T": "success", "msg": "authenticated"}]))
            subs: dict[str, set[str]] = {"trades": set(), "quotes": set(), "bars": set()}
            self._data_conns[conn] = subs
            self.data_connections += 1
            try:
                async for frame in conn:
                    message = msgpack.unpackb(frame if isinstance(frame, bytes) else frame.encode())
                    action = message.get("action")
                    for channel in subs:
                        symbols = set(message.get(channel) or [])
                        if action == "subscribe":
                            subs[channel] |= symbols
                        elif action == "unsubscribe":
                            subs[channel] -= symbols
                    ack = {
                        "T": "subscription",
                        **{c: sorted(s) for c, s in subs.items()},
                        "updatedBars": [],
                        "dailyBars": [],
                        "statuses": [],
                        "lulds": [],
                        "corrections": sorted(subs["trades"]),
                        "cancelErrors": sorted(subs["trades"]),
                    }
                    await conn.send(msgpack.packb([ack]))
                    self._notify_data()
            finally:
                self._data_conns.pop(conn, None)
        except ConnectionClosed:
            pass
