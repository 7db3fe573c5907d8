"""Market-data fan-out: bars from the real marketdata service to N subscribing processes."""

from __future__ import annotations

import asyncio
from typing import Any

from bench.harness import Desk, Worker
from bench.stats import Figure, Target, summarize

SECTION = "fan-out"
BAR_BYTES = 120  # about one encoded synthetic Bar


async def _measure(desk: Desk, subject: str, decode: bool, n: int, duration: float, feed: Worker | None) -> dict[str, Any]:
    subs = [Worker("subscriber", {"url": desk.url, "subject": subject, "decode": decode}) for _ in range(n)]
    await asyncio.gather(*(w.start(wait_ready=True, timeout=60) for w in subs))
    if feed is not None:
        await feed.start()
        await feed.result(timeout=duration + 60)
    else:
        await asyncio.sleep(duration)  # the marketdata service publishes on its own timer for this long
    results = [r for r in await asyncio.gather(*(w.stop() for w in subs)) if r]
    total = sum(r["count"] for r in results)
    active = [r for r in results if r["count"]]
    window = (max(r["last"] for r in active) - min(r["first"] for r in active)) if active else 0.0
    latencies = [x for r in results for x in r["latency_ms"]]
    return {
        "delivered": total, "window_s": window, "rate": total / window if window else 0.0,
        "latency": summarize(latencies).__dict__ if latencies else None,
        "client_errors": sum(r["errors"] for r in results),
    }


async def run(counts: tuple[int, ...], duration: float, symbols: int, interval: float) -> tuple[list[Figure], dict[int, Any]]:
    figures: list[Figure] = []
    raw: dict[int, Any] = {}
    names = ",".join(f"S{i:03d}" for i in range(symbols))
    bar_rate = symbols / interval
    for n in counts:
        async with Desk(services=()) as bare:
            feed = Worker("publisher", {
                "url": bare.url, "subject_prefix": "bare.bar", "symbols": symbols, "size": BAR_BYTES,
                "rate": bar_rate, "duration": duration,
            })
            bare_result = await _measure(bare, "bare.bar.>", False, n, duration, feed)
        env = {"MD_SYMBOLS": names, "MD_INTERVAL": str(interval), "MD_FEED": "synthetic"}
        async with Desk(services=("marketdata",), env=env) as desk:
            desk_result = await _measure(desk, "md.bar.>", True, n, duration, None)
        raw[n] = {"desk": desk_result, "bare": bare_result}
        lat = desk_result["latency"]
        blat = bare_result["latency"]
        figures.append(Figure(
            SECTION, f"delivered bars/s to {n} strategy process(es)", "msg/s", desk_result["rate"], bare_result["rate"],
            Target("min", 50000),
            note=f"feed offers {bar_rate:,.0f} bars/s x {n} subscribers; bare: raw {BAR_BYTES}-byte publishes at the same rate",
        ))
        figures.append(Figure(
            SECTION, f"delivery latency p50, {n} process(es)", "ms", lat["p50"] if lat else None,
            blat["p50"] if blat else None, note="desk: from the bar's end time (includes feed timer lag)",
        ))
        figures.append(Figure(
            SECTION, f"delivery latency p99, {n} process(es)", "ms", lat["p99"] if lat else None,
            blat["p99"] if blat else None,
        ))
    return figures, raw
