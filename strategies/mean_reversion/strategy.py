"""Mean reversion with limit orders.

Per symbol, the z-score of the close against a short rolling mean: below ``-entry_z`` with
nothing held, bid a little under the price (a LIMIT buy); once held, offer a little above the
mean. Orders not filled within ``max_bars`` bars are cancelled. Parameters come from config.json
``params``; fills and order updates are followed with ``on_fill`` / ``on_order_update``.
"""

from __future__ import annotations

from collections import deque
from decimal import Decimal

from strategy_sdk import Bar, Fill, OrderUpdate, Strategy

CENT = Decimal("0.01")


class MeanReversion(Strategy):
    def on_start(self) -> None:
        params = self.config.get("params", {})
        self.window = int(params.get("window", 10))
        self.entry_z = Decimal(str(params.get("entry_z", "1.0")))
        self.offset = Decimal(str(params.get("offset_bps", 5))) / Decimal(10000)
        self.max_bars = int(params.get("max_bars", 5))
        self.qty = Decimal(str(params.get("qty", 10)))
        self.closes: dict[str, deque[Decimal]] = {}
        self.bar_count: dict[str, int] = {}
        self.placed_at: dict[str, tuple[str, int]] = {}  # client order id -> (symbol, bar number)
        self.cancelling: set[str] = set()

    async def on_bar(self, bar: Bar) -> None:
        n = self.bar_count[bar.symbol] = self.bar_count.get(bar.symbol, 0) + 1
        await self.cancel_stale(bar.symbol, n)
        closes = self.closes.setdefault(bar.symbol, deque(maxlen=self.window))
        closes.append(bar.close)
        if len(closes) < self.window:
            return
        mean = sum(closes, Decimal(0)) / len(closes)
        variance = sum(((c - mean) ** 2 for c in closes), Decimal(0)) / len(closes)
        std = variance.sqrt()
        if std == 0:
            return
        z = (bar.close - mean) / std
        working = [sym for sym, _ in self.placed_at.values()] + [o.symbol for o in self.open_orders.values()]
        if bar.symbol in working:
            return  # one working order per symbol
        held = self.position(bar.symbol)
        if held == 0 and z <= -self.entry_z:
            price = (bar.close * (1 - self.offset)).quantize(CENT)
            result = await self.buy(bar.symbol, self.qty, type="limit", limit_price=price, time_in_force="day")
        elif held > 0 and z >= 0:
            price = max(mean, bar.close * (1 + self.offset)).quantize(CENT)
            result = await self.sell(bar.symbol, held, type="limit", limit_price=price, time_in_force="day")
        else:
            return
        if result.accepted:
            self.placed_at[result.client_order_id] = (bar.symbol, n)
            self.log.info("z=%.2f %s limit %s -> %s", z, bar.symbol, price, result.client_order_id)
        else:
            self.log.warning("order refused on %s: %s %s", bar.symbol, result.reason, result.message)

    async def cancel_stale(self, symbol: str, n: int) -> None:
        for cid, (sym, placed) in list(self.placed_at.items()):
            if sym == symbol and n - placed >= self.max_bars and cid not in self.cancelling:
                self.cancelling.add(cid)
                result = await self.cancel(cid)
                if not result.accepted:
                    self.log.info("cancel of %s refused: %s", cid, result.reason)
                    self.placed_at.pop(cid, None)
                    self.cancelling.discard(cid)

    def on_fill(self, fill: Fill) -> None:
        self.log.info(
            "filled %s %s %s @ %s; position %s",
            fill.side,
            fill.qty,
            fill.symbol,
            fill.price,
            self.position(fill.symbol),
        )

    def on_order_update(self, update: OrderUpdate) -> None:
        if update.is_final:
            self.placed_at.pop(update.client_order_id, None)
            self.cancelling.discard(update.client_order_id)
