"""Run one strategy against the desk: connect, recover the books, subscribe, dispatch, heartbeat.

``python -m strategy_sdk run PATH`` calls :func:`run_strategy`; tests call it in-process with their
own stop event. Exit codes: 0 after a requested stop (SIGTERM/SIGINT are honoured at any point,
connecting included), 1 when NATS cannot be reached or refuses the strategy's credentials (after
``MAX_AUTH_FAILURES`` refusals, in one line), 2 when the
strategy cannot be loaded or its ``on_start`` fails (the orchestrator restarts it with backoff),
and in legacy mode the old strategy's own exit code.

Events (bars, trades, quotes, the strategy's execution reports) go through one queue consumed by
one task, so hooks never run concurrently and always in arrival order. An exception in a hook is
logged with its traceback and counted (heartbeat ``errors`` / ``last_error``); the strategy keeps
running.

This module is the run loop only; it wires :mod:`strategy_sdk.loading` (finding and importing the
strategy), :mod:`strategy_sdk.config` (its settings), :mod:`strategy_sdk.client` (NATS: connection,
orders, books, heartbeats) and, for old-desk strategies, :mod:`strategy_sdk.legacy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from desk.bus import codec, subjects
from desk.bus.errors import DeskError
from desk.v1 import executions_pb2, marketdata_pb2

# Re-exported on purpose: these names lived here before the runner was split, and members' own
# scripts import them from strategy_sdk.runner. Code in this repository imports them from their
# modules (strategy_sdk.loading, .config, .client); keep these imports and __all__ in step.
from strategy_sdk.client import (
    EXIT_CONNECT,
    SDK_VERSION,
    ConnectRefused,
    ConnectStopped,
    NatsGateway,
    connect_nats,
    current_stop,
    heartbeat_loop,
    recover_books,
    subscribe,
    unsubscribe_all,
)
from strategy_sdk.config import RunnerConfig, load_config
from strategy_sdk.legacy import run_legacy
from strategy_sdk.loading import (
    EXIT_LOAD,
    StrategyLoadError,
    is_legacy_source,
    load_strategy_class,
    resolve_strategy_path,
)
from strategy_sdk.models import Bar, Quote, Trade
from strategy_sdk.orders import Account
from strategy_sdk.strategy import Strategy, StrategyContext, call_hook, history_size

__all__ = [
    "EXIT_CONNECT",
    "EXIT_LOAD",
    "SDK_VERSION",
    "LiveRunner",
    "NatsGateway",
    "RunnerConfig",
    "StrategyLoadError",
    "configure_logging",
    "connect_nats",
    "is_legacy_source",
    "load_config",
    "load_strategy_class",
    "resolve_strategy_path",
    "run_strategy",
]

log = logging.getLogger("strategy_sdk")


def configure_logging(level: str | None = None) -> None:
    """One line per record on stderr (the orchestrator captures it): time, level, logger, message."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("LOG_LEVEL") or "info").upper())


# The live runner --------------------------------------------------------------------------------------
_STOP = object()


