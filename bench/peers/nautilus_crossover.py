"""The bench's MA crossover on NautilusTrader (low-level ``BacktestEngine`` API).

    bench/.venv-peers/bin/python bench/peers/nautilus_crossover.py --data S00.csv [S01.csv ...] [--oms hedging]

Each file is one symbol in the desk's CSV (``timestamp,symbol,open,high,low,close,volume``, ISO
timestamps, 1-minute bars). Per file: ``pandas.read_csv`` -> ``BarDataWrangler`` -> ``Bar`` objects for an
``Equity`` on a simulated ``XNAS`` (cash account, 1,000,000 USD; ``--oms netting`` (the default) or
``hedging``). One strategy per instrument
(the Nautilus pattern: a config naming the instrument and bar type): ``SimpleMovingAverage`` 10 and 30
registered for the bars; when the fast average goes above the slow one and the portfolio is flat, a market
buy of 10; when it goes below while long, ``close_all_positions``. Bars drive the matching engine
(``bar_execution``, the default), so a market order fills on the bar it was sent on.

Prints one JSON line: engine, bars, seconds (wall: reading the CSVs, building the engine and running it;
the framework's import is ``import_s``, not in ``seconds``), bars_per_s, peak_rss_mb (VmHWM),
orders (filled), buys, sells, round_trips (= sells: each closes a long opened by a buy).
Nautilus is given its faster settings, the trades being the same: logging bypassed (``bypass_logging``;
at INFO it logs every order event, and even at ERROR it costs ~17 % at 100k bars), ``run_analysis=False``.
OMS: NETTING (one position per instrument, as the desk's books: one position per strategy and symbol) is
the like-for-like configuration and the default; under it Nautilus reopens the one position id on every
entry and snapshots it each time (a pickle of the position with all its fills so far: quadratic), which
here made 1M bars take 116 s against 44 s under HEDGING (100k: 4.9 s against 3.3 s). Each long is opened
flat and closed whole, so the two give the same orders and round trips; the bench runs both. The JSON
line names the OMS (``oms``).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from peer_cli import main, peak_rss_mb  # bench/peers/ is the script's own folder

PRICE_PRECISION = 4  # the bench's files have 4 decimals (see bench/backtest.py: exact ties are then rare)


OMS_CHOICES = ["netting", "hedging"]


def _crossover_strategy() -> tuple[Any, Any]:
    """The strategy's config and class (defined here: Nautilus is imported inside the timed import)."""
    from decimal import Decimal

    from nautilus_trader.config import StrategyConfig
    from nautilus_trader.indicators import SimpleMovingAverage
    from nautilus_trader.model.data import Bar, BarType
    from nautilus_trader.model.enums import OrderSide
    from nautilus_trader.model.events import OrderFilled
    from nautilus_trader.model.identifiers import InstrumentId
    from nautilus_trader.trading.strategy import Strategy

    class SmaCrossConfig(StrategyConfig, frozen=True):
        instrument_id: InstrumentId
        bar_type: BarType
        trade_size: Decimal
        fast_period: int = 10
        slow_period: int = 30

    class SmaCross(Strategy):
        def __init__(self, config: SmaCrossConfig) -> None:
            super().__init__(config)
            self.fast = SimpleMovingAverage(config.fast_period)
            self.slow = SimpleMovingAverage(config.slow_period)
            self.above: bool | None = None
            self.buys = self.sells = 0

        def on_start(self) -> None:
            self.instrument = self.cache.instrument(self.config.instrument_id)
            self.register_indicator_for_bars(self.config.bar_type, self.fast)
            self.register_indicator_for_bars(self.config.bar_type, self.slow)
            self.subscribe_bars(self.config.bar_type)

        def on_bar(self, bar: Bar) -> None:
            if not self.indicators_initialized():
                return
            above = self.fast.value > self.slow.value
            was, self.above = self.above, above
            if was is None or above == was:
                return
            instrument_id = self.config.instrument_id
            if above and self.portfolio.is_flat(instrument_id):
                order = self.order_factory.market(
                    instrument_id, OrderSide.BUY, self.instrument.make_qty(self.config.trade_size)
                )
                self.submit_order(order)
            elif not above and self.portfolio.is_net_long(instrument_id):
                self.close_all_positions(instrument_id)

        def on_order_filled(self, event: OrderFilled) -> None:
            if event.order_side == OrderSide.BUY:
                self.buys += 1
            else:
                self.sells += 1

    return SmaCrossConfig, SmaCross


