"""The ``synthetic`` feed: a seeded, mean-reverting random walk per symbol.

Each symbol has its own ``random.Random`` seeded with ``"<seed>:<symbol>"``, so a run is fully
determined by the seed and adding a symbol does not change the others' paths. Prices move in
Decimal: each bar is four sub-steps of a log-normal-ish walk pulled back toward the start price
(an Ornstein-Uhlenbeck drift), so demos can run for hours without prices running away, while the
per-bar volatility (about 0.25 %) is enough for crossover and mean-reversion strategies to trade
within a minute at one bar per second.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from desk.core.marketdata import CENT, Tick, price_str, quote_around
from desk.v1 import marketdata_pb2
from services.marketdata.feeds.base import Scheduled

SOURCE = "synthetic"

#: Plausible start prices; other symbols get one drawn from their own generator.
START_PRICES: dict[str, Decimal] = {
    "AAPL": Decimal("189.50"),
    "MSFT": Decimal("415.20"),
    "SPY": Decimal("498.75"),
    "TSLA": Decimal("242.30"),
    "NVDA": Decimal("131.60"),
    "AMZN": Decimal("178.40"),
    "GOOG": Decimal("152.10"),
    "META": Decimal("468.90"),
    "QQQ": Decimal("432.60"),
}

SUB_STEPS = 4
# Per sub-step volatility and pull toward the anchor price (per sub-step).
SIGMA = Decimal("0.00125")
REVERSION = Decimal("0.004")
STEP_PLACES = Decimal("0.000001")


@dataclass
class _Walk:
    symbol: str
    rng: random.Random
    anchor: Decimal
    price: Decimal
    size_scale: int = field(default=1)


class SyntheticFeed:
    """Bars every ``interval_ns`` from ``start_ns``, one per symbol per interval, forever."""

    def __init__(self, symbols: Sequence[str], seed: int, interval_ns: int, start_ns: int) -> None:
        if interval_ns <= 0:
            raise ValueError("interval_ns must be positive")
        if not symbols:
            raise ValueError("at least one symbol is needed")
        self.symbols = list(symbols)
        self.seed = seed
        self.interval_ns = interval_ns
        self.start_ns = start_ns
        self._walks = [self._walk(symbol) for symbol in self.symbols]
        self._bar_index = 0

    @property
    def name(self) -> str:
        return SOURCE

    def _walk(self, symbol: str) -> _Walk:
        rng = random.Random(f"{self.seed}:{symbol}")
        start = START_PRICES.get(symbol)
        if start is None:
            start = Decimal(rng.randint(2000, 50000)) * CENT
        return _Walk(symbol=symbol, rng=rng, anchor=start, price=start)

    def initial(self) -> list[marketdata_pb2.Trade]:
        """The start price of every symbol, stamped at ``start_ns``."""
        return [
            marketdata_pb2.Trade(
                symbol=w.symbol, price=price_str(w.price), size="100", ts_ns=self.start_ns, source=SOURCE
            )
            for w in self._walks
        ]

    def next_bars(self) -> list[Tick]:
        """The next interval's tick for every symbol (advances the walk)."""
        bar_start = self.start_ns + self._bar_index * self.interval_ns
        self._bar_index += 1
        return [self._step(walk, bar_start) for walk in self._walks]

    def schedule(self) -> Iterator[Scheduled]:
        delay = self.interval_ns / 1e9
        while True:
            for i, tick in enumerate(self.next_bars()):
                yield Scheduled(delay if i == 0 else 0.0, tick)

    def _step(self, walk: _Walk, bar_start: int) -> Tick:
        rng = walk.rng
        open_ = walk.price
        path = [open_]
        price = open_
        for _ in range(SUB_STEPS):
            shock = Decimal(repr(rng.gauss(0.0, 1.0))).quantize(STEP_PLACES)
            pull = REVERSION * (walk.anchor - price) / price
            price = (price * (1 + pull + SIGMA * shock)).quantize(CENT)
            price = max(price, CENT)
            path.append(price)
        close = path[-1]
        # Wicks: a little beyond the sub-step extremes, never inverting the bar.
        wick_up = Decimal(rng.randint(0, 3)) * CENT
        wick_down = Decimal(rng.randint(0, 3)) * CENT
        high = max(path) + wick_up
        low = max(CENT, min(path) - wick_down)
        move = abs(close - open_) / open_
        volume = int(rng.randint(1000, 20000) * (1 + min(Decimal(2), move * 400)))
        volume = min(volume, 50000)
        walk.price = close
        bar_end = bar_start + self.interval_ns
        bar = marketdata_pb2.Bar(
            symbol=walk.symbol,
            open=price_str(open_),
            high=price_str(high),
            low=price_str(low),
            close=price_str(close),
            volume=str(volume),
            start_ns=bar_start,
            interval_ns=self.interval_ns,
            vwap=price_str(sum(path, Decimal(0)) / len(path)),
            trade_count=rng.randint(20, 400),
            source=SOURCE,
        )
        quote = quote_around(
            walk.symbol, close, bar_end, SOURCE, bid_size=rng.randint(1, 10) * 100, ask_size=rng.randint(1, 10) * 100
        )
        trade = marketdata_pb2.Trade(
            symbol=walk.symbol, price=price_str(close), size=str(rng.randint(1, 5) * 100), ts_ns=bar_end, source=SOURCE
        )
        return Tick(bar=bar, quote=quote, trade=trade)