class LiveRunner:
    """One strategy on the bus. Construction does no I/O; :meth:`run` does the rest."""

    def __init__(
        self,
        cfg: RunnerConfig,
        strategy: Strategy,
        nc: Client,
        *,
        order_timeout: float = 5.0,
        ledger_timeout: float = 1.0,
    ) -> None:
        self.cfg = cfg
        self.strategy = strategy
        self.nc = nc
        self.ledger_timeout = ledger_timeout
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.bars_seen = 0
        self.stopping = False
        self.context = StrategyContext(
            strategy_id=cfg.strategy_id,
            member_id=cfg.member_id,
            config=cfg.config,
            account=Account(cash=cfg.initial_cash),
            gateway=NatsGateway(nc, cfg.strategy_id, order_timeout),
            log=logging.getLogger(f"strategy.{cfg.strategy_id}"),
            history_size=history_size(cfg.config),
        )
        strategy.attach(self.context)
        self._backlog_warned = False

    def stats(self) -> tuple[int, int, int, str]:
        c = self.context
        return self.bars_seen, c.orders_sent, c.errors, c.last_error

    def _overrides(self, hook: str) -> bool:
        return getattr(type(self.strategy), hook) is not getattr(Strategy, hook)

    async def _enqueue(self, msg: Msg) -> None:
        self.queue.put_nowait(msg)
        if self.queue.qsize() > 10_000 and not self._backlog_warned:
            self._backlog_warned = True
            log.warning("strategy.backlog: %d events waiting; the strategy is slower than its data", self.queue.qsize())

    def _record_error(self, where: str, exc: BaseException) -> None:
        self.context.errors += 1
        self.context.last_error = f"{where}: {exc!r}"
        self.context.log.error("strategy.hook_failed in %s: %r", where, exc, exc_info=exc)

    async def _safe_hook(self, name: str, *args: Any) -> None:
        try:
            await call_hook(getattr(self.strategy, name), *args)
        except Exception as exc:  # noqa: BLE001 - a strategy's bug is counted, never fatal
            self._record_error(name, exc)

    async def dispatch(self, msg: Msg) -> None:
        subject = msg.subject
        headers = msg.headers or {}
        try:
            if subject.startswith("md.bar."):
                bar = Bar.from_proto(codec.decode(msg.data, marketdata_pb2.Bar, headers))
                self.bars_seen += 1
                self.context.record_bar(bar)
                await self._safe_hook("on_bar", bar)
            elif subject.startswith("md.trade."):
                await self._safe_hook(
                    "on_trade", Trade.from_proto(codec.decode(msg.data, marketdata_pb2.Trade, headers))
                )
            elif subject.startswith("md.quote."):
                await self._safe_hook(
                    "on_quote", Quote.from_proto(codec.decode(msg.data, marketdata_pb2.Quote, headers))
                )
            elif subject.startswith("desk.exec."):
                report = codec.decode(msg.data, executions_pb2.ExecutionReport, headers)
                booked = self.context.account.apply(report)
                if booked is None:
                    return
                fill, update = booked
                if fill is not None:
                    await self._safe_hook("on_fill", fill)
                await self._safe_hook("on_order_update", update)
        except DeskError as exc:
            self.context.errors += 1
            self.context.last_error = f"bad message on {subject}: {exc}"
            log.warning("message.undecodable on %s: %s", subject, exc)

    async def consume(self) -> None:
        while True:
            msg = await self.queue.get()
            if self.stopping or msg is _STOP:
                return
            await self.dispatch(msg)

    async def recover_books(self) -> None:
        """Position, cash and open orders from the ledger after a restart; fresh books without one."""
        await recover_books(self.nc, self.cfg.strategy_id, self.context.account, self.ledger_timeout)

    async def _subscribe(self) -> list[Subscription]:
        """Own execution reports first (nothing booked while the books load is lost), then the books,
        then market data: bars always, trades and quotes only for a strategy that handles them."""
        subs = await subscribe(self.nc, [subjects.execution(self.cfg.strategy_id)], self._enqueue)
        await self.recover_books()
        kinds = ["bar"] + [k for k, hook in (("trade", "on_trade"), ("quote", "on_quote")) if self._overrides(hook)]
        for kind in kinds:
            subs += await subscribe(self.nc, self.cfg.market_subjects(kind), self._enqueue)
        await self.nc.flush()
        return subs

    async def _shutdown(self, subs: list[Subscription], consumer: asyncio.Task[None]) -> None:
        """Stop market data, let the consumer finish the hook it is in, then ``on_stop``."""
        self.stopping = True
        await unsubscribe_all(subs[1:])  # the execution reports' subscription ends with the drain
        self.queue.put_nowait(_STOP)
        try:
            await asyncio.wait_for(consumer, timeout=10)
        except (TimeoutError, asyncio.CancelledError):
            log.warning("strategy.stop_slow: a hook was still running after 10s; cancelled")
        await self._safe_hook("on_stop")

    async def _start(self) -> list[Subscription] | None:
        """Subscribe, recover the books, ``on_start``; None (logged) when ``on_start`` fails."""
        subs = await self._subscribe()
        log.info(
            "strategy.starting: %s (member %s) symbols=%s",
            self.cfg.strategy_id,
            self.cfg.member_id,
            ",".join(self.cfg.symbols) or "all",
        )
        try:
            await call_hook(self.strategy.on_start)
        except Exception as exc:
            log.error("strategy.start_failed: on_start raised %r", exc, exc_info=exc)
            await unsubscribe_all(subs)
            return None
        return subs

    async def run(self, stop_event: asyncio.Event) -> int:
        # A stop while starting (the books, on_start) ends the run at once: SIGTERM is honoured anywhere.
        starting = asyncio.create_task(self._start(), name="strategy-start")
        stop_wait = asyncio.create_task(stop_event.wait())
        try:
            await asyncio.wait({starting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(BaseException):
                await starting
            log.info("strategy.stopped: %s while starting", self.cfg.strategy_id)
            return 0
        subs = starting.result()
        if subs is None:
            return EXIT_LOAD
        consumer = asyncio.create_task(self.consume(), name="strategy-consumer")
        heartbeat = asyncio.create_task(
            heartbeat_loop(self.nc, self.cfg.strategy_id, self.cfg.heartbeat_interval, self.stats), name="heartbeat"
        )
        stop_wait = asyncio.create_task(stop_event.wait())
        try:
            await asyncio.wait({consumer, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
            await self._shutdown(subs, consumer)
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        log.info("strategy.stopped: %s bars=%d orders=%d errors=%d", self.cfg.strategy_id, *self.stats()[:3])
        return 0


# Entry point ------------------------------------------------------------------------------------------
def _configure(path: str | os.PathLike[str], **settings: Any) -> tuple[RunnerConfig, bool] | None:
    """The strategy's settings and whether it is an old-desk one; None (logged) when it cannot load."""
    try:
        cfg = RunnerConfig.build(path, **settings)
        for key, value in (cfg.config.get("env") or {}).items():
            os.environ.setdefault(str(key), str(value))
        source = cfg.file.read_text()
        return cfg, is_legacy_source(source, str(cfg.file))
    except StrategyLoadError as exc:
        log.error("strategy.load_failed: %s", exc)
    except SyntaxError as exc:  # file, line and caret, then "SyntaxError: ..." as the last line
        log.error("strategy.load_failed: %s\n%s", path, "".join(traceback.format_exception_only(exc)).rstrip())
    except OSError as exc:
        log.error("strategy.load_failed: cannot read %s: %r", path, exc)
    return None


def _instantiate(cfg: RunnerConfig) -> Strategy | None:
    """An instance of the strategy's one Strategy subclass; None (logged) when that fails."""
    try:
        cls = load_strategy_class(cfg.file, f"desk_strategy_{cfg.strategy_id.replace('-', '_')}")
        return cls()
    except StrategyLoadError as exc:
        log.error("strategy.load_failed: %s", exc)
    except Exception as exc:
        log.error("strategy.load_failed: creating the strategy raised %r", exc, exc_info=exc)
    return None


async def _drain(nc: Client) -> None:
    try:
        await asyncio.wait_for(nc.drain(), timeout=10)
    except Exception as exc:  # noqa: BLE001 - shutdown must finish whatever happened
        log.warning("nats.drain_failed: %r", exc)
        with contextlib.suppress(Exception):
            await nc.close()


async def run_strategy(
    path: str | os.PathLike[str],
    nats_url: str | None = None,
    stop_event: asyncio.Event | None = None,
    *,
    strategy_id: str | None = None,
    member_id: str | None = None,
    symbols: list[str] | None = None,
    heartbeat_interval: float | None = None,
    initial_cash: Decimal | None = None,
    order_timeout: float = 5.0,
    ledger_timeout: float = 1.0,
    env: Mapping[str, str] | None = None,
    on_ready: Callable[[Strategy], Awaitable[None] | None] | None = None,
) -> int:
    """Run the strategy at ``path`` until ``stop_event`` is set; returns the process exit code.

    New-style strategies (a :class:`Strategy` subclass) run in this event loop; old-desk ones
    (``desk_client`` + stdin) run as a child process fed with bars (:mod:`strategy_sdk.legacy`).
    """
    stop_event = stop_event or asyncio.Event()
    token = current_stop.set(stop_event)  # connect_nats (ours and the old-desk wrapper's) gives up on a stop
    try:
        return await _run_strategy(
            path,
            nats_url,
            stop_event,
            strategy_id=strategy_id,
            member_id=member_id,
            symbols=symbols,
            heartbeat_interval=heartbeat_interval,
            initial_cash=initial_cash,
            order_timeout=order_timeout,
            ledger_timeout=ledger_timeout,
            env=env,
            on_ready=on_ready,
        )
    except ConnectStopped:
        log.info("strategy.stopped: stopped while connecting to NATS")
        return 0
    finally:
        current_stop.reset(token)


async def _run_strategy(
    path: str | os.PathLike[str],
    nats_url: str | None,
    stop_event: asyncio.Event,
    *,
    strategy_id: str | None,
    member_id: str | None,
    symbols: list[str] | None,
    heartbeat_interval: float | None,
    initial_cash: Decimal | None,
    order_timeout: float,
    ledger_timeout: float,
    env: Mapping[str, str] | None,
    on_ready: Callable[[Strategy], Awaitable[None] | None] | None,
) -> int:
    loaded = _configure(
        path,
        nats_url=nats_url,
        strategy_id=strategy_id,
        member_id=member_id,
        symbols=symbols,
        heartbeat_interval=heartbeat_interval,
        initial_cash=initial_cash,
        env=env,
    )
    if loaded is None:
        return EXIT_LOAD
    cfg, legacy = loaded
    if legacy:
        return await run_legacy(cfg, stop_event)
    strategy = _instantiate(cfg)
    if strategy is None:
        return EXIT_LOAD
    try:
        nc = await connect_nats(cfg.nats_url, cfg.strategy_id, env, stop=stop_event)
    except ConnectRefused as exc:  # one line: which server, which credentials
        log.error("nats.connect_failed: %s", exc)
        return EXIT_CONNECT
    except Exception as exc:  # noqa: BLE001 - any connect failure is reported as exit code 1
        log.error("nats.connect_failed: %s: %r", cfg.nats_url, exc)
        return EXIT_CONNECT
    try:
        runner = LiveRunner(cfg, strategy, nc, order_timeout=order_timeout, ledger_timeout=ledger_timeout)
        if on_ready is not None:
            maybe = on_ready(strategy)
            if maybe is not None:
                await maybe
        return await runner.run(stop_event)
    finally:
        await _drain(nc)
