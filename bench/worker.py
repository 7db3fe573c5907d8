"""Load generators and bare NATS peers, each run as its own process (``python -m bench.worker ROLE JSON``).

Separate processes keep the measuring client's GIL out of the measured service's way. A worker
prints ``READY`` once it serves (persistent roles), and one JSON line with its results at the end;
persistent roles end on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import struct
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from desk.bus.lifecycle import event_loop_factory
from desk.bus.servers import open_connection

SAMPLE_LIMIT = 20000


def _emit(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def _ready() -> None:
    sys.stdout.write("READY\n")
    sys.stdout.flush()


async def _until_term() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _connect(url: str, inbox_prefix: str = "_INBOX") -> Client:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(type(exc).__name__)

    nc = await open_connection(url, forever=False, error_cb=on_error, inbox_prefix=inbox_prefix)
    nc._bench_errors = errors  # type: ignore[attr-defined]
    return nc


# -- bare request/reply peers ------------------------------------------------------------------------


async def echo(url: str, subject: str) -> None:
    """Replies with the request's body (the bare service)."""
    nc = await _connect(url)

    async def on_msg(msg: Msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(subject, queue="bench", cb=on_msg)
    await nc.flush()
    _ready()
    await _until_term()
    await nc.drain()


async def relay(url: str, subject: str, next_subject: str) -> None:
    """Forwards each request to ``next_subject`` and replies with its answer (hop one of two)."""
    nc = await _connect(url)

    async def on_msg(msg: Msg) -> None:
        reply = await nc.request(next_subject, msg.data, timeout=5)
        await msg.respond(reply.data)

    await nc.subscribe(subject, queue="bench", cb=on_msg)
    await nc.flush()
    _ready()
    await _until_term()
    await nc.drain()


async def _closed_loop(n: int, concurrency: int, one: Any) -> tuple[list[float], float, int]:
    """Run ``one(i)`` ``n`` times with ``concurrency`` in flight; latencies in ms, elapsed s, failures."""
    latencies: list[float] = []
    failures = 0
    counter = iter(range(n))

    async def lane() -> None:
        nonlocal failures
        for i in counter:
            t0 = time.perf_counter_ns()
            try:
                ok = await one(i)
            except Exception:  # noqa: BLE001 - a failed request is counted, the run goes on
                ok = False
            if ok:
                latencies.append((time.perf_counter_ns() - t0) / 1e6)
            else:
                failures += 1

    start = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start, failures


async def requester(url: str, subject: str, size: int, n: int, concurrency: int, warmup: int) -> None:
    """The bare client: ``n`` requests of ``size`` bytes to ``subject``."""
    nc = await _connect(url)
    body = b"x" * size

    async def one(_: int) -> bool:
        await nc.request(subject, body, timeout=5)
        return True

    await _closed_loop(warmup, 1, one)
    latencies, elapsed, failures = await _closed_loop(n, concurrency, one)
    await nc.drain()
    _emit(
        {"latencies_ms": latencies[:SAMPLE_LIMIT], "count": len(latencies), "elapsed_s": elapsed, "failures": failures}
    )


# -- the desk's order path ------------------------------------------------------------------------------


async def orders(
    url: str, strategy_id: str, symbol: str, n: int, concurrency: int, warmup: int, prefix: str, fill_timeout: float
) -> None:
    """Orders the way a strategy sends them: ``request`` to desk.order.submit.<id> from its own inbox
    (the router answers nowhere else), fills on desk.exec.<id>."""
    from desk.bus import codec, confine, subjects
    from desk.bus.request import request
    from desk.v1 import common_pb2, executions_pb2, orders_pb2

    nc = await _connect(url, confine.strategy_inbox_prefix(strategy_id))
    sent: dict[str, int] = {}
    fill_ms: list[float] = []
    last_fill = 0.0
    all_filled = asyncio.Event()
    expected = n

    async def on_exec(msg: Msg) -> None:
        nonlocal last_fill
        report = codec.decode(msg.data, executions_pb2.ExecutionReport, msg.headers)
        if report.exec_type != executions_pb2.EXEC_TYPE_FILL:
            return
        t0 = sent.pop(report.client_order_id, None)
        if t0 is None:
            return
        last_fill = time.perf_counter()
        if report.client_order_id.startswith(prefix + "m"):
            fill_ms.append((time.perf_counter_ns() - t0) / 1e6)
            if len(fill_ms) >= expected:
                all_filled.set()

    await nc.subscribe(subjects.execution(strategy_id), cb=on_exec, pending_msgs_limit=1_000_000)
    await nc.flush()
    subject = subjects.order_submit(strategy_id)
    rejected: list[str] = []

    def make(tag: str) -> Any:
        async def one(i: int) -> bool:
            coid = f"{prefix}{tag}{i}"
            req = orders_pb2.OrderRequest(
                strategy_id=strategy_id,
                client_order_id=coid,
                symbol=symbol,
                side=common_pb2.SIDE_BUY,
                type=common_pb2.ORDER_TYPE_MARKET,
                time_in_force=common_pb2.TIME_IN_FORCE_DAY,
                qty="1",
            )
            sent[coid] = time.perf_counter_ns()
            ack = await request(nc, subject, req, orders_pb2.OrderAck, timeout=10)
            if not ack.accepted and len(rejected) < 5:
                rejected.append(f"{orders_pb2.RejectReason.Name(ack.reason)}: {ack.message}")
            return bool(ack.accepted)

        return one

    await _closed_loop(warmup, 1, make("w"))
    start = time.perf_counter()
    latencies, elapsed, failures = await _closed_loop(n, concurrency, make("m"))
    expected = len(latencies)
    if len(fill_ms) < expected:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_filled.wait(), fill_timeout)
    fills_elapsed = (last_fill - start) if fill_ms else None
    await nc.drain()
    _emit(
        {
            "latencies_ms": latencies[:SAMPLE_LIMIT],
            "fill_ms": fill_ms[:SAMPLE_LIMIT],
            "count": len(latencies),
            "fills": len(fill_ms),
            "elapsed_s": elapsed,
            "fills_elapsed_s": fills_elapsed,
            "failures": failures,
            "rejected": rejected,
        }
    )


