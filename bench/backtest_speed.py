"""How fast the SDK's backtester runs on the desk's engine: bars/s and peak RSS per run size.

    .venv/bin/python -m bench.backtest_speed [10000 100000 1000000]

Each size runs in its own subprocess (peak RSS = VmHWM, bench.peers.peer_cli.peak_rss_mb):
an MA crossover (10/30, one symbol, 10 shares) over a seeded random walk streamed from a generator
(the bars are not held in memory, as ``desk backtest`` streams its cache). The generator alone is
timed too, so the backtester's own rate can be told from the cost of making the bars.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from decimal import Decimal

from bench.peers.peer_cli import peak_rss_mb
from strategy_sdk import Bar, Strategy


class FastCrossover(Strategy):
    """SMA 10/30 crossover with running sums: buy 10 on a golden cross, sell all on a death cross."""

    def on_start(self) -> None:
        self.window: deque[Decimal] = deque()
        self.fast_sum = self.slow_sum = Decimal(0)
        self.above: bool | None = None

    async def on_bar(self, bar: Bar) -> None:
        w = self.window
        w.append(bar.close)
        self.slow_sum += bar.close
        self.fast_sum += bar.close
        if len(w) > 10:
            self.fast_sum -= w[-11]
        if len(w) > 30:
            self.slow_sum -= w.popleft()
        if len(w) < 30:
            return
        above = self.fast_sum * 3 > self.slow_sum  # fast/10 > slow/30
        was, self.above = self.above, above
        if was is None or above == was:
            return
        held = self.position(bar.symbol)
        if above and held == 0:
            await self.buy(bar.symbol, 10)
        elif not above and held > 0:
            await self.sell(bar.symbol, held)


def bars(count: int, seed: int = 7) -> Iterator[Bar]:
    """A random walk in cents, made into Bars one at a time."""
    rng = random.Random(seed)
    cents = 10_000
    t0 = 1_767_000_000 * 1_000_000_000
    volume = Decimal(500)
    for i in range(count):
        open_ = cents
        cents = max(100, cents + rng.randint(-30, 30))
        hi, lo = max(open_, cents) + 2, min(open_, cents) - 2
        yield Bar(
            "AAPL",
            Decimal(open_).scaleb(-2),
            Decimal(hi).scaleb(-2),
            Decimal(lo).scaleb(-2),
            Decimal(cents).scaleb(-2),
            volume,
            t0 + i * 60_000_000_000,
            60_000_000_000,
        )


def one(count: int, which: str) -> dict[str, float]:

    from strategy_sdk.testing import run_backtest

    start = time.perf_counter()
    if which == "generator":
        for _ in bars(count):
            pass
        result = None
    elif which == "example":  # strategies/ma_crossover, params 10/30
        from pathlib import Path

        from strategy_sdk.loading import load_strategy_class

        cls = load_strategy_class(Path("strategies/ma_crossover/strategy.py"), "bench_ma")
        config = {"symbols": ["AAPL"], "params": {"fast": 10, "slow": 30, "qty": 10}}
        result = run_backtest(cls(), bars(count), config=config)
    else:
        result = run_backtest(FastCrossover(), bars(count))
    seconds = time.perf_counter() - start
    rss_mb = peak_rss_mb()
    out = {
        "bars": count,
        "seconds": round(seconds, 3),
        "bars_per_s": round(count / seconds),
        "peak_rss_mb": round(rss_mb, 1),
    }
    if result is not None:
        out.update(orders=len(result.orders), fills=len(result.fills), final_equity=float(result.final_equity))
    return out


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--one":
        print(json.dumps(one(int(argv[1]), argv[2])))
        return
    sizes = [int(a) for a in argv] or [10_000, 100_000, 1_000_000]
    for which in ("generator", "fast", "example"):
        for count in sizes:
            run = subprocess.run(
                [sys.executable, "-m", "bench.backtest_speed", "--one", str(count), which],
                capture_output=True,
                text=True,
                check=True,
            )
            print(which, run.stdout.strip(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
