"""What every feed is: an initial snapshot plus a schedule of ticks, with no I/O and no clock.

A feed never sleeps and never publishes. The service walks :meth:`Feed.schedule`, waits each
``delay`` on its own timer, and publishes the tick, so feeds are deterministic and unit-testable.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Protocol

from desk.v1 import marketdata_pb2

CENT = Decimal("0.01")


@dataclass(frozen=True)
class Tick:
    """One bar for one symbol, with the quote and the last trade that go with it."""

    bar: marketdata_pb2.Bar
    quote: marketdata_pb2.Quote
    trade: marketdata_pb2.Trade

    @property
    def symbol(self) -> str:
        return self.bar.symbol


@dataclass(frozen=True)
class Scheduled:
    """``tick`` is due ``delay`` seconds after the previous one (the first: after the start)."""

    delay: float
    tick: Tick


class Feed(Protocol):
    """A source of market data the marketdata service can run."""

    @property
    def name(self) -> str:
        """"synthetic", "replay"...; also the ``source`` field of what it emits."""
        ...

    def initial(self) -> list[marketdata_pb2.Trade]:
        """Prices known before the first tick (published to ``DESK_PRICES`` before ready)."""
        ...

    def schedule(self) -> Iterator[Scheduled]:
        """Ticks with their delays; may be endless (synthetic) or end (replay)."""
        ...


def price_str(value: Decimal) -> str:
    """A price on the wire: plain notation, exactly two decimals ("190.10")."""
    return format(value.quantize(CENT), "f")


def quote_around(
    symbol: str, close: Decimal, ts_ns: int, source: str, bid_size: int = 100, ask_size: int = 100
) -> marketdata_pb2.Quote:
    """A quote straddling ``close`` with a spread of about 2 bps (at least one cent each side)."""
    half = max(CENT, (close * Decimal("0.0001")).quantize(CENT, rounding=ROUND_CEILING))
    bid = (close - half).quantize(CENT, rounding=ROUND_FLOOR)
    ask = (close + half).quantize(CENT, rounding=ROUND_CEILING)
    return marketdata_pb2.Quote(
        symbol=symbol,
        bid_price=price_str(max(bid, CENT)),
        bid_size=str(bid_size),
        ask_price=price_str(ask),
        ask_size=str(ask_size),
        ts_ns=ts_ns,
        source=source,
    )
