"""Pure book-keeping: positions at average cost, realized P&L, fees and cash. No I/O.

Everything is :class:`~decimal.Decimal`; a float never enters. Two choices worth knowing:

* **Cost basis, not average cost, is the state.** A position keeps its signed quantity and its
  signed cost basis (the sum of ``qty * price`` of what is still open: positive for a long, negative
  for a short). The average cost is ``cost_basis / qty``. Adding to a position adds ``qty * price``
  (exact), so the average is the quantity-weighted average of the entry prices. Reducing by ``q``
  realizes ``(price - avg_cost) * q`` for a long and ``(avg_cost - price) * q`` for a short,
  computed as ``q * price`` minus the share ``cost_basis * q / |qty|`` of the basis. The only
  division is that share (and the displayed average); closing a position completely removes the
  whole remaining basis, so a round trip's realized P&L is always exact. The share is rounded to
  :data:`BASIS_PLACES` decimals, the finest a fill's ``qty * price`` can have (9 + 6 places), so
  every basis, realized P&L and cash amount keeps at most 15 places and their sums stay exact in
  the default 28-digit context: realized + unrealized - fees equals the change in equity exactly.
* **Fees are not folded into the average cost.** They are tracked separately per position and per
  account, reduce cash when paid, and therefore reduce equity and total P&L
  (``equity - initial_cash``); ``realized_pnl`` is the trading result before fees.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal

ZERO = Decimal(0)
#: Decimal places of a cost-basis share removed by a partial close (qty: 9 places, price: 6).
BASIS_PLACES = 15
_BASIS_STEP = Decimal(1).scaleb(-BASIS_PLACES)


class Side(enum.Enum):
    BUY = "BUY"
    SELL = "SELL"

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1


def _sign(value: Decimal) -> int:
    return (value > 0) - (value < 0)


@dataclass
class Position:
    """One strategy's position in one symbol. ``qty`` is signed: negative is short."""

    symbol: str = ""
    qty: Decimal = ZERO
    cost_basis: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    fees: Decimal = ZERO

    @property
    def avg_cost(self) -> Decimal:
        """Average entry price of what is open (positive for longs and shorts), 0 when flat."""
        if self.qty == 0:
            return ZERO
        return self.cost_basis / self.qty

    def apply_fill(self, side: Side, qty: Decimal, price: Decimal, fee: Decimal = ZERO) -> Decimal:
        """Book one fill; returns the P&L it realized (before fees).

        A fill on the side of the position (or on a flat book) adds at the fill price; a fill
        against it reduces and realizes; a fill larger than the position closes it completely
        (realizing) and opens the remainder on the other side at the fill price.
        """
        if qty <= 0:
            raise ValueError(f"fill quantity must be positive, got {qty}")
        if price <= 0:
            raise ValueError(f"fill price must be positive, got {price}")
        if fee < 0:
            raise ValueError(f"fee must not be negative, got {fee}")
        self.fees += fee
        direction = side.sign
        held = _sign(self.qty)
        if held == 0 or held == direction:
            self.qty += direction * qty
            self.cost_basis += direction * qty * price
            return ZERO
        open_qty = abs(self.qty)
        closing = min(qty, open_qty)
        if closing == open_qty:
            removed = self.cost_basis  # the whole basis: exact, no division
        else:
            # unrounded, this 28-digit quotient would make later sums round (off by ~1e-24)
            removed = (self.cost_basis * closing / open_qty).quantize(_BASIS_STEP)
        realized = held * closing * price - removed
        self.qty += direction * closing
        self.cost_basis -= removed
        remainder = qty - closing
        if remainder > 0:  # crossed zero: open the rest on the other side at the fill price
            self.qty = direction * remainder
            self.cost_basis = direction * remainder * price
        elif self.qty == 0:
            self.cost_basis = ZERO
        self.realized_pnl += realized
        return realized

    def market_value(self, last: Decimal | None) -> Decimal:
        """``qty * last`` (signed); marked at cost when no last price is known."""
        if last is None:
            return self.cost_basis
        return self.qty * last

    def unrealized_pnl(self, last: Decimal | None) -> Decimal:
        """``(last - avg_cost) * qty``, signed, so a short gains when the price falls; 0 without a price."""
        if last is None:
            return ZERO
        return self.qty * last - self.cost_basis


@dataclass
class Account:
    """A strategy's virtual cash account."""

    initial_cash: Decimal
    cash: Decimal
    realized_pnl: Decimal = ZERO
    fees: Decimal = ZERO

    def apply_fill(self, side: Side, qty: Decimal, price: Decimal, fee: Decimal, realized: Decimal) -> None:
        """Buy: ``cash -= qty * price + fee``; sell: ``cash += qty * price - fee``."""
        if side is Side.BUY:
            self.cash -= qty * price + fee
        else:
            self.cash += qty * price - fee
        self.realized_pnl += realized
        self.fees += fee


def return_pct(total_pnl: Decimal, initial_cash: Decimal, places: int = 4) -> Decimal:
    """Total P&L as a percentage of the initial cash, rounded to ``places`` decimals (0 when no cash)."""
    if initial_cash <= 0:
        return ZERO
    return (total_pnl * 100 / initial_cash).quantize(Decimal(1).scaleb(-places))