def _add_symbol(
    engine: Any, venue: Any, file: str, config_type: Any, strategy_type: Any, fast: int, slow: int, size: int
) -> tuple[Any, int]:
    """One file's symbol: its instrument, its bars and its strategy on ``engine``; (the strategy, bars)."""
    from decimal import Decimal

    import pandas as pd
    from nautilus_trader.model.currencies import USD
    from nautilus_trader.model.data import BarType
    from nautilus_trader.model.identifiers import InstrumentId, Symbol
    from nautilus_trader.model.instruments import Equity
    from nautilus_trader.model.objects import Price, Quantity
    from nautilus_trader.persistence.wranglers import BarDataWrangler

    frame = pd.read_csv(file, index_col="timestamp", parse_dates=["timestamp"])
    symbol = str(frame["symbol"].iloc[0])
    instrument = Equity(
        instrument_id=InstrumentId(Symbol(symbol), venue),
        raw_symbol=Symbol(symbol),
        currency=USD,
        price_precision=PRICE_PRECISION,
        price_increment=Price(10**-PRICE_PRECISION, PRICE_PRECISION),
        lot_size=Quantity.from_int(1),
        ts_event=0,
        ts_init=0,
    )
    engine.add_instrument(instrument)
    bar_type = BarType.from_str(f"{instrument.id}-1-MINUTE-LAST-EXTERNAL")
    bars = BarDataWrangler(bar_type, instrument).process(frame[["open", "high", "low", "close", "volume"]])
    engine.add_data(bars)
    config = config_type(
        instrument_id=instrument.id, bar_type=bar_type, trade_size=Decimal(size), fast_period=fast, slow_period=slow
    )
    strategy = strategy_type(config)
    engine.add_strategy(strategy)
    return strategy, len(bars)


def run(files: list[str], fast: int = 10, slow: int = 30, size: int = 10, oms: str = "netting") -> dict[str, Any]:
    t_import = time.perf_counter()
    import pandas  # noqa: F401 - imported inside the timed import, as the framework is
    from nautilus_trader.backtest.config import BacktestEngineConfig
    from nautilus_trader.backtest.engine import BacktestEngine
    from nautilus_trader.config import LoggingConfig
    from nautilus_trader.model.currencies import USD
    from nautilus_trader.model.enums import AccountType, OmsType
    from nautilus_trader.model.identifiers import TraderId, Venue
    from nautilus_trader.model.objects import Money
    from nautilus_trader.persistence.wranglers import BarDataWrangler  # noqa: F401 - timed with the import

    SmaCrossConfig, SmaCross = _crossover_strategy()

    import_s = time.perf_counter() - t_import

    start = time.perf_counter()
    engine = BacktestEngine(
        config=BacktestEngineConfig(
            trader_id=TraderId("BENCH-001"),
            logging=LoggingConfig(log_level="ERROR", bypass_logging=True),
            run_analysis=False,
        )
    )
    venue = Venue("XNAS")
    engine.add_venue(
        venue=venue,
        oms_type=OmsType.NETTING if oms == "netting" else OmsType.HEDGING,
        account_type=AccountType.CASH,
        base_currency=USD,
        starting_balances=[Money(1_000_000, USD)],
    )
    strategies = []
    count = 0
    for file in files:
        strategy, bars = _add_symbol(engine, venue, file, SmaCrossConfig, SmaCross, fast, slow, size)
        strategies.append(strategy)
        count += bars
    loaded_s = time.perf_counter() - start
    engine.run()
    seconds = time.perf_counter() - start
    buys = sum(s.buys for s in strategies)
    sells = sum(s.sells for s in strategies)
    engine.dispose()
    from importlib.metadata import version

    return {
        "engine": "nautilus_trader",
        "version": version("nautilus_trader"),
        "oms": oms,
        "bars": count,
        "symbols": len(files),
        "seconds": round(seconds, 3),
        "load_s": round(loaded_s, 3),
        "import_s": round(import_s, 3),
        "bars_per_s": round(count / seconds),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "orders": buys + sells,
        "buys": buys,
        "sells": sells,
        "round_trips": sells,
    }


if __name__ == "__main__":
    sys.exit(main(run, __doc__ or "", choices={"oms": OMS_CHOICES}))