# -- fan-out -----------------------------------------------------------------------------------------------


async def subscriber(url: str, subject: str, decode: bool) -> None:
    """Counts what arrives on ``subject``; latency from the bar's end time (desk) or a stamped ns (bare)."""
    from desk.bus import codec
    from desk.v1 import marketdata_pb2

    nc = await _connect(url)
    count = 0
    first = last = 0.0
    lat_ms: list[float] = []

    async def on_msg(msg: Msg) -> None:
        nonlocal count, first, last
        now = time.time_ns()
        if decode:
            bar = codec.decode(msg.data, marketdata_pb2.Bar, msg.headers)
            sent = bar.start_ns + bar.interval_ns
        else:
            sent = struct.unpack_from("<q", msg.data)[0]
        if count == 0:
            first = time.perf_counter()
        last = time.perf_counter()
        count += 1
        if count % 7 == 0 and len(lat_ms) < SAMPLE_LIMIT:
            lat_ms.append((now - sent) / 1e6)

    await nc.subscribe(subject, cb=on_msg, pending_msgs_limit=200_000)
    await nc.flush()
    _ready()
    await _until_term()
    errors = list(getattr(nc, "_bench_errors", []))
    with contextlib.suppress(Exception):
        await nc.close()
    _emit({"count": count, "first": first, "last": last, "latency_ms": lat_ms, "errors": len(errors)})


async def publisher(
    url: str, subject_prefix: str, symbols: int, size: int, rate: float, duration: float, desk: bool = False
) -> None:
    """A feed at ``rate`` msg/s over ``symbols`` subjects for ``duration`` s.

    ``desk``: codec-encoded ``Bar`` s with Desk-Type headers, the way marketdata publishes them, whose
    ``start_ns + interval_ns`` is the publish time; else raw ``size``-byte bodies with the ns stamp first.
    """
    from desk.bus import codec
    from desk.v1 import marketdata_pb2

    nc = await _connect(url)
    pad = b"x" * max(0, size - 8)
    names = [f"S{i:03d}" for i in range(symbols)]
    subjects_ = [f"{subject_prefix}.{name}" for name in names]
    interval_ns = 60_000_000_000
    sent = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < duration:
        due = sent / rate if rate > 0 else 0
        if due > elapsed:
            await asyncio.sleep(due - elapsed)
        for name, subject in zip(names, subjects_, strict=True):
            now = time.time_ns()
            if desk:
                bar = marketdata_pb2.Bar(
                    symbol=name,
                    open="100.00",
                    high="100.10",
                    low="99.90",
                    close="100.05",
                    volume="12345",
                    start_ns=now - interval_ns,
                    interval_ns=interval_ns,
                    vwap="100.01",
                    trade_count=42,
                    source="bench",
                )
                body, headers = codec.encode(bar)
                await nc.publish(subject, body, headers=headers)
            else:
                await nc.publish(subject, struct.pack("<q", now) + pad)
        sent += symbols
        if sent % (symbols * 20) == 0:
            await nc.flush()
    await nc.flush()
    await nc.drain()
    _emit({"sent": sent, "elapsed_s": time.perf_counter() - start})


ROLES: dict[str, Callable[..., Coroutine[Any, Any, None]]] = {
    "echo": echo,
    "relay": relay,
    "requester": requester,
    "orders": orders,
    "subscriber": subscriber,
    "publisher": publisher,
}


def main() -> None:
    role, args = sys.argv[1], json.loads(sys.argv[2])
    loop_factory, _ = event_loop_factory(os.environ.get("EVENT_LOOP", "auto"))
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(ROLES[role](**args))


if __name__ == "__main__":
    main()
