"""The ``alpaca`` feed (MD_FEED=alpaca): alpaca-py's StockDataStream onto the desk's ``md.*`` subjects.

Unlike the synthetic and replay feeds it is pushed, not scheduled: :class:`AlpacaFeed` runs the
stream on the service's loop and hands every bar, trade and quote, converted to the desk's
messages (:func:`bar_message`, :func:`trade_message`, :func:`quote_message`, pure), to a publish
callback. Symbols: the union of ``StrategySpec.symbols`` in ``DESK_STRATEGIES`` (watched, so a
deployed strategy's symbols are added while running), ``MD_SYMBOLS`` when no spec names any.
alpaca-py reconnects a dropped stream by itself (with backoff) and re-sends the subscription.
Prices arrive as floats from alpaca-py's models; ``repr`` of such a float is the shortest decimal
that reads back the same, so a price sent as ``187.42`` becomes ``Decimal("187.42")``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import warnings
from collections.abc import Awaitable, Callable, Iterable
from decimal import Decimal
from typing import Any

from desk.bus import subjects
from desk.bus.decimals import fmt
from desk.bus.logging import get_logger
from desk.v1 import marketdata_pb2, strategy_pb2

with warnings.catch_warnings():
    # alpaca-py 0.44 imports websockets.legacy (deprecated since websockets 14)
    warnings.filterwarnings("ignore", message="websockets.legacy is deprecated", category=DeprecationWarning)
    from alpaca.data.enums import DataFeed
    from alpaca.data.live.stock import StockDataStream

log = get_logger("marketdata.alpaca")
SOURCE = "alpaca"
MINUTE_NS = 60_000_000_000
Update = marketdata_pb2.Bar | marketdata_pb2.Trade | marketdata_pb2.Quote
Publish = Callable[[Update], Awaitable[None]]


def _dec(value: Any) -> Decimal | None:
    if value is None:
        return None
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))


def _ns(ts: dt.datetime) -> int:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.UTC)
    return int(ts.timestamp()) * 1_000_000_000 + ts.microsecond * 1000


def bar_message(bar: Any) -> marketdata_pb2.Bar:
    return marketdata_pb2.Bar(
        symbol=bar.symbol,
        open=fmt(_dec(bar.open)),
        high=fmt(_dec(bar.high)),
        low=fmt(_dec(bar.low)),
        close=fmt(_dec(bar.close)),
        volume=fmt(_dec(bar.volume)),
        start_ns=_ns(bar.timestamp),
        interval_ns=MINUTE_NS,
        vwap=fmt(_dec(bar.vwap)),
        trade_count=int(bar.trade_count or 0),
        source=SOURCE,
    )


def trade_message(trade: Any) -> marketdata_pb2.Trade:
    return marketdata_pb2.Trade(
        symbol=trade.symbol,
        price=fmt(_dec(trade.price)),
        size=fmt(_dec(trade.size)),
        ts_ns=_ns(trade.timestamp),
        source=SOURCE,
    )


def quote_message(quote: Any) -> marketdata_pb2.Quote:
    return marketdata_pb2.Quote(
        symbol=quote.symbol,
        bid_price=fmt(_dec(quote.bid_price)),
        bid_size=fmt(_dec(quote.bid_size)),
        ask_price=fmt(_dec(quote.ask_price)),
        ask_size=fmt(_dec(quote.ask_size)),
        ts_ns=_ns(quote.timestamp),
        source=SOURCE,
    )


def wanted_symbols(specs: Iterable[strategy_pb2.StrategySpec], fallback: Iterable[str]) -> list[str]:
    """The symbols deployed strategies subscribe to; ``fallback`` (MD_SYMBOLS) when none names any."""
    named = {s for spec in specs for s in spec.symbols if subjects.SYMBOL_RE.match(s)}
    return sorted(named) if named else sorted(set(fallback))


class AlpacaFeed:
    """StockDataStream on this loop, publishing through ``publish``; subscriptions can grow while running."""

    name = SOURCE

    def __init__(
        self,
        api_key: str,
        secret_key: str,
        publish: Publish,
        url: str | None = None,
        feed: str = "iex",
        reconnect_backoff: float = 1.0,
    ) -> None:
        self._publish = publish
        self.stream = StockDataStream(api_key, secret_key, feed=DataFeed(feed), url_override=url)
        self.stream._reconnect_min_backoff = reconnect_backoff
        self.symbols: set[str] = set()
        self.received = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self, symbols: Iterable[str]) -> None:
        await self.subscribe(symbols)
        self._task = asyncio.create_task(self.stream._run_forever(), name="alpaca.market_data")

    async def subscribe(self, symbols: Iterable[str]) -> None:
        """Add symbols (never removes: another strategy may still want them)."""
        new = sorted(set(symbols) - self.symbols)
        if not new:
            return
        self.symbols |= set(new)
        # alpaca-py's subscribe_* block on run_coroutine_threadsafe(...).result() when running, which
        # would deadlock on this very loop; set the handlers and send the message ourselves.
        for channel, handler in (("bars", self._on_bar), ("trades", self._on_trade), ("quotes", self._on_quote)):
            for symbol in new:
                self.stream._handlers[channel][symbol] = handler
        if self.stream._running:
            await self.stream._send_subscribe_msg()
        log.info("alpaca_feed.subscribed", symbols=new)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self.stream.close()

    async def _on_bar(self, bar: Any) -> None:
        await self._deliver(bar_message, bar)

    async def _on_trade(self, trade: Any) -> None:
        await self._deliver(trade_message, trade)

    async def _on_quote(self, quote: Any) -> None:
        await self._deliver(quote_message, quote)

    async def _deliver(self, convert: Callable[[Any], Update], data: Any) -> None:
        try:
            message = convert(data)
        except (ArithmeticError, ValueError, TypeError, AttributeError) as exc:
            log.warning("alpaca_feed.bad_message", error=repr(exc))
            return
        self.received += 1
        await self._publish(message)
