"""Market-data fan-out: bars delivered to N subscribing processes, and the marketdata service's own rate.

Two measurements, because the synthetic feed cannot offer enough bars to load 50 subscribers:

* the fan-out path: codec-encoded ``Bar`` s with Desk-Type headers (exactly what marketdata publishes)
  at a fixed rate, decoded with ``codec.decode`` in each of N subscriber processes (what the SDK
  does); bare: raw bodies of the same size at the same rate, not decoded;
* the feed: bars/s the real ``python -m services.marketdata`` (synthetic, MD_INTERVAL tiny) publishes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.harness import Desk, Worker
from bench.stats import Figure, Target, summarize

SECTION = "fan-out"
BAR_BYTES = 110  # about one encoded Bar


async def _measure(
    desk: Desk, subject: str, decode: bool, n: int, duration: float, feed: Worker | None
) -> dict[str, Any]:
    subs = [Worker("subscriber", {"url": desk.url, "subject": subject, "decode": decode}) for _ in range(n)]
    await asyncio.gather(*(w.start(wait_ready=True, timeout=120) for w in subs))
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
        "delivered": total,
        "window_s": window,
        "rate": total / window if window else 0.0,
        "latency": summarize(latencies).__dict__ if latencies else None,
        "client_errors": sum(r["errors"] for r in results),
    }


async def run(
    counts: tuple[int, ...], duration: float, symbols: int, rate: float
) -> tuple[list[Figure], dict[str, Any]]:
    figures: list[Figure] = []
    raw: dict[str, Any] = {}
    for n in counts:
        results: dict[str, dict[str, Any]] = {}
        for mode in ("bare", "desk"):
            async with Desk(services=()) as desk:
                feed = Worker(
                    "publisher",
                    {
                        "url": desk.url,
                        "subject_prefix": "md.bar",
                        "symbols": symbols,
                        "size": BAR_BYTES,
                        "rate": rate,
                        "duration": duration,
                        "desk": mode == "desk",
                    },
                )
                results[mode] = await _measure(desk, "md.bar.>", mode == "desk", n, duration, feed)
        raw[str(n)] = results
        d, b = results["desk"], results["bare"]
        figures.append(
            Figure(
                SECTION,
                f"delivered bars/s to {n} subscribing process(es)",
                "msg/s",
                d["rate"],
                b["rate"],
                Target("min", 50000) if n == max(counts) else None,
                note=f"{rate:,.0f} bars/s offered to each subscriber; desk: Bar + Desk-Type headers, decoded; "
                "bare: raw bytes of the same size",
            )
        )
        for pct in ("p50", "p99"):
            figures.append(
                Figure(
                    SECTION,
                    f"delivery latency {pct}, {n} process(es)",
                    "ms",
                    d["latency"][pct] if d["latency"] else None,
                    b["latency"][pct] if b["latency"] else None,
                    note="publish -> decoded in the subscriber",
                )
            )
    # The real service: as fast as its timer lets it (MD_INTERVAL tiny), one subscriber counting.
    names = ",".join(f"S{i:03d}" for i in range(symbols))
    env = {"MD_SYMBOLS": names, "MD_INTERVAL": "0.001", "MD_FEED": "synthetic"}
    async with Desk(services=("marketdata",), env=env) as desk:
        feed_result = await _measure(desk, "md.bar.>", True, 1, duration, None)
    raw["marketdata_service"] = feed_result
    figures.append(
        Figure(
            SECTION,
            "bars/s the marketdata service publishes (synthetic, flat out)",
            "msg/s",
            feed_result["rate"],
            note=f"{symbols} symbols, MD_INTERVAL=0.001; each bar also sends a quote, a trade and a DESK_PRICES put",
        )
    )
    return figures, raw
