"""What every feed is: an initial snapshot plus a schedule of ticks, with no I/O and no clock.

A feed never sleeps and never publishes. The service walks :meth:`Feed.schedule`, waits each
``delay`` on its own timer, and publishes the tick, so feeds are deterministic and unit-testable.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

# The tick and the quote/price rules are the pure desk.core.marketdata's (the SDK's backtester
# builds the same ticks); re-exported here for the feeds.
from desk.core.marketdata import CENT, Tick, price_str, quote_around
from desk.v1 import marketdata_pb2

__all__ = ["CENT", "Feed", "Scheduled", "Tick", "price_str", "quote_around"]


@dataclass(frozen=True)
class Scheduled:
    """``tick`` is due ``delay`` seconds after the previous one (the first: after the start)."""

    delay: float
    tick: Tick


class Feed(Protocol):
    """A source of market data the marketdata service can run."""

    @property
    def name(self) -> str:
        """ "synthetic", "replay"...; also the ``source`` field of what it emits."""
        ...

    def initial(self) -> list[marketdata_pb2.Trade]:
        """Prices known before the first tick (published to ``DESK_PRICES`` before ready)."""
        ...

    def schedule(self) -> Iterator[Scheduled]:
        """Ticks with their delays; may be endless (synthetic) or end (replay)."""
        ...
