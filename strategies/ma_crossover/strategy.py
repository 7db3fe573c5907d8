"""Moving-average crossover: buy on a golden cross, sell the position on a death cross.

Per symbol, a fast and a slow simple moving average of closes (3 and 8 bars by default, short
enough to trade within a minute of a one-bar-per-second feed). When the fast average crosses
above the slow one and nothing is held, buy ``qty`` at market; when it crosses below, sell what
is held. Parameters come from config.json ``params``.
"""

from __future__ import annotations

from collections import deque
from decimal import Decimal

from strategy_sdk import Bar, Fill, Strategy


class MovingAverageCrossover(Strategy):
    def on_start(self) -> None:
        params = self.config.get("params", {})
        self.fast = int(params.get("fast", 3))
        self.slow = int(params.get("slow", 8))
        self.qty = Decimal(str(params.get("qty", 10)))
        if not 0 < self.fast < self.slow:
            raise ValueError(f"need 0 < fast < slow, got fast={self.fast} slow={self.slow}")
        self.closes: dict[str, deque[Decimal]] = {}
        self.fast_above: dict[str, bool] = {}
        self.log.info("ma_crossover ready: fast=%d slow=%d qty=%s", self.fast, self.slow, self.qty)

    async def on_bar(self, bar: Bar) -> None:
        closes = self.closes.setdefault(bar.symbol, deque(maxlen=self.slow))
        closes.append(bar.close)
        if len(closes) < self.slow:
            return
        fast_ma = sum(list(closes)[-self.fast :], Decimal(0)) / self.fast
        slow_ma = sum(closes, Decimal(0)) / self.slow
        above = fast_ma > slow_ma
        was_above = self.fast_above.get(bar.symbol)
        self.fast_above[bar.symbol] = above
        if was_above is None or above == was_above:
            return
        pending = any(o.symbol == bar.symbol for o in self.open_orders.values())
        held = self.position(bar.symbol)
        if above and held == 0 and not pending:
            result = await self.buy(bar.symbol, self.qty)
            self.log.info(
                "golden cross %s at %s: buy %s -> %s %s",
                bar.symbol,
                bar.close,
                self.qty,
                "accepted" if result.accepted else result.reason,
                result.message,
            )
        elif not above and held > 0 and not pending:
            result = await self.sell(bar.symbol, held)
            self.log.info(
                "death cross %s at %s: sell %s -> %s %s",
                bar.symbol,
                bar.close,
                held,
                "accepted" if result.accepted else result.reason,
                result.message,
            )

    def on_fill(self, fill: Fill) -> None:
        self.log.info(
            "filled %s %s %s @ %s; position %s, cash %s",
            fill.side,
            fill.qty,
            fill.symbol,
            fill.price,
            self.position(fill.symbol),
            self.cash,
        )
