"""Market data as the desk publishes it: a bar with the quote and the last trade that go with it.

Pure (no I/O, no clock). The marketdata service's feeds build their ticks here, and the SDK's
backtester builds the very same :class:`Tick` for each bar it replays, so a backtest and a replay
of the same bars feed the sim venue the same updates (md.bar, then md.quote, then md.trade).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from desk.bus.decimals import fmt
from desk.v1 import marketdata_pb2

CENT = Decimal("0.01")
REPLAY_SOURCE = "replay"
#: Bar length of a symbol with a single bar (the replay feed cannot infer one).
DEFAULT_INTERVAL_NS = 60 * 1_000_000_000
#: The size of the quote's sides and of the trade a replayed bar comes with.
REPLAY_SIZE = 100

_SPREAD = Decimal("0.0001")


@dataclass(frozen=True)
class Tick:
    """One bar for one symbol, with the quote and the last trade that go with it."""

    bar: marketdata_pb2.Bar
    quote: marketdata_pb2.Quote
    trade: marketdata_pb2.Trade

    @property
    def symbol(self) -> str:
        return self.bar.symbol


def price_str(value: Decimal) -> str:
    """A price on the wire: plain notation, exactly two decimals ("190.10")."""
    return format(value.quantize(CENT), "f")


_quotes: dict[Decimal, tuple[Decimal, Decimal]] = {}
_QUOTES_KEPT = 4096


def quote_prices(close: Decimal) -> tuple[Decimal, Decimal]:
    """The bid and ask straddling ``close``: a spread of about 2 bps, at least one cent each side, in
    cents (the bid at least one cent). Recent closes' answers are kept (a bounded table)."""
    known = _quotes.get(close)  # equal closes give equal quotes: both are rounded to cents
    if known is not None:
        return known
    half = max(CENT, (close * _SPREAD).quantize(CENT, rounding=ROUND_CEILING))
    bid = max((close - half).quantize(CENT, rounding=ROUND_FLOOR), CENT)
    ask = (close + half).quantize(CENT, rounding=ROUND_CEILING)
    if len(_quotes) >= _QUOTES_KEPT:
        _quotes.clear()
    _quotes[close] = (bid, ask)
    return bid, ask


def quote_around(
    symbol: str, close: Decimal, ts_ns: int, source: str, bid_size: int = REPLAY_SIZE, ask_size: int = REPLAY_SIZE
) -> marketdata_pb2.Quote:
    """A quote of :func:`quote_prices` around ``close``."""
    bid, ask = quote_prices(close)
    return marketdata_pb2.Quote(
        symbol=symbol,
        bid_price=price_str(bid),
        bid_size=str(bid_size),
        ask_price=price_str(ask),
        ask_size=str(ask_size),
        ts_ns=ts_ns,
        source=source,
    )


def _plain(value: Decimal) -> str:
    """The number's own precision, in plain notation (a replayed file's prices are kept as written)."""
    return format(value, "f")


def replay_tick(
    symbol: str,
    open_: Decimal,
    high: Decimal,
    low: Decimal,
    close: Decimal,
    volume: Decimal,
    start_ns: int,
    interval_ns: int,
    source: str = REPLAY_SOURCE,
) -> Tick:
    """The tick the replay feed publishes for one bar: the bar as given, a quote around its close
    (:func:`quote_around`, sizes 100) and a trade of 100 at the close, both stamped at the bar's end."""
    end = start_ns + interval_ns
    bar = marketdata_pb2.Bar(
        symbol=symbol,
        open=_plain(open_),
        high=_plain(high),
        low=_plain(low),
        close=_plain(close),
        volume=fmt(volume),
        start_ns=start_ns,
        interval_ns=interval_ns,
        source=source,
    )
    quote = quote_around(symbol, close, end, source)
    trade = marketdata_pb2.Trade(symbol=symbol, price=_plain(close), size=str(REPLAY_SIZE), ts_ns=end, source=source)
    return Tick(bar=bar, quote=quote, trade=trade)


def infer_intervals(bars: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Bar length per symbol from ``(symbol, start_ns)`` pairs in feed order: the smallest positive
    gap between its bars (:data:`DEFAULT_INTERVAL_NS` if unknown)."""
    last: dict[str, int] = {}
    gaps: dict[str, int] = {}
    for symbol, ts_ns in bars:
        previous = last.get(symbol)
        if previous is not None and ts_ns > previous:
            gap = ts_ns - previous
            gaps[symbol] = min(gaps.get(symbol, gap), gap)
        last[symbol] = ts_ns
    return {symbol: gaps.get(symbol, DEFAULT_INTERVAL_NS) for symbol in last}
