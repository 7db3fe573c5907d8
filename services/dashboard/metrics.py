"""Performance figures from equity snapshots: pure functions, no I/O, Decimal throughout.

The inputs are the ledger's equity snapshots (``desk.ledger.equity``): ``(ts_ns, equity)`` pairs,
oldest first. Definitions, stated once so the page and the tests agree:

* **Max drawdown** — the largest fall from a running peak, as a fraction of that peak:
  ``max((peak - equity) / peak)``; ``0`` when equity never falls (or fewer than two points).
* **Sharpe** — risk-free rate 0; the returns are the simple returns between consecutive snapshots;
  ``mean / sample standard deviation``, annualised by ``sqrt(periods per year)`` where a period is the
  median snapshot interval and a year is 252 trading days of 6.5 hours. ``None`` with fewer than
  three snapshots (two returns), when the returns do not vary, or when the snapshots span less than
  one trading day (:data:`MIN_SHARPE_SPAN_NS`): annualising a few minutes of seconds-apart snapshots
  multiplies by sqrt(5.9 million) and gave the leaderboard figures like 348 or -208.
* **Benchmark** — buy-and-hold of one symbol: ``equity_0 * price(t) / price(t_0)``, where ``t_0`` is
  the first snapshot for which a price is known at or before it.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

ZERO = Decimal(0)
NS_PER_SECOND = 1_000_000_000
TRADING_SECONDS_PER_YEAR = Decimal(252 * 6.5 * 3600).quantize(Decimal(1))
#: The least span of snapshots a Sharpe ratio is given for: one trading day (6.5 hours).
MIN_SHARPE_SPAN_NS = int(6.5 * 3600) * NS_PER_SECOND

Point = tuple[int, Decimal]  # (ts_ns, value)


def max_drawdown(equities: Iterable[Decimal]) -> Decimal:
    """Largest peak-to-trough fall as a fraction of the peak (0.25 = 25 %)."""
    peak: Decimal | None = None
    worst = ZERO
    for equity in equities:
        if peak is None or equity > peak:
            peak = equity
            continue
        if peak > 0:
            worst = max(worst, (peak - equity) / peak)
    return worst


def drawdown_series(points: Sequence[Point]) -> list[Point]:
    """At each point, the fall from the running peak as a fraction of that peak (0 at a new high)."""
    out: list[Point] = []
    peak: Decimal | None = None
    for ts, equity in points:
        if peak is None or equity > peak:
            peak = equity
        out.append((ts, (peak - equity) / peak if peak > 0 else ZERO))
    return out


def period_returns(equities: Sequence[Decimal]) -> list[Decimal]:
    """Simple returns between consecutive values; a step from a non-positive value is skipped."""
    return [(b - a) / a for a, b in itertools.pairwise(equities) if a > 0]


def median_interval_ns(timestamps: Sequence[int]) -> int:
    """Median gap between consecutive timestamps (0 with fewer than two)."""
    gaps = sorted(b - a for a, b in itertools.pairwise(timestamps))
    if not gaps:
        return 0
    middle = len(gaps) // 2
    return gaps[middle] if len(gaps) % 2 else (gaps[middle - 1] + gaps[middle]) // 2


def sharpe_ratio(points: Sequence[Point], min_span_ns: int = MIN_SHARPE_SPAN_NS) -> Decimal | None:
    """Annualised Sharpe ratio (risk-free 0) of the returns between snapshots; see the module doc.
    ``None`` when ``points`` span less than ``min_span_ns``."""
    if len(points) < 2 or points[-1][0] - points[0][0] < min_span_ns:
        return None
    returns = period_returns([equity for _, equity in points])
    if len(returns) < 2:
        return None
    n = Decimal(len(returns))
    mean = sum(returns, ZERO) / n
    variance = sum(((r - mean) ** 2 for r in returns), ZERO) / (n - 1)
    if variance <= 0:
        return None
    interval = median_interval_ns([ts for ts, _ in points])
    if interval <= 0:
        return None
    periods_per_year = TRADING_SECONDS_PER_YEAR * NS_PER_SECOND / Decimal(interval)
    return mean / variance.sqrt() * periods_per_year.sqrt()


def combine_series(series: Mapping[str, Sequence[Point]]) -> list[Point]:
    """Sum several equity curves (a member's strategies) into one.

    At every timestamp of any curve, each curve contributes its latest value at or before it; a
    curve that has not started yet contributes its first value (flat), so a strategy joining later
    does not look like a jump in the member's equity.
    """
    curves = {name: sorted(points) for name, points in series.items() if points}
    stamps = sorted({ts for points in curves.values() for ts, _ in points})
    combined: list[Point] = []
    for ts in stamps:
        total = ZERO
        for points in curves.values():
            index = bisect.bisect_right(points, (ts, Decimal("Infinity"))) - 1
            total += points[max(index, 0)][1]
        combined.append((ts, total))
    return combined


def price_at(prices: Sequence[Point], ts_ns: int) -> Decimal | None:
    """The latest price at or before ``ts_ns`` (``prices`` oldest first), or ``None``."""
    index = bisect.bisect_right(prices, (ts_ns, Decimal("Infinity"))) - 1
    return prices[index][1] if index >= 0 else None


def buy_and_hold(equity: Sequence[Point], prices: Sequence[Point]) -> list[Point]:
    """The benchmark curve on the equity curve's timestamps: the equity at the first snapshot with a
    known price, invested in the symbol and held. Snapshots before that point are left out."""
    curve: list[Point] = []
    base_equity: Decimal | None = None
    base_price: Decimal | None = None
    for ts, value in equity:
        price = price_at(prices, ts)
        if price is None or price <= 0:
            continue
        if base_price is None or base_equity is None:
            base_equity, base_price = value, price
        curve.append((ts, base_equity * price / base_price))
    return curve


@dataclass(frozen=True)
class Performance:
    """One leaderboard row's figures."""

    key: str  # strategy id, or member id
    member_id: str
    equity: Decimal
    total_pnl: Decimal
    return_pct: Decimal
    max_drawdown: Decimal  # fraction
    sharpe: Decimal | None
    trades: int
    strategies: int = 1


def rank(rows: Iterable[Performance]) -> list[Performance]:
    """Best first: by return, then P&L, then fewer drawdown, then name (a stable, total order)."""
    return sorted(rows, key=lambda r: (-r.return_pct, -r.total_pnl, r.max_drawdown, r.key))
