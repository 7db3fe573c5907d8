"""The marketdata service: runs one feed, publishes ``md.*`` and keeps ``DESK_PRICES`` current.

The publish loop is a timer on loop time (this service *is* the data source, not the order
path): each tick is due at an absolute loop-time deadline, so delays never accumulate drift.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from nats.js.kv import KeyValue

import desk
from desk.bus import codec, subjects
from desk.bus.lifecycle import ServiceRuntime, StartFn
from desk.bus.logging import get_logger
from desk.bus.micro import add_service
from desk.bus.streams import ensure_bucket
from services.marketdata.feeds.base import Feed, Tick
from services.marketdata.feeds.replay import ReplayFeed, parse_replay
from services.marketdata.feeds.synthetic import SyntheticFeed
from services.marketdata.settings import Settings

NAME = "marketdata"
log = get_logger(NAME)


@dataclass
class FeedStats:
    ticks: int = 0
    finished: bool = False
    per_symbol: dict[str, int] = field(default_factory=dict)


def build_feed(settings: Settings) -> Feed:
    """The feed named by MD_FEED; a bad replay file stops start-up with a clear error."""
    if settings.md_feed == "replay":
        path = settings.md_replay_file
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                data = parse_replay(handle)
        except OSError as exc:
            raise ValueError(f"cannot read MD_REPLAY_FILE {str(path)!r}: {exc.strerror or exc}") from exc
        for bad in data.bad_rows:
            log.warning("replay.bad_row", file=str(path), line=bad.line, reason=bad.reason)
        feed = ReplayFeed(data, settings.md_replay_speed, settings.md_replay_loop)
        log.info("replay.loaded", file=str(path), rows=len(data.rows), bad_rows=len(data.bad_rows), symbols=feed.symbols)
        return feed
    return SyntheticFeed(settings.symbols, settings.md_seed, int(settings.md_interval * 1e9), time.time_ns())


class MarketData:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = FeedStats()

    async def start(self, runtime: ServiceRuntime) -> None:
        feed = build_feed(self.settings)
        prices = await ensure_bucket(runtime.js, subjects.KV_PRICES)
        # Known before ready: the router learns the symbol universe from DESK_PRICES.
        for trade in feed.initial():
            await prices.put(trade.symbol, trade.SerializeToString())
        await add_service(
            runtime,
            NAME,
            desk.__version__,
            "market data: publishes md.bar|quote|trade.<SYMBOL> and the last price per symbol in DESK_PRICES",
            metadata={"feed": feed.name},
        )
        runtime.spawn(self._publish_loop(runtime, feed, prices), name="marketdata.publish")
        log.info("feed.started", feed=feed.name)

    async def _publish(self, runtime: ServiceRuntime, prices: KeyValue, tick: Tick) -> None:
        symbol = tick.symbol
        for subject, message in (
            (subjects.md_bar(symbol), tick.bar),
            (subjects.md_quote(symbol), tick.quote),
            (subjects.md_trade(symbol), tick.trade),
        ):
            body, headers = codec.encode(message)
            await runtime.nc.publish(subject, body, headers=headers)
        await prices.put(symbol, tick.trade.SerializeToString())
        self.stats.ticks += 1
        self.stats.per_symbol[symbol] = self.stats.per_symbol.get(symbol, 0) + 1

    async def _publish_loop(self, runtime: ServiceRuntime, feed: Feed, prices: KeyValue) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        for scheduled in feed.schedule():
            due += scheduled.delay
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            else:
                await asyncio.sleep(0)  # let others run even when replaying as fast as possible
            if runtime.stop.is_set():
                return
            await self._publish(runtime, prices, scheduled.tick)
        self.stats.finished = True
        log.info("feed.finished", feed=feed.name, ticks=self.stats.ticks)


def make_start(settings: Settings) -> StartFn:
    return MarketData(settings).start

