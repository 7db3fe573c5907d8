"""The old desk's client API, for strategies written before the SDK: they run unchanged.

An old strategy reads market data as JSON lines on stdin and trades with::

    from desk_client import place_order
    result = place_order("AAPL", 10, "buy", "market", "day")
    # {"id": "...", "client_order_id": "...", "status": "accepted", "reason": None, "message": ""}

The calls are synchronous. Behind them a private asyncio loop runs in a daemon thread, connected
once (lazily, on the first call) to ``NATS_URL`` as the strategy ``DESK_STRATEGY_ID``; each order
goes to ``desk.order.submit.<strategy_id>`` as an ``OrderRequest`` and the ``OrderAck`` comes
back as a dict. A timed-out order is retried once with the same client order id (the router
answers a repeat with the first answer), then reported as ``status "rejected"``, reason
``"TIMEOUT"``. Nonsense arguments (unknown side, type or time in force; a non-positive quantity; a
limit order without a limit price) raise ``ValueError`` in the caller and never reach the desk.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
import uuid
from collections.abc import Mapping
from concurrent.futures import Future
from decimal import Decimal, InvalidOperation
from typing import Any

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from desk.bus import confine, subjects
from desk.bus.decimals import fmt
from desk.bus.errors import DeskError
from desk.bus.request import request
from desk.bus.servers import DEFAULT_URL, env_auth, open_connection
from desk.core.orders import ORDER_TYPES, SIDES, TIMES_IN_FORCE, needs_limit_price, needs_stop_price
from desk.v1 import orders_pb2

__all__ = ["cancel_order", "place_order"]

REQUEST_TIMEOUT = 5.0


class _Desk:
    """The private loop thread and the one NATS connection of this process."""

    def __init__(self) -> None:
        self.strategy_id = os.environ.get("DESK_STRATEGY_ID", "")
        if not subjects.STRATEGY_ID_RE.match(self.strategy_id):
            raise RuntimeError(
                f"DESK_STRATEGY_ID={self.strategy_id!r} is not a strategy id: run old strategies with "
                "`python -m strategy_sdk run <folder>`"
            )
        self.nc: Client | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="desk-client", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    async def connection(self) -> Client:
        if self.nc is None or self.nc.is_closed:
            options: dict[str, Any] = env_auth(os.environ)
            # the desk answers a strategy only under its own inbox (desk.bus.confine)
            options["inbox_prefix"] = os.environ.get("NATS_INBOX_PREFIX") or confine.strategy_inbox_prefix(
                self.strategy_id
            )
            self.nc = await open_connection(
                os.environ.get("NATS_URL", DEFAULT_URL), forever=True, name=f"desk-client-{self.strategy_id}", **options
            )
        return self.nc

    async def ask(self, subject: str, message: Any, reply_type: Any) -> Any:
        """The reply, or (reason, message) after a retry failed too."""
        nc = await self.connection()
        last = ("TIMEOUT", f"no answer on {subject} within {REQUEST_TIMEOUT}s (tried twice)")
        for attempt in (1, 2):
            try:
                return await request(nc, subject, message, reply_type, timeout=REQUEST_TIMEOUT)
            except NatsTimeoutError:
                last = ("TIMEOUT", f"no answer on {subject} within {REQUEST_TIMEOUT}s (tried twice)")
            except NoRespondersError:
                last = ("UNAVAILABLE", f"nobody serves {subject}: is the order router running?")
                if attempt == 1:
                    await asyncio.sleep(0.5)
            except DeskError as exc:
                return (exc.code, exc.message)
        return last

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.drain(), 5)
            except Exception:  # noqa: BLE001 - exiting: close hard whatever went wrong while draining
                await self.nc.close()


_desk: _Desk | None = None
_desk_lock = threading.Lock()


def _get_desk() -> _Desk:
    global _desk
    with _desk_lock:
        if _desk is None:
            _desk = _Desk()
            atexit.register(_shutdown)
        return _desk


def _shutdown() -> None:
    desk = _desk
    if desk is None:
        return
    with contextlib.suppress(Exception):  # exiting anyway: never turn a clean exit into a traceback
        desk.run(desk.close(), timeout=6)
    desk.loop.call_soon_threadsafe(desk.loop.stop)
    desk.thread.join(timeout=2)


def _choice(name: str, value: Any, choices: Mapping[str, Any]) -> Any:
    key = value.lower() if isinstance(value, str) else value
    if key not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return choices[key]


def _decimal(name: str, value: Any, required: bool) -> Decimal | None:
    if value is None:
        if required:
            raise ValueError(f"{name} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise ValueError(f"{name} must be a number, got {value!r}")  # noqa: TRY004 - old API promises ValueError
    try:
        number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, ValueError):
        raise ValueError(f"{name} {value!r} is not a number") from None
    if not number.is_finite() or number <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return number


def _reason(value: int) -> str:
    return str(orders_pb2.RejectReason.Name(value)).removeprefix("REJECT_REASON_")


def _result(
    answer: orders_pb2.OrderAck | orders_pb2.CancelAck | tuple[str, str],
    client_order_id: str,
    answer_names_it: bool = False,
) -> dict[str, Any]:
    """The old desk's result dict for an ack (or a ``(reason, message)`` the request failed with);
    ``answer_names_it``: the ack's client order id, when set, is the one reported (an order's ack)."""
    if isinstance(answer, tuple):
        return {
            "id": None,
            "client_order_id": client_order_id,
            "status": "rejected",
            "reason": answer[0],
            "message": answer[1],
        }
    named = answer.client_order_id if answer_names_it else ""
    return {
        "id": answer.order_id or None,
        "client_order_id": named or client_order_id,
        "status": "accepted" if answer.accepted else "rejected",
        "reason": None if answer.accepted else _reason(answer.reason),
        "message": answer.message,
    }


def place_order(
    symbol: str,
    qty: float | str | Decimal,
    side: str,
    order_type: str = "market",
    time_in_force: str = "day",
    limit_price: float | str | Decimal | None = None,
    stop_price: float | str | Decimal | None = None,
    client_order_id: str | None = None,
    trail_price: float | str | Decimal | None = None,
    trail_percent: float | str | Decimal | None = None,
) -> dict[str, Any]:
    """Send an order and wait for the desk's answer; returns the old desk's result dict.

    ``order_type`` "trailing_stop" takes exactly one of ``trail_price`` and ``trail_percent`` (the
    desk checks it: a wrong combination comes back ``rejected`` with reason ``INVALID_FIELD``)."""
    if not isinstance(symbol, str) or not subjects.SYMBOL_RE.match(symbol):
        raise ValueError(f"symbol must be upper case like 'AAPL', got {symbol!r}")
    side_value = _choice("side", side, SIDES)
    type_value = _choice("order_type", order_type, ORDER_TYPES)
    tif_value = _choice("time_in_force", time_in_force, TIMES_IN_FORCE)
    qty_d = _decimal("qty", qty, True)
    needs_limit = needs_limit_price(type_value)
    needs_stop = needs_stop_price(type_value)
    limit_d = _decimal("limit_price", limit_price, needs_limit)
    stop_d = _decimal("stop_price", stop_price, needs_stop)
    if limit_d is not None and not needs_limit:
        raise ValueError(f"{order_type} orders take no limit_price")
    if stop_d is not None and not needs_stop:
        raise ValueError(f"{order_type} orders take no stop_price")
    desk = _get_desk()
    if client_order_id is None:
        client_order_id = f"{desk.strategy_id[:20]}-{uuid.uuid4().hex[:24]}"
    elif not subjects.CLIENT_ORDER_ID_RE.match(client_order_id):
        raise ValueError(f"client_order_id must match {subjects.CLIENT_ORDER_ID_RE.pattern}")
    order = orders_pb2.OrderRequest(
        strategy_id=desk.strategy_id,
        client_order_id=client_order_id,
        symbol=symbol,
        side=side_value,
        type=type_value,
        time_in_force=tif_value,
        qty=fmt(qty_d),
        limit_price=fmt(limit_d),
        stop_price=fmt(stop_d),
        trail_price=fmt(_decimal("trail_price", trail_price, False)),
        trail_percent=fmt(_decimal("trail_percent", trail_percent, False)),
    )
    answer = desk.run(
        desk.ask(subjects.order_submit(desk.strategy_id), order, orders_pb2.OrderAck), timeout=4 * REQUEST_TIMEOUT
    )
    return _result(answer, client_order_id, answer_names_it=True)


def cancel_order(client_order_id: str) -> dict[str, Any]:
    """Ask to cancel an order; ``status`` "accepted" means the cancel was forwarded to the venue."""
    if not isinstance(client_order_id, str) or not subjects.CLIENT_ORDER_ID_RE.match(client_order_id):
        raise ValueError(f"client_order_id must match {subjects.CLIENT_ORDER_ID_RE.pattern}, got {client_order_id!r}")
    desk = _get_desk()
    message = orders_pb2.CancelRequest(strategy_id=desk.strategy_id, client_order_id=client_order_id)
    answer = desk.run(
        desk.ask(subjects.order_cancel(desk.strategy_id), message, orders_pb2.CancelAck), timeout=4 * REQUEST_TIMEOUT
    )
    return _result(answer, client_order_id)
