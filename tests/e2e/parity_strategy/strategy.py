"""The parity test's strategy (tests/e2e/test_backtest_parity.py): deterministic, trades often, with
every kind of order the comparison should cover.

Per symbol, a fast and a slow moving average of closes. On a golden cross with nothing held or
pending it buys ``qty``, alternately at market and with a marketable limit (1% over the close); the
sim's liquidity (a quarter of the tick's 100-share trade) fills part at once and the rest at the next
bar's open. While the fast average is below the slow one and something is held, it offers the whole
position with a DAY limit ``exit_premium`` over the close: it fills on the next bar if that bar's high
reaches it, else it expires at the next date and is offered again. Client order ids are
``<symbol>-<n>``, so the backtest and the desk name the same orders the same way.

``cooldown``: after an order on a symbol, its next ``cooldown - 1`` bars place none. With 2 (the
config's), every order of a symbol is settled (filled, or its DAY remainder expired) by the tick of
the next bar, so what the strategy decides never depends on whether the reports of the current bar's
tick reached it before or after its ``on_bar`` (the backtester delivers them before, the desk after;
the parity test's xfail case uses 0 to show that difference).
"""

from __future__ import annotations

from collections import deque
from decimal import Decimal

from strategy_sdk import Bar, Strategy

CENT = Decimal("0.01")


class Parity(Strategy):
    def on_start(self) -> None:
        params = self.config.get("params", {})
        self.fast = int(params.get("fast", 2))
        self.slow = int(params.get("slow", 5))
        self.qty = Decimal(str(params.get("qty", 40)))
        self.exit_premium = Decimal(str(params.get("exit_premium", "0.002")))
        self.closes: dict[str, deque[Decimal]] = {}
        self.fast_above: dict[str, bool] = {}
        self.cooldown = int(params.get("cooldown", 2))
        self.sent: dict[str, int] = {}
        self.bars: dict[str, int] = {}
        self.last_order: dict[str, int] = {}
        self.entries = 0

    def _next_id(self, symbol: str) -> str:
        self.last_order[symbol] = self.bars[symbol]
        self.sent[symbol] = self.sent.get(symbol, 0) + 1
        return f"{symbol}-{self.sent[symbol]}"

    async def on_bar(self, bar: Bar) -> None:
        self.bars[bar.symbol] = self.bars.get(bar.symbol, 0) + 1
        closes = self.closes.setdefault(bar.symbol, deque(maxlen=self.slow))
        closes.append(bar.close)
        if len(closes) < self.slow:
            return
        fast_ma = sum(list(closes)[-self.fast :], Decimal(0)) / self.fast
        slow_ma = sum(closes, Decimal(0)) / self.slow
        above = fast_ma > slow_ma
        was_above = self.fast_above.get(bar.symbol)
        self.fast_above[bar.symbol] = above
        pending = any(o.symbol == bar.symbol for o in self.open_orders.values())
        held = self.position(bar.symbol)
        recent = self.bars[bar.symbol] - self.last_order.get(bar.symbol, -self.cooldown) < self.cooldown
        if pending or recent:
            return
        if above and was_above is False and held == 0:
            self.entries += 1
            if self.entries % 2:
                result = await self.buy(bar.symbol, self.qty, client_order_id=self._next_id(bar.symbol))
            else:
                limit = (bar.close * Decimal("1.01")).quantize(CENT)
                result = await self.buy(
                    bar.symbol, self.qty, type="limit", limit_price=limit, client_order_id=self._next_id(bar.symbol)
                )
            self.log.info("entry %s at %s -> %s %s", bar.symbol, bar.close, result.accepted, result.reason)
        elif not above and held > 0:
            limit = (bar.close * (1 + self.exit_premium)).quantize(CENT)
            result = await self.sell(
                bar.symbol,
                held,
                type="limit",
                limit_price=limit,
                time_in_force="day",
                client_order_id=self._next_id(bar.symbol),
            )
            self.log.info("exit offer %s %s at %s -> %s %s", bar.symbol, held, limit, result.accepted, result.reason)
