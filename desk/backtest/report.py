"""A backtest as one self-contained HTML file, a terminal table, or JSON.

:func:`render_html` writes a single file that needs no network: uPlot (MIT, vendored in
``desk/backtest/static/``, the same 1.6.32 build as the dashboard's) and the page's CSS and JS are
inlined, and the chart data is embedded as JSON. The page has the summary table (strategy vs
buy-and-hold benchmark), equity vs benchmark, drawdown, one price chart per symbol with buy/sell
markers, the per-symbol P&L table and the trade list.

Size limits, stated on the page when they apply: each chart keeps at most ~4 x
:data:`CHART_BUCKETS` points (the first, last, minimum and maximum of each of
:data:`CHART_BUCKETS` equal buckets, so peaks and troughs survive); each price chart shows at most
:data:`MAX_MARKERS` trade markers (evenly sampled); the trade list shows the first and last
:data:`MAX_TRADE_ROWS` / 2 trades; at most :data:`MAX_PRICE_CHARTS` symbols get a price chart.
100,000 trades make a file of well under 1 MB.

Everything member-controlled (strategy name, symbols, order ids) is escaped: Jinja2 autoescaping for
the HTML, ``<``/``>``/``&`` escaped inside the embedded JSON, ``textContent`` in the page's JS.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from desk.backtest.metrics import (
    NS_PER_S,
    BacktestData,
    FloatArray,
    IntArray,
    Metrics,
    Number,
    ReturnStats,
    Trade,
    as_floats,
    as_ints,
    benchmark_symbols,
    compute_data,
    equity_curves,
    equity_drawdown,
    to_json,
)

__all__ = [
    "CHART_BUCKETS",
    "MAX_MARKERS",
    "MAX_PRICE_CHARTS",
    "MAX_TRADE_ROWS",
    "format_summary",
    "render_html",
    "to_json",
]

CHART_BUCKETS = 1000
MAX_MARKERS = 2000
MAX_TRADE_ROWS = 1000
MAX_PRICE_CHARTS = 24
DASH = "—"


# Formatting for people ------------------------------------------------------------------------------
def money(x: float | None) -> str:
    """``-1234.5`` -> ``"-1,234.50"``."""
    if x is None or not math.isfinite(x):
        return DASH
    return f"{x:,.2f}"


def pct(x: float | None) -> str:
    """``0.12345`` -> ``"12.35%"``."""
    if x is None or not math.isfinite(x):
        return DASH
    return f"{x * 100:,.2f}%"


def ratio(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return DASH
    return f"{x:,.2f}"


def qty(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return DASH
    return f"{x:,.6f}".rstrip("0").rstrip(".") or "0"


def duration(ns: int | None) -> str:
    """Nanoseconds as ``"12d 4h"``, ``"3h 20m"``, ``"5m 30s"``, ``"42s"``."""
    if ns is None:
        return DASH
    s = round(ns / NS_PER_S)
    if s <= 0:
        return "0"
    d, rest = divmod(s, 86400)
    h, rest = divmod(rest, 3600)
    m, sec = divmod(rest, 60)
    if d:
        return f"{d}d {h}h" if h else f"{d}d"
    if h:
        return f"{h}h {m}m" if m else f"{h}h"
    if m:
        return f"{m}m {sec}s" if sec else f"{m}m"
    return f"{sec}s"


def when(ns: int) -> str:
    """UTC time of ``ns``; seconds shown only when not whole minutes."""
    moment = datetime.fromtimestamp(ns / NS_PER_S, tz=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S" if moment.second or moment.microsecond else "%Y-%m-%d %H:%M")


def _rows(metrics: Metrics) -> list[tuple[str, str, str]]:
    """(label, strategy, benchmark) rows of the summary table."""
    s, b = metrics.strategy, metrics.benchmark

    def both(fmt: Any, attr: str) -> tuple[str, str]:
        return fmt(getattr(s, attr)), fmt(getattr(b, attr)) if b is not None else DASH

    def dd_duration(st: ReturnStats | None) -> str:
        if st is None:
            return DASH
        text = duration(st.max_drawdown_duration_ns)
        return text if st.max_drawdown_recovered or st.max_drawdown == 0 else f"{text}, open"

    return [
        ("Total return", *both(pct, "total_return")),
        ("Annualised return", *both(pct, "annualised_return")),
        ("Volatility (annualised)", *both(pct, "volatility")),
        ("Sharpe", *both(ratio, "sharpe")),
        ("Sortino", *both(ratio, "sortino")),
        ("Max drawdown", *both(pct, "max_drawdown")),
        ("Max drawdown duration", dd_duration(s), dd_duration(b)),
        ("Calmar", *both(ratio, "calmar")),
        (
            "Final equity",
            money(metrics.final_equity),
            money(metrics.initial_cash * (1 + b.total_return)) if b is not None else DASH,
        ),
        ("Round trips", f"{metrics.round_trips:,}", DASH),
        ("Win rate", pct(metrics.win_rate), DASH),
        ("Profit factor", ratio(metrics.profit_factor), DASH),
        ("Fills", f"{metrics.fills:,}", DASH),
        ("Exposure", pct(metrics.exposure), "100.00%" if b is not None else DASH),
        ("Turnover (total)", ratio(metrics.turnover), DASH),
        ("Turnover (annualised)", ratio(metrics.turnover_annualised), DASH),
        ("Fees", money(metrics.fees), money(0.0) if b is not None else DASH),
    ]


def format_summary(metrics: Metrics) -> str:
    """The summary as a plain-text table for the terminal."""
    rows = [("Metric", "Strategy", "Benchmark"), *_rows(metrics)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for n, (label, strat, bench) in enumerate(rows):
        lines.append(f"{label:<{widths[0]}}  {strat:>{widths[1]}}  {bench:>{widths[2]}}".rstrip())
        if n == 0:
            lines.append(f"{'-' * widths[0]}  {'-' * widths[1]}  {'-' * widths[2]}")
    period = f"{when(metrics.start_ns)} to {when(metrics.end_ns)} UTC" if metrics.bars else "no bars"
    head = f"{metrics.bars:,} bars, {period}; benchmark: buy-and-hold {', '.join(metrics.benchmark_symbols) or DASH}"
    return head + "\n" + "\n".join(lines)


# Chart data -------------------------------------------------------------------------------------------------
def decimate(n: int, *series: FloatArray, buckets: int = CHART_BUCKETS) -> IntArray:
    """Indices to plot of ``n`` points: all when few, else first/last/min/max of each bucket of every series."""
    if n <= 4 * buckets:
        return np.arange(n, dtype=np.int64)
    size = math.ceil(n / buckets)
    picks = [np.arange(0, n, size, dtype=np.int64), np.array([n - 1], dtype=np.int64)]
    padded = size * math.ceil(n / size)
    base = np.arange(0, padded, size, dtype=np.int64)
    for values in series:
        v = np.pad(values, (0, padded - n), mode="edge").reshape(-1, size)
        picks.append(base + np.argmin(v, axis=1))
        picks.append(base + np.argmax(v, axis=1))
    return np.unique(np.minimum(np.concatenate(picks), n - 1))


def _sample(items: Sequence[Trade], cap: int) -> list[Trade]:
    if len(items) <= cap:
        return list(items)
    idx = np.linspace(0, len(items) - 1, cap).round().astype(np.int64)
    return [items[int(i)] for i in np.unique(idx)]


def _nums(values: FloatArray, digits: int = 6) -> list[float | None]:
    return [None if not math.isfinite(v) else round(float(v), digits) for v in values]


def _price_chart(symbol: str, ts: IntArray, close: FloatArray, trades: list[Trade]) -> dict[str, Any]:
    shown = trades if len(trades) <= MAX_MARKERS else _sample(trades, MAX_MARKERS)
    idx = decimate(len(ts), close)
    points: dict[int, list[float | None]] = {int(ts[i]): [float(close[i]), None, None] for i in idx}
    for t in shown:
        row = points.setdefault(int(t.ts_ns), [None, None, None])
        row[1 if t.side == "buy" else 2] = float(t.price)
    xs = sorted(points)
    return {
        "symbol": symbol,
        "x": [x / NS_PER_S for x in xs],
        "close": [points[x][0] for x in xs],
        "buys": [points[x][1] for x in xs],
        "sells": [points[x][2] for x in xs],
        "points": len(ts),
        "shown_points": len(idx),
        "markers": len(trades),
        "shown_markers": len(shown),
    }


def _chart_data(data: BacktestData, metrics: Metrics) -> dict[str, Any]:
    symbols = benchmark_symbols(data.trades, data.prices)
    ts, values, bench = equity_curves(data.ts_ns, data.equity, data.initial_cash, symbols, data.prices)
    # drop the initial-cash point: the curves start at the first bar
    eq, dd = values[1:], equity_drawdown(values)[1:]
    b = bench[1:] if bench is not None else None
    bdd = equity_drawdown(bench)[1:] if bench is not None else None
    idx = decimate(len(eq), eq, dd, *(x for x in (b, bdd) if x is not None))
    x = (ts[idx] / NS_PER_S).tolist()
    by_symbol: dict[str, list[Trade]] = {}
    for t in sorted(data.trades, key=lambda t: t.ts_ns):
        by_symbol.setdefault(t.symbol, []).append(t)
    chart_symbols = sorted(set(data.prices) | set(by_symbol))
    prices = []
    for symbol in chart_symbols[:MAX_PRICE_CHARTS]:
        series = data.prices.get(symbol)
        pts, close = (
            (as_ints(series.ts_ns), as_floats(series.close))
            if series is not None
            else (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64))
        )
        prices.append(_price_chart(symbol, pts, close, by_symbol.get(symbol, [])))
    return {
        "equity": {
            "x": x,
            "strategy": _nums(eq[idx], 2),
            "benchmark": _nums(b[idx], 2) if b is not None else None,
            "dd": _nums(dd[idx] * 100, 4),
            "benchmark_dd": _nums(bdd[idx] * 100, 4) if bdd is not None else None,
            "points": len(eq),
            "shown_points": len(idx),
        },
        "prices": prices,
        "price_symbols": len(chart_symbols),
    }


def _json_for_script(value: Any) -> str:
    """JSON safe inside <script type="application/json">: no "</script>", no HTML specials."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return (
        text.replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _static(name: str) -> str:
    return resources.files("desk.backtest").joinpath("static", name).read_text(encoding="utf-8")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("desk.backtest", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(money=money, pct=pct, ratio=ratio, qty=qty, duration=duration, when=when)
    return env


def _trade_rows(trades: Sequence[Trade]) -> tuple[list[Trade], list[Trade]]:
    ordered = sorted(trades, key=lambda t: t.ts_ns)
    if len(ordered) <= MAX_TRADE_ROWS:
        return ordered, []
    half = MAX_TRADE_ROWS // 2
    return ordered[:half], ordered[-half:]


def render_string(data: BacktestData, metrics: Metrics | None = None) -> str:
    """The report's HTML (see :func:`render_html`)."""
    metrics = metrics or compute_data(data)
    charts = _chart_data(data, metrics)
    head, tail = _trade_rows(data.trades)
    ts = np.unique(as_ints(data.ts_ns))
    spacing = int(np.median(np.diff(ts))) if len(ts) > 1 else 0
    bar_kind = (
        ("daily bars" if metrics.periods_per_year == 252 else f"bars of {duration(spacing)}")
        if spacing
        else ("bar" if metrics.bars == 1 else "bars")
    )
    template = _environment().get_template("report.html.j2")
    return template.render(
        name=data.name or "Backtest",
        m=metrics,
        rows=_rows(metrics),
        charts=_json_for_script(charts),
        summary=_json_for_script(to_json(metrics)),
        equity_points=charts["equity"]["points"],
        equity_shown=charts["equity"]["shown_points"],
        price_charts=charts["prices"],
        price_symbols=charts["price_symbols"],
        max_price_charts=MAX_PRICE_CHARTS,
        head=head,
        tail=tail,
        trade_count=len(data.trades),
        bar_kind=bar_kind,
        uplot_js=_static("uPlot.iife.min.js"),
        uplot_css=_static("uPlot.min.css"),
        generated=datetime.now(tz=UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


def render_html(
    result_like: BacktestData | Any,
    path: str | Path,
    metrics: Metrics | None = None,
    *,
    bars: Iterable[Any] = (),
    name: str = "",
    initial_cash: Number = 100000,
) -> Path:
    """Write the report of ``result_like`` to ``path`` (one self-contained HTML file) and return the path.

    ``result_like`` is a :class:`BacktestData`, or anything :meth:`BacktestData.from_result` takes
    (a ``strategy_sdk.testing.BacktestResult``; then ``bars`` give the prices, ``name`` the title and
    ``initial_cash`` must be the backtest's, which the result does not carry).
    ``metrics`` are computed when not given.
    """
    data = (
        result_like
        if isinstance(result_like, BacktestData)
        else BacktestData.from_result(result_like, bars, name=name, initial_cash=initial_cash)
    )
    out = Path(path)
    out.write_text(render_string(data, metrics), encoding="utf-8")
    return out
