"""The bench's MA crossover on backtrader.

    bench/.venv-peers/bin/python bench/peers/bt_crossover.py --data S00.csv [S01.csv ...]

Each file is one symbol in the desk's CSV (``timestamp,symbol,open,high,low,close,volume``, ISO
timestamps, 1-minute bars), read with ``bt.feeds.GenericCSVData`` (one data feed per file). The strategy is
backtrader's own idiom: ``SMA(10)`` and ``SMA(30)`` of the close and a ``CrossOver`` of the two per feed; on a
cross up while the feed has no position, ``buy(size=10)``; on a cross down while long, ``close()``. The
broker is the default one (no cheat-on-open/close: a market order fills at the next bar's open), cash
1,000,000, no commission. Cerebro runs with its defaults (``preload`` and ``runonce``: indicators are
computed vectorised, ``next`` per bar) except ``stdstats=False`` (no plotting observers: we do not plot).

Prints one JSON line: engine, bars, seconds (wall: reading the CSVs, building cerebro and running it; the
framework's import is ``import_s``, not in ``seconds``), bars_per_s, peak_rss_mb (VmHWM), orders
(completed), buys, sells, round_trips (= sells). An order sent on the last bar never fills (there is no next
bar): such an order is counted in ``unfilled``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from peer_cli import main, peak_rss_mb  # bench/peers/ is the script's own folder


def run(files: list[str], fast: int = 10, slow: int = 30, size: int = 10) -> dict[str, Any]:
    t_import = time.perf_counter()
    import backtrader as bt

    class SmaCross(bt.Strategy):
        params = (("fast", 10), ("slow", 30), ("size", 10))

        def __init__(self) -> None:
            self.crossovers = [
                bt.ind.CrossOver(bt.ind.SMA(d.close, period=self.p.fast), bt.ind.SMA(d.close, period=self.p.slow))
                for d in self.datas
            ]
            self.buys = self.sells = 0

        def next(self) -> None:
            for data, crossover in zip(self.datas, self.crossovers, strict=True):
                position = self.getposition(data).size
                if not position:
                    if crossover[0] > 0:
                        self.buy(data=data, size=self.p.size)
                elif crossover[0] < 0:
                    self.close(data=data)

        def notify_order(self, order: Any) -> None:
            if order.status == order.Completed:
                if order.isbuy():
                    self.buys += 1
                else:
                    self.sells += 1

    import_s = time.perf_counter() - t_import

    start = time.perf_counter()
    cerebro = bt.Cerebro(stdstats=False)
    for file in files:
        data = bt.feeds.GenericCSVData(
            dataname=file,
            dtformat="%Y-%m-%dT%H:%M:%SZ",
            datetime=0,
            time=-1,
            open=2,
            high=3,
            low=4,
            close=5,
            volume=6,
            openinterest=-1,
            timeframe=bt.TimeFrame.Minutes,
            compression=1,
        )
        cerebro.adddata(data)
    cerebro.addstrategy(SmaCross, fast=fast, slow=slow, size=size)
    cerebro.broker.setcash(1_000_000.0)
    strategy = cerebro.run()[0]
    seconds = time.perf_counter() - start
    count = sum(len(d) for d in strategy.datas)
    buys, sells = strategy.buys, strategy.sells
    unfilled = sum(1 for o in strategy.broker.orders if o.alive())
    from importlib.metadata import version

    return {
        "engine": "backtrader",
        "version": version("backtrader"),
        "bars": count,
        "symbols": len(files),
        "seconds": round(seconds, 3),
        "import_s": round(import_s, 3),
        "bars_per_s": round(count / seconds),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "orders": buys + sells,
        "buys": buys,
        "sells": sells,
        "round_trips": sells,
        "unfilled": unfilled,
    }


if __name__ == "__main__":
    sys.exit(main(run, __doc__ or ""))
