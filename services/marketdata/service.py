"""The marketdata service: runs one feed, publishes ``md.*`` and keeps ``DESK_PRICES`` current.

The publish loop is a timer on loop time (this service *is* the data source, not the order
path): each tick is due at an absolute loop-time deadline, so delays never accumulate drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import nats.errors
from nats.aio.msg import Msg

import desk
from desk.bus import codec, kv, subjects
from desk.bus.lifecycle import ServiceRuntime
from desk.bus.logging import get_logger
from desk.bus.micro import add_service
from desk.bus.streams import ensure_bucket
from desk.v1 import marketdata_pb2, strategy_pb2
from services.marketdata.feeds.base import Feed, Tick
from services.marketdata.feeds.replay import ReplayFeed, parse_replay
from services.marketdata.feeds.synthetic import SyntheticFeed
from services.marketdata.settings import Settings

NAME = "marketdata"
#: Seconds a start-up JetStream call is retried through an election before the start fails.
START_DEADLINE = 60.0
log = get_logger(NAME)


@dataclass
class FeedStats:
    ticks: int = 0
    finished: bool = False
    publish_failures: int = 0
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
        feed = ReplayFeed(data, settings.md_replay_speed, settings.md_replay_loop, settings.md_replay_pace)
        log.info(
            "replay.loaded", file=str(path), rows=len(data.rows), bad_rows=len(data.bad_rows), symbols=feed.symbols
        )
        return feed
    return SyntheticFeed(settings.symbols, settings.md_seed, int(settings.md_interval * 1e9), time.time_ns())


class MarketDataService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = FeedStats()

    async def start(self, runtime: ServiceRuntime) -> None:
        if self.settings.md_feed == "alpaca":
            await self._start_alpaca(runtime)
            return
        feed = build_feed(self.settings)
        await ensure_bucket(runtime.js, subjects.KV_PRICES)
        # Known before ready: the router learns the symbol universe from DESK_PRICES.
        for trade in feed.initial():  # retried through an election (desk.bus.retry)
            await kv.put(
                runtime.js, subjects.KV_PRICES, trade.symbol, trade, deadline=START_DEADLINE, stop=runtime.stop
            )
        await add_service(
            runtime,
            NAME,
            desk.__version__,
            "market data: publishes md.bar|quote|trade.<SYMBOL> and the last price per symbol in DESK_PRICES",
            metadata={"feed": feed.name},
        )
        runtime.spawn(self._publish_loop(runtime, feed), name="marketdata.publish")
        log.info("feed.started", feed=feed.name)

    async def _publish(self, runtime: ServiceRuntime, tick: Tick) -> None:
        symbol = tick.symbol
        # The price first: once a strategy can react to the bar, the router values its orders at
        # this tick's trade (as the backtester does), not at the previous one.
        await kv.put(runtime.js, subjects.KV_PRICES, symbol, tick.trade)
        for subject, message in (
            (subjects.md_bar(symbol), tick.bar),
            (subjects.md_quote(symbol), tick.quote),
            (subjects.md_trade(symbol), tick.trade),
        ):
            body, headers = codec.encode(message)
            await runtime.nc.publish(subject, body, headers=headers)
        self.stats.ticks += 1
        self.stats.per_symbol[symbol] = self.stats.per_symbol.get(symbol, 0) + 1

    async def _wait_for_strategies(self, runtime: ServiceRuntime, strategy_ids: list[str]) -> bool:
        """Until each strategy has sent a heartbeat (MD_REPLAY_WAIT_FOR); False if the service stops first.

        A strategy's first heartbeat comes once its market-data subscriptions are in place and its
        ``on_start`` has run, so from then on it sees every bar the replay publishes."""
        waiting = set(strategy_ids)
        beat = asyncio.Event()

        async def on_heartbeat(msg: Msg) -> None:
            strategy_id = msg.subject.rsplit(".", 1)[-1]
            if strategy_id in waiting:
                waiting.discard(strategy_id)
                log.info("replay.strategy_ready", strategy_id=strategy_id, still_waiting=sorted(waiting))
                beat.set()

        subs = [await runtime.nc.subscribe(subjects.heartbeat(s), cb=on_heartbeat) for s in strategy_ids]
        log.info("replay.waiting", strategies=sorted(waiting))
        stop = asyncio.create_task(runtime.stop.wait())
        try:
            while waiting and not runtime.stop.is_set():
                beat.clear()
                woken = asyncio.create_task(beat.wait())
                await asyncio.wait({woken, stop}, return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
        finally:
            stop.cancel()
            for sub in subs:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        return not waiting

    async def _publish_loop(self, runtime: ServiceRuntime, feed: Feed) -> None:
        wait_for = self.settings.replay_wait_for if isinstance(feed, ReplayFeed) else []
        if wait_for and not await self._wait_for_strategies(runtime, wait_for):
            return
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
            try:
                await self._publish(runtime, scheduled.tick)
            except (nats.errors.Error, TimeoutError) as exc:
                # nats-server restarting, or an election of DESK_PRICES' leader (a put answered 503 or
                # timed out): skip this tick, the next one publishes the price again (not retried: a
                # later tick supersedes it); the feed must not die with the connection or the leader.
                self.stats.publish_failures += 1
                log.warning("feed.publish_failed", symbol=scheduled.tick.symbol, error=repr(exc))
        self.stats.finished = True
        log.info("feed.finished", feed=feed.name, ticks=self.stats.ticks)

    async def _start_alpaca(self, runtime: ServiceRuntime) -> None:
        """MD_FEED=alpaca: StockDataStream for the deployed strategies' symbols (feeds/alpaca.py)."""
        from services.marketdata.feeds.alpaca import AlpacaFeed, wanted_symbols

        key, secret = self.settings.alpaca_api_key, self.settings.alpaca_secret_key
        if key is None or secret is None or not key.get_secret_value() or not secret.get_secret_value():
            raise ValueError("MD_FEED=alpaca needs ALPACA_API_KEY and ALPACA_SECRET_KEY")
        await ensure_bucket(runtime.js, subjects.KV_PRICES)
        await ensure_bucket(runtime.js, subjects.KV_STRATEGIES)

        async def publish(message: marketdata_pb2.Bar | marketdata_pb2.Trade | marketdata_pb2.Quote) -> None:
            subject = {
                marketdata_pb2.Bar: subjects.md_bar,
                marketdata_pb2.Trade: subjects.md_trade,
                marketdata_pb2.Quote: subjects.md_quote,
            }[type(message)](message.symbol)
            body, headers = codec.encode(message)
            await runtime.nc.publish(subject, body, headers=headers)
            if isinstance(message, marketdata_pb2.Trade):
                await kv.put(runtime.js, subjects.KV_PRICES, message.symbol, message)
            self.stats.ticks += 1
            self.stats.per_symbol[message.symbol] = self.stats.per_symbol.get(message.symbol, 0) + 1

        feed = AlpacaFeed(
            key.get_secret_value(),
            secret.get_secret_value(),
            publish,
            url=self.settings.md_alpaca_url,
            feed=self.settings.md_alpaca_feed,
        )
        self.alpaca_feed = feed
        specs: dict[str, strategy_pb2.StrategySpec] = {}

        async def on_spec(change: kv.Change[strategy_pb2.StrategySpec]) -> None:
            if change.value is None:
                return  # an undeployed strategy's symbols stay subscribed until the next restart
            specs[change.key] = change.value
            if not change.initial:
                await feed.subscribe(wanted_symbols(specs.values(), []))

        await kv.follower(runtime.js, subjects.KV_STRATEGIES, on_spec).start(runtime, 10)
        await add_service(
            runtime,
            NAME,
            desk.__version__,
            "market data: publishes md.bar|quote|trade.<SYMBOL> and the last price per symbol in DESK_PRICES",
            metadata={"feed": feed.name},
        )
        runtime.stack.push_async_callback(feed.stop)
        await feed.start(wanted_symbols(specs.values(), self.settings.symbols))
        log.info("feed.started", feed=feed.name, symbols=sorted(feed.symbols))
