"""Run one strategy against the desk: connect, recover the books, subscribe, dispatch, heartbeat.

``python -m strategy_sdk run PATH`` calls :func:`run_strategy`; tests call it in-process with their
own stop event. Exit codes: 0 after a requested stop, 1 when NATS cannot be reached, 2 when the
strategy cannot be loaded or its ``on_start`` fails (the orchestrator restarts it with backoff),
and in legacy mode the old strategy's own exit code.

Events (bars, trades, quotes, the strategy's execution reports) go through one queue consumed by
one task, so hooks never run concurrently and always in arrival order. An exception in a hook is
logged with its traceback and counted (heartbeat ``errors`` / ``last_error``); the strategy keeps
running.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import ModuleType
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from desk.bus import codec, confine, subjects
from desk.bus.decimals import dec
from desk.bus.errors import DeskError
from desk.bus.request import request
from desk.bus.servers import env_auth, open_connection
from desk.core.orders import ORDER_TYPE_WORDS, TIME_IN_FORCE_WORDS, side_name, status_name
from desk.v1 import executions_pb2, ledger_pb2, marketdata_pb2, orders_pb2, strategy_pb2
from strategy_sdk.models import Bar, CancelResult, OpenOrder, OrderResult, Quote, Trade
from strategy_sdk.orders import Account
from strategy_sdk.strategy import Strategy, StrategyContext, call_hook, history_size

__all__ = [
    "EXIT_CONNECT",
    "EXIT_LOAD",
    "NatsGateway",
    "RunnerConfig",
    "StrategyLoadError",
    "configure_logging",
    "connect_nats",
    "load_strategy_class",
    "resolve_strategy_path",
    "run_strategy",
]

SDK_VERSION = "0.1.0"
EXIT_CONNECT = 1
EXIT_LOAD = 2
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_INITIAL_CASH = Decimal(100000)
log = logging.getLogger("strategy_sdk")


class StrategyLoadError(Exception):
    """The strategy cannot be run: missing files, bad config, import failure, no Strategy class."""


def configure_logging(level: str | None = None) -> None:
    """One line per record on stderr (the orchestrator captures it): time, level, logger, message."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("LOG_LEVEL") or "info").upper())


# Loading ------------------------------------------------------------------------------------------
def resolve_strategy_path(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(folder, strategy.py) for a folder holding strategy.py, or for a strategy.py file itself."""
    p = Path(path).resolve()
    if p.is_dir():
        file = p / "strategy.py"
        if not file.is_file():
            raise StrategyLoadError(f"{p} has no strategy.py")
        return p, file
    if p.is_file() and p.suffix == ".py":
        return p.parent, p
    raise StrategyLoadError(f"{path} is neither a strategy folder nor a .py file")


def load_config(folder: Path) -> dict[str, Any]:
    file = folder / "config.json"
    if not file.is_file():
        log.warning("strategy.no_config: %s not found; using an empty config", file)
        return {}
    try:
        config = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StrategyLoadError(f"cannot read {file}: {exc}") from exc
    if not isinstance(config, dict):
        raise StrategyLoadError(f"{file} must hold a JSON object")
    return config


def is_legacy_source(source: str, filename: str = "strategy.py") -> bool:
    """True for an old-desk strategy: it imports desk_client and not strategy_sdk.

    Decided from the syntax tree, without importing: an old strategy reads stdin at import time.
    """
    tree = ast.parse(source, filename)
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module.split(".")[0])
    return "desk_client" in modules and "strategy_sdk" not in modules


def _import_file(file: Path, module_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise StrategyLoadError(f"cannot import {file}")
    module = importlib.util.module_from_spec(spec)
    # The strategy's own helper modules, next to it, must be importable.
    if str(file.parent) not in sys.path:
        sys.path.insert(0, str(file.parent))
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # SystemExit: a strategy calling sys.exit() while importing
        sys.modules.pop(module_name, None)
        detail = "".join(traceback.format_exception(exc))
        raise StrategyLoadError(f"importing {file} failed: {exc!r}\n{detail}") from exc
    return module


def load_strategy_class(file: Path, module_name: str = "desk_strategy") -> type[Strategy]:
    """Import ``file`` and return the one Strategy subclass it defines."""
    module = _import_file(file, module_name)
    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, Strategy) and obj is not Strategy and obj.__module__ == module_name
    ]
    if not found:
        raise StrategyLoadError(
            f"{file} defines no subclass of strategy_sdk.Strategy (and does not use desk_client, "
            "so it is not an old-desk strategy either)"
        )
    if len(found) > 1:
        names = ", ".join(sorted(c.__name__ for c in found))
        raise StrategyLoadError(f"{file} defines several Strategy subclasses ({names}); keep exactly one")
    return found[0]


# Settings -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunnerConfig:
    """Who the strategy is and what it listens to, from arguments, then env, then config.json."""

    folder: Path
    file: Path
    config: dict[str, Any]
    nats_url: str
    strategy_id: str
    member_id: str
    symbols: tuple[str, ...]
    heartbeat_interval: float
    initial_cash: Decimal

    @classmethod
    def build(
        cls,
        path: str | os.PathLike[str],
        *,
        nats_url: str | None = None,
        strategy_id: str | None = None,
        member_id: str | None = None,
        symbols: list[str] | None = None,
        heartbeat_interval: float | None = None,
        initial_cash: Decimal | None = None,
        env: Mapping[str, str] | None = None,
    ) -> RunnerConfig:
        env = os.environ if env is None else env
        folder, file = resolve_strategy_path(path)
        config = load_config(folder)
        sid = strategy_id or env.get("DESK_STRATEGY_ID") or folder.name
        if not subjects.STRATEGY_ID_RE.match(sid):
            raise StrategyLoadError(f"strategy id {sid!r} must match {subjects.STRATEGY_ID_RE.pattern}")
        mid = member_id or env.get("DESK_MEMBER_ID") or str(config.get("user_id", ""))
        if symbols is None:
            raw = env.get("DESK_SYMBOLS", "")
            if raw.strip():
                symbols = [s.strip() for s in raw.split(",") if s.strip()]
            elif isinstance(config.get("symbols"), list):
                symbols = [str(s) for s in config["symbols"]]
            else:
                symbols = []
        for symbol in symbols:
            if not subjects.SYMBOL_RE.match(symbol):
                raise StrategyLoadError(f"symbol {symbol!r} must match {subjects.SYMBOL_RE.pattern}")
        if heartbeat_interval is None:
            try:
                heartbeat_interval = float(env.get("DESK_HEARTBEAT_INTERVAL", "5") or 5)
            except ValueError:
                raise StrategyLoadError("DESK_HEARTBEAT_INTERVAL must be a number of seconds") from None
        if heartbeat_interval <= 0:
            raise StrategyLoadError("DESK_HEARTBEAT_INTERVAL must be positive")
        if initial_cash is None:
            raw_cash = env.get("DESK_INITIAL_CASH") or str(config.get("initial_cash") or DEFAULT_INITIAL_CASH)
            try:
                initial_cash = Decimal(raw_cash)
            except InvalidOperation:
                raise StrategyLoadError(f"initial cash {raw_cash!r} is not a number") from None
        return cls(
            folder=folder,
            file=file,
            config=config,
            nats_url=nats_url or env.get("NATS_URL") or DEFAULT_NATS_URL,
            strategy_id=sid,
            member_id=mid,
            symbols=tuple(symbols),
            heartbeat_interval=heartbeat_interval,
            initial_cash=initial_cash,
        )

    def market_subjects(self, kind: str) -> list[str]:
        """``md.<kind>.<SYM>`` per symbol, or ``md.<kind>.*`` for every symbol."""
        if not self.symbols:
            return [f"md.{kind}.*"]
        return [f"md.{kind}.{s}" for s in self.symbols]


async def connect_nats(url: str, strategy_id: str, env: Mapping[str, str] | None = None) -> Client:
    """Connect with reconnects forever; NATS_USER/NATS_PASSWORD, NATS_CREDS, NATS_INBOX_PREFIX honoured.

    Replies come under the strategy's own inbox (``_INBOX_S.<id>``, desk.bus.confine): the desk
    answers a strategy nowhere else, so that is the default inbox prefix."""
    name = f"strategy-{strategy_id}"
    env = os.environ if env is None else env
    options: dict[str, Any] = env_auth(env)
    options["inbox_prefix"] = env.get("NATS_INBOX_PREFIX") or confine.strategy_inbox_prefix(strategy_id)

    async def error_cb(exc: Exception) -> None:
        log.warning("nats.error: %r", exc)

    async def disconnected_cb() -> None:
        closing = holder and (holder[0].is_closed or holder[0].is_draining)
        log.log(logging.INFO if closing else logging.WARNING, "nats.disconnected")

    async def reconnected_cb() -> None:
        log.info("nats.reconnected")

    holder: list[Client] = []
    nc = await open_connection(
        url,
        forever=True,
        name=name,
        connect_timeout=5,
        error_cb=error_cb,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
        **options,
    )
    holder.append(nc)
    return nc


# Orders over NATS ----------------------------------------------------------------------------------
class NatsGateway:
    """Sends a strategy's orders to the router; one retry with the same client order id on timeout."""

    def __init__(self, nc: Client, strategy_id: str, timeout: float = 5.0) -> None:
        self.nc = nc
        self.strategy_id = strategy_id
        self.timeout = timeout

    async def _ask(self, subject: str, message: Any, reply_type: Any) -> Any:
        """The reply, or a (reason, message) pair after a second failure."""
        last = ("TIMEOUT", f"no answer on {subject} within {self.timeout}s (tried twice)")
        for attempt in (1, 2):
            try:
                return await request(self.nc, subject, message, reply_type, timeout=self.timeout)
            except NatsTimeoutError:
                last = ("TIMEOUT", f"no answer on {subject} within {self.timeout}s (tried twice)")
            except NoRespondersError:
                last = ("UNAVAILABLE", f"nobody serves {subject}: is the order router running?")
                if attempt == 1:
                    await asyncio.sleep(min(self.timeout, 0.5))  # give a restarting router a moment
            except DeskError as exc:
                return (exc.code, exc.message)
            log.warning("order.retry: %s on %s (attempt %d)", last[0], subject, attempt)
        return last

    async def submit(self, order: orders_pb2.OrderRequest) -> OrderResult:
        answer = await self._ask(subjects.order_submit(self.strategy_id), order, orders_pb2.OrderAck)
        if isinstance(answer, tuple):
            return OrderResult(False, "", order.client_order_id, answer[0], answer[1])
        return OrderResult(
            accepted=answer.accepted,
            order_id=answer.order_id,
            client_order_id=answer.client_order_id or order.client_order_id,
            reason=_reason(answer.reason) if not answer.accepted else "",
            message=answer.message,
            duplicate=answer.duplicate,
        )

    async def cancel(self, client_order_id: str) -> CancelResult:
        msg = orders_pb2.CancelRequest(strategy_id=self.strategy_id, client_order_id=client_order_id)
        answer = await self._ask(subjects.order_cancel(self.strategy_id), msg, orders_pb2.CancelAck)
        if isinstance(answer, tuple):
            return CancelResult(False, "", client_order_id, answer[0], answer[1])
        return CancelResult(
            accepted=answer.accepted,
            order_id=answer.order_id,
            client_order_id=client_order_id,
            reason=_reason(answer.reason) if not answer.accepted else "",
            message=answer.message,
        )


def _reason(value: int) -> str:
    try:
        name: str = orders_pb2.RejectReason.Name(value)
    except ValueError:
        return f"UNKNOWN_{value}"
    return name.removeprefix("REJECT_REASON_")


# Heartbeats ------------------------------------------------------------------------------------------
async def heartbeat_loop(
    nc: Client,
    strategy_id: str,
    interval: float,
    stats: Callable[[], tuple[int, int, int, str]],
    alive: Callable[[], bool] | None = None,
) -> None:
    """Publish a Heartbeat now and every ``interval`` seconds: (bars_seen, orders_sent, errors, last_error).

    With ``alive``, a beat is sent only while ``alive()`` says the strategy is working (the old-desk
    wrapper: its child has lived a while and still reads its input), so the orchestrator's watchdog
    sees a hung child as hung."""
    subject = subjects.heartbeat(strategy_id)
    while True:
        if alive is not None and not alive():
            await asyncio.sleep(min(interval, 0.25))  # beat as soon as it is alive again
            continue
        bars, orders, errors, last_error = stats()
        beat = strategy_pb2.Heartbeat(
            strategy_id=strategy_id,
            ts_ns=time.time_ns(),
            bars_seen=bars,
            orders_sent=orders,
            errors=errors,
            sdk_version=SDK_VERSION,
            last_error=last_error[:500],
        )
        data, headers = codec.encode(beat)
        try:
            await nc.publish(subject, data, headers=headers)
        except Exception as exc:  # noqa: BLE001 - a closed or reconnecting connection must not end the strategy
            log.warning("heartbeat.failed: %r", exc)
        await asyncio.sleep(interval)


# The live runner --------------------------------------------------------------------------------------
_STOP = object()


class LiveRunner:
    """One strategy on the bus. Construction does no I/O; :meth:`run` does the rest."""

    def __init__(self, cfg: RunnerConfig, strategy: Strategy, nc: Client, *, order_timeout: float = 5.0,
                 ledger_timeout: float = 1.0) -> None:
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
                await self._safe_hook("on_trade", Trade.from_proto(codec.decode(msg.data, marketdata_pb2.Trade, headers)))
            elif subject.startswith("md.quote."):
                await self._safe_hook("on_quote", Quote.from_proto(codec.decode(msg.data, marketdata_pb2.Quote, headers)))
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
        query = ledger_pb2.LedgerQuery(strategy_id=self.cfg.strategy_id, limit=1000)
        account = self.context.account

        def own(kind: str) -> str:  # the strategy's NATS user may ask for its own books only
            return subjects.ledger_own(kind, self.cfg.strategy_id)

        try:
            positions = await request(self.nc, own(subjects.LEDGER_POSITIONS), query, ledger_pb2.PositionsReply,
                                      timeout=self.ledger_timeout)
            pnl = await request(self.nc, own(subjects.LEDGER_PNL), query, ledger_pb2.PnlReply, timeout=self.ledger_timeout)
        except (NatsTimeoutError, NoRespondersError, DeskError) as exc:
            log.warning("books.fresh: ledger unavailable (%r); starting with cash %s and no positions",
                        exc, account.cash)
            return
        for p in positions.positions:
            if p.strategy_id in ("", self.cfg.strategy_id) and p.symbol:
                account.positions[p.symbol] = dec(p.qty)
        for row in pnl.strategies:
            if row.strategy_id == self.cfg.strategy_id and row.cash:
                account.cash = Decimal(row.cash)
        with contextlib.suppress(NatsTimeoutError, NoRespondersError, DeskError):
            orders = await request(self.nc, own(subjects.LEDGER_ORDERS), query, ledger_pb2.OrdersReply,
                                   timeout=self.ledger_timeout)
            for o in orders.orders:
                if o.strategy_id == self.cfg.strategy_id and o.status in (
                    executions_pb2.ORDER_STATUS_NEW, executions_pb2.ORDER_STATUS_PARTIALLY_FILLED
                ):
                    account.open_orders[o.client_order_id] = OpenOrder(
                        order_id=o.order_id, client_order_id=o.client_order_id, symbol=o.symbol,
                        side=side_name(o.side), type=ORDER_TYPE_WORDS.get(o.type, ""),
                        time_in_force=TIME_IN_FORCE_WORDS.get(o.time_in_force, ""),
                        qty=Decimal(o.qty) if o.qty else None,
                        limit_price=Decimal(o.limit_price) if o.limit_price else None,
                        stop_price=Decimal(o.stop_price) if o.stop_price else None,
                        filled_qty=dec(o.filled_qty), status=status_name(o.status), created_ns=o.created_ns,
                    )
        log.info("books.recovered: cash %s, positions %s, open orders %d", account.cash,
                 {s: str(q) for s, q in account.positions.items() if q}, len(account.open_orders))

    async def run(self, stop_event: asyncio.Event) -> int:
        subs: list[Subscription] = [
            await self.nc.subscribe(subjects.execution(self.cfg.strategy_id), cb=self._enqueue)
        ]
        await self.recover_books()
        kinds = ["bar"] + [k for k, hook in (("trade", "on_trade"), ("quote", "on_quote")) if self._overrides(hook)]
        for kind in kinds:
            for subject in self.cfg.market_subjects(kind):
                subs.append(await self.nc.subscribe(subject, cb=self._enqueue))
        await self.nc.flush()
        log.info("strategy.starting: %s (member %s) symbols=%s", self.cfg.strategy_id, self.cfg.member_id,
                 ",".join(self.cfg.symbols) or "all")
        try:
            await call_hook(self.strategy.on_start)
        except Exception as exc:
            log.error("strategy.start_failed: on_start raised %r", exc, exc_info=exc)
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
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
            self.stopping = True
            for sub in subs[1:]:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            self.queue.put_nowait(_STOP)
            try:
                await asyncio.wait_for(consumer, timeout=10)
            except (TimeoutError, asyncio.CancelledError):
                log.warning("strategy.stop_slow: a hook was still running after 10s; cancelled")
            await self._safe_hook("on_stop")
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        log.info("strategy.stopped: %s bars=%d orders=%d errors=%d", self.cfg.strategy_id, *self.stats()[:3])
        return 0


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
    try:
        cfg = RunnerConfig.build(
            path, nats_url=nats_url, strategy_id=strategy_id, member_id=member_id, symbols=symbols,
            heartbeat_interval=heartbeat_interval, initial_cash=initial_cash, env=env,
        )
        for key, value in (cfg.config.get("env") or {}).items():
            os.environ.setdefault(str(key), str(value))
        source = cfg.file.read_text()
        legacy = is_legacy_source(source, str(cfg.file))
    except StrategyLoadError as exc:
        log.error("strategy.load_failed: %s", exc)
        return EXIT_LOAD
    except SyntaxError as exc:  # file, line and caret, then "SyntaxError: ..." as the last line
        log.error("strategy.load_failed: %s\n%s", path, "".join(traceback.format_exception_only(exc)).rstrip())
        return EXIT_LOAD
    except OSError as exc:
        log.error("strategy.load_failed: cannot read %s: %r", path, exc)
        return EXIT_LOAD
    if legacy:
        from strategy_sdk.legacy import run_legacy

        return await run_legacy(cfg, stop_event)
    try:
        cls = load_strategy_class(cfg.file, f"desk_strategy_{cfg.strategy_id.replace('-', '_')}")
        strategy = cls()
    except StrategyLoadError as exc:
        log.error("strategy.load_failed: %s", exc)
        return EXIT_LOAD
    except Exception as exc:
        log.error("strategy.load_failed: creating the strategy raised %r", exc, exc_info=exc)
        return EXIT_LOAD
    try:
        nc = await connect_nats(cfg.nats_url, cfg.strategy_id, env)
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
        try:
            await asyncio.wait_for(nc.drain(), timeout=10)
        except Exception as exc:  # noqa: BLE001 - shutdown must finish whatever happened
            log.warning("nats.drain_failed: %r", exc)
            with contextlib.suppress(Exception):
                await nc.close()
