"""The backtest section: the desk's backtester beside backtrader and NautilusTrader, same data, same rule.

One MA crossover (SMA 10/30 of the close; buy 10 on a cross up when flat, sell everything on a cross down
when long) over seeded random-walk 1-minute bars, one symbol at 10k / 100k / 1M bars and 20 symbols x 50k
bars, written as the desk's CSV (``timestamp,symbol,open,high,low,close,volume``, one file per symbol) to a
temporary folder. Every run is its own process:

* desk: ``python -m bench.backtest --desk --data FILE...`` in the desk's environment: the files are read
  with :func:`desk.data.load_many` and handed to :func:`strategy_sdk.testing.run_backtest`, as
  ``desk backtest --data`` does (:mod:`desk.cli.backtest_cmd`);
* backtrader and NautilusTrader: ``bench/peers/bt_crossover.py`` and ``bench/peers/nautilus_crossover.py``
  in the bench's own environment ``bench/.venv-peers`` (``make bench-peers-env``), reading the same files.
  NautilusTrader runs twice, with the NETTING OMS (``nautilus-netting``: one position per instrument, like
  the desk's books; the "desk / Nautilus" target is against it) and with HEDGING (``nautilus-hedging``, its
  faster OMS on this strategy), both printed.

``seconds`` is wall time from before the file is read to the end of the run, loading and engine set-up
included; the framework's import and the interpreter's start are not in it (the parent's wall time of the
whole process, ``process_s``, is kept in the raw results). Peak RSS is each process's VmHWM (bench/peers/peer_cli.py: not ``ru_maxrss``, which carries a forking parent's peak over). Trade
counts (filled orders) must agree within 1 % (or one order: backtrader fills on the next bar, so an order
sent on the last bar never fills); a row says so when they do not.

    .venv/bin/python -m bench --only backtest [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from bench.peers.peer_cli import peak_rss_mb
from bench.stats import Figure, Target
from strategy_sdk import Bar, Strategy

ROOT = Path(__file__).resolve().parent.parent
PEERS_DIR = Path(__file__).resolve().parent / "peers"
PEERS_PYTHON = Path(
    os.environ.get("BENCH_PEERS_PYTHON", str(Path(__file__).resolve().parent / ".venv-peers/bin/python"))
)
#: Peer engines: script in bench/peers and its arguments. NautilusTrader runs twice: NETTING (one position per
#: instrument, as the desk's books keep one position per strategy and symbol: the like-for-like configuration,
#: and the one issue 12's 10x target is measured against) and HEDGING (its faster OMS here, printed beside).
PEERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "backtrader": ("bt_crossover.py", ()),
    "nautilus-netting": ("nautilus_crossover.py", ("--oms", "netting")),
    "nautilus-hedging": ("nautilus_crossover.py", ("--oms", "hedging")),
}
#: The targets at 1M bars (one symbol), from the issue.
TARGET_BARS_PER_S = 100_000.0
TARGET_VS = {"backtrader": 6.0, "nautilus-netting": 10.0}
TARGET_RSS_MB = 400.0
AGREE = 0.01  # trade counts within 1 %
START_NS = 1_767_225_600 * 1_000_000_000  # 2026-01-01T00:00:00Z
TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Plan:
    """``sizes``: bars of one symbol; ``multi``: (symbols, bars each); sizes up to ``repeat_upto`` bars are run
    ``repeats`` times per engine (the median is reported), larger ones once."""

    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    multi: tuple[int, int] | None = (20, 50_000)
    repeats: int = 3
    repeat_upto: int = 100_000
    target_size: int = 1_000_000
    peers: tuple[str, ...] = tuple(PEERS)


FULL = Plan()
QUICK = Plan(sizes=(2_000, 20_000), multi=(4, 5_000), repeats=1, repeat_upto=0, target_size=0)


# The desk's strategy (what a member writes: running sums, one state per symbol) -----------------------------
class Crossover(Strategy):
    """SMA 10/30 crossover per symbol with running sums: buy 10 on a golden cross when flat, sell all on a
    death cross (``bench/backtest_speed.py``'s FastCrossover, for any number of symbols)."""

    fast = 10
    slow = 30
    qty = 10

    def on_start(self) -> None:
        self.state: dict[str, _Sums] = {}

    async def on_bar(self, bar: Bar) -> None:
        s = self.state.get(bar.symbol)
        if s is None:
            s = self.state[bar.symbol] = _Sums()
        w = s.window
        close = bar.close
        w.append(close)
        s.fast_sum += close
        s.slow_sum += close
        n = len(w)
        if n > self.fast:
            s.fast_sum -= w[-self.fast - 1]
        if n > self.slow:
            s.slow_sum -= w.popleft()
        elif n < self.slow:
            return
        above = s.fast_sum * self.slow > s.slow_sum * self.fast  # fast/10 > slow/30, exact
        was, s.above = s.above, above
        if was is None or above == was:
            return
        held = self.position(bar.symbol)
        if above and held == 0:
            await self.buy(bar.symbol, self.qty)
        elif not above and held > 0:
            await self.sell(bar.symbol, held)


class _Sums:
    __slots__ = ("above", "fast_sum", "slow_sum", "window")

    def __init__(self) -> None:
        self.window: deque[Decimal] = deque()
        self.fast_sum = Decimal(0)
        self.slow_sum = Decimal(0)
        self.above: bool | None = None


def run_desk(files: Sequence[str]) -> dict[str, Any]:
    """One desk run, in this process: load the files as ``desk backtest --data`` does, run, count."""

    t_import = time.perf_counter()
    from desk.data import load_many, loaders
    from strategy_sdk.testing import run_backtest

    loaders.import_fast_csv()  # pandas, which the loader imports at its first large file: the peers import it here too
    import_s = time.perf_counter() - t_import
    start = time.perf_counter()
    bars = load_many([Path(f) for f in files]).select(None, None, None)
    loaded_s = time.perf_counter() - start
    result = run_backtest(
        Crossover,
        iter(bars),
        initial_cash=Decimal(1_000_000),
        config={"symbols": bars.symbol_list()},
        strategy_id="bench_crossover",
    )
    seconds = time.perf_counter() - start
    sides: dict[str, str] = {}
    for fill in result.fills:
        sides[fill.order_id] = fill.side
    buys = sum(1 for side in sides.values() if side == "buy")
    sells = len(sides) - buys
    rejected = sum(1 for o in result.orders if getattr(o, "accepted", True) is False)
    return {
        "engine": "desk",
        "bars": len(bars),
        "symbols": len(files),
        "seconds": round(seconds, 3),
        "load_s": round(loaded_s, 3),
        "import_s": round(import_s, 3),
        "bars_per_s": round(len(bars) / seconds),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "orders": buys + sells,
        "buys": buys,
        "sells": sells,
        "round_trips": sells,
        "sent": len(result.orders),
        "rejected": rejected,
        "hook_errors": result.errors,
    }


# The data --------------------------------------------------------------------------------------------------
def walk(count: int, seed: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Closes of a seeded random walk in units of 0.0001: from 100.0000, steps of up to ±0.30, floored at 1.

    Four decimals, not cents: with cents SMA(10) and SMA(30) of a walk are exactly equal on ~0.04 % of bars,
    and each engine breaks such a tie its own way (exact decimals, floats, backtrader's last non-zero
    difference), which moves the trade counts apart by up to ~1 %; with four decimals an exact tie is ~100x
    rarer."""
    rng = np.random.default_rng(seed)
    free = 1_000_000 + np.cumsum(rng.integers(-3000, 3001, count, dtype=np.int64))
    floor = 10_000
    return free + np.maximum.accumulate(np.maximum(0, floor - free))  # reflected at the floor, exactly


def write_bars(path: Path, symbol: str, count: int, seed: int) -> Path:
    """``count`` 1-minute bars of ``symbol`` as the desk's CSV: open = previous close, high/low 2 bp outside."""
    close = walk(count, seed)
    open_ = np.concatenate(([1_000_000], close[:-1]))
    high = np.maximum(open_, close) + 200
    low = np.minimum(open_, close) - 200
    stamps = np.datetime_as_string(
        np.datetime64(START_NS, "ns").astype("datetime64[s]")
        + np.arange(count, dtype=np.int64) * np.timedelta64(60, "s"),
        unit="s",
    )

    def price(units: int) -> str:
        return f"{units // 10_000}.{units % 10_000:04d}"

    with path.open("w") as out:
        out.write("timestamp,symbol,open,high,low,close,volume\n")
        lines = []
        for ts, o, h, lo, c in zip(
            stamps.tolist(), open_.tolist(), high.tolist(), low.tolist(), close.tolist(), strict=True
        ):
            lines.append(f"{ts}Z,{symbol},{price(o)},{price(h)},{price(lo)},{price(c)},500\n")
            if len(lines) >= 65_536:
                out.writelines(lines)
                lines.clear()
        out.writelines(lines)
    return path


# Running -----------------------------------------------------------------------------------------------------
def _command(engine: str, files: Sequence[Path]) -> list[str]:
    data = ["--data", *(str(f) for f in files)]
    if engine == "desk":
        return [sys.executable, "-m", "bench.backtest", "--desk", *data]
    script, options = PEERS[engine]
    return [str(PEERS_PYTHON), str(PEERS_DIR / script), *data, *options]


def run_one(engine: str, files: Sequence[Path]) -> dict[str, Any]:
    """One run of ``engine`` over ``files`` in its own process; its JSON line, plus ``process_s``."""
    started = time.perf_counter()
    proc = subprocess.run(
        _command(engine, files),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=TIMEOUT_S,
        check=False,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    process_s = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{engine} printed no JSON: {proc.stdout[-500:]!r} {proc.stderr[-1500:]!r}")
    out: dict[str, Any] = json.loads(lines[-1])
    out["process_s"] = round(process_s, 3)
    return out


def peers_available() -> tuple[bool, str]:
    if not PEERS_PYTHON.exists():
        return False, f"{PEERS_PYTHON} is missing: `make bench-peers-env` makes the peers' environment"
    return True, ""


def _median_run(engine: str, files: Sequence[Path], repeats: int) -> dict[str, Any]:
    """``repeats`` runs; the one with the median time (with every run's time and RSS beside it)."""
    runs = [run_one(engine, files) for _ in range(max(1, repeats))]
    best = dict(sorted(runs, key=lambda r: float(r["seconds"]))[len(runs) // 2])
    if len(runs) > 1:
        best["runs_seconds"] = [r["seconds"] for r in runs]
        best["runs_peak_rss_mb"] = [r["peak_rss_mb"] for r in runs]
    best["repeats"] = len(runs)
    return best


def _label(symbols: int, bars_each: int) -> str:
    def short(n: int) -> str:
        return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)

    return f"{short(bars_each)} bars, 1 symbol" if symbols == 1 else f"{symbols} symbols x {short(bars_each)} bars"


def _agrees(desk: int, peer: int) -> bool:
    return abs(desk - peer) <= max(1.0, AGREE * peer)


def run(plan: Plan, progress: Any = None) -> tuple[list[Figure], dict[str, Any]]:
    """Write the data, run every engine on every size, return the figures and the raw runs."""
    say = progress or (lambda text: print(f"bench: backtest: {text}", file=sys.stderr, flush=True))
    ok, why = peers_available()
    engines = ("desk", *plan.peers) if ok else ("desk",)
    raw: dict[str, Any] = {
        "plan": {"sizes": plan.sizes, "multi": plan.multi, "repeats": plan.repeats, "repeat_upto": plan.repeat_upto},
        "runs": {},
        "peers_missing": "" if ok else why,
    }
    cases: list[tuple[str, int, int]] = [(_label(1, n), 1, n) for n in plan.sizes]
    if plan.multi:
        cases.append((_label(*plan.multi), *plan.multi))
    with tempfile.TemporaryDirectory(prefix="bench-backtest-") as tmp:
        folder = Path(tmp)
        for label, symbols, bars_each in cases:
            sub = folder / f"{symbols}x{bars_each}"
            sub.mkdir()
            t0 = time.perf_counter()
            files = [write_bars(sub / f"S{i:02d}.csv", f"S{i:02d}", bars_each, seed=7 + i) for i in range(symbols)]
            say(
                f"{label}: data written in {time.perf_counter() - t0:.1f} s "
                f"({sum(f.stat().st_size for f in files) / 1e6:.1f} MB)"
            )
            repeats = plan.repeats if symbols * bars_each <= plan.repeat_upto else 1
            runs: dict[str, Any] = {}
            for engine in engines:
                try:
                    runs[engine] = _median_run(engine, files, repeats)
                except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
                    runs[engine] = {"error": str(exc)[-2000:]}
                r = runs[engine]
                say(
                    f"{label}: {engine}: "
                    + (
                        f"{r['bars_per_s']:,} bars/s, {r['seconds']} s, {r['peak_rss_mb']} MB, {r['orders']} orders"
                        if "error" not in r
                        else f"FAILED {r['error'][:300]}"
                    )
                )
            raw["runs"][label] = runs
    figures = figures_from(raw, plan, engines)
    if not ok:
        figures.append(Figure("backtest", "peers (backtrader, NautilusTrader)", "", None, note=why))
    return figures, raw


def _good(r: dict[str, Any] | None) -> bool:
    return r is not None and bool(r) and "error" not in r


def figures_from(raw: dict[str, Any], plan: Plan, engines: Sequence[str]) -> list[Figure]:
    """The section's figures from the runs: per size the trade-count checks, bars/s, ratios and RSS; then
    the linearity of the two largest single-symbol sizes."""
    figures: list[Figure] = []
    peers = [e for e in engines if e != "desk"]
    runs_by_label: dict[str, dict[str, Any]] = raw["runs"]
    for label, runs in runs_by_label.items():
        desk = runs.get("desk", {})
        is_target = label == _label(1, plan.target_size)
        if not _good(desk):
            note = f"desk run FAILED: {desk.get('error', '?')}"
            figures.append(Figure("backtest", f"bars/s {label}, desk", "bars/s", None, note=note))
            continue
        mismatched = _order_checks(label, desk, runs, peers, figures)
        _speed_figures(label, desk, runs, peers, mismatched, is_target, figures)
    figures.extend(_linearity(runs_by_label, plan, engines))
    return figures


def _order_checks(
    label: str, desk: dict[str, Any], runs: dict[str, Any], peers: Sequence[str], figures: list[Figure]
) -> list[str]:
    """One figure per peer: the filled orders agree (within 1 %); the peers that do not."""
    mismatched = []
    for peer in peers:
        p = runs.get(peer, {})
        if not _good(p):
            note = f"{peer} run FAILED: {p.get('error', '?')}"
            figures.append(Figure("backtest", f"orders {label}: desk vs {peer}", "orders", desk["orders"], note=note))
            continue
        agree = _agrees(int(desk["orders"]), int(p["orders"]))
        tol = max(AGREE, 1 / max(1, int(p["orders"])))
        note = (
            f"desk {desk['orders']} filled orders ({desk['round_trips']} round trips), {peer} "
            f"{p['orders']} ({p['round_trips']})"
        )
        if desk.get("rejected") or desk.get("hook_errors"):
            note += (
                f"; the desk refused {desk.get('rejected', 0)} of {desk.get('sent', '?')} orders and the "
                f"strategy's hooks raised {desk.get('hook_errors', 0)} times"
            )
        if p.get("unfilled"):
            note += f", {p['unfilled']} sent on the last bar and never filled"
        if not agree:
            mismatched.append(peer)
            note = (
                "TRADE COUNTS DISAGREE by more than 1 %: the strategies did not do the same thing, so the "
                "speed ratios of this size are not like for like. " + note
            )
        name = f"orders {label}: desk vs {peer}" + ("" if agree else " — MISMATCH")
        target = Target("ratio_near", round(tol, 4))
        figures.append(Figure("backtest", name, "orders", float(desk["orders"]), float(p["orders"]), target, note=note))
    return mismatched


def _speed_figures(
    label: str,
    desk: dict[str, Any],
    runs: dict[str, Any],
    peers: Sequence[str],
    mismatched: list[str],
    is_target: bool,
    figures: list[Figure],
) -> None:
    """The desk's bars/s (with the target at the target size), each peer's ratio, and peak RSS."""
    figures.append(
        Figure(
            "backtest",
            f"bars/s {label}, desk (loading the file included)",
            "bars/s",
            float(desk["bars_per_s"]),
            target=Target("min", TARGET_BARS_PER_S) if is_target else None,
            note=f"desk: {desk['seconds']} s of which loading {desk['load_s']} s; whole process {desk['process_s']} s",
            extra={"run": desk},
        )
    )
    for peer in peers:
        p = runs.get(peer, {})
        if not _good(p):
            continue
        figures.append(
            Figure(
                "backtest",
                f"bars/s {label}: desk vs {peer}" + (" — trade counts DISAGREE" if peer in mismatched else ""),
                "bars/s",
                float(desk["bars_per_s"]),
                float(p["bars_per_s"]),
                Target("ratio_min", TARGET_VS[peer]) if is_target and peer in TARGET_VS else None,
                note=f"{peer} {p.get('version', '')}: {p['seconds']} s (whole process {p['process_s']} s, "
                f"import {p.get('import_s', '?')} s)",
                extra={"run": p},
            )
        )
    for peer in peers or [""]:
        p = runs.get(peer, {}) if peer else {}
        figures.append(
            Figure(
                "backtest",
                f"peak RSS {label}, desk" + (f" vs {peer}" if peer else ""),
                "MB",
                float(desk["peak_rss_mb"]),
                float(p["peak_rss_mb"]) if _good(p) else None,
                Target("max", TARGET_RSS_MB) if is_target and peer == (peers or [""])[0] else None,
            )
        )


def _linearity(runs_by_label: dict[str, dict[str, Any]], plan: Plan, engines: Sequence[str]) -> list[Figure]:
    """10x the bars should take at most 11x the time (the desk's target; the peers' shown beside)."""
    if len(plan.sizes) < 2:
        return []
    single = {n: runs_by_label.get(_label(1, n), {}) for n in plan.sizes}
    small, big = plan.sizes[-2], plan.sizes[-1]
    factor = big / small
    figures = []
    for engine in engines:
        a, b = single[small].get(engine), single[big].get(engine)
        if not (_good(a) and _good(b)):
            continue
        assert a is not None and b is not None
        figures.append(
            Figure(
                "backtest",
                f"time {_label(1, big)} / time {_label(1, small)}, {engine}",
                "x",
                float(b["seconds"]) / float(a["seconds"]),
                target=Target("max", round(factor * 1.1, 2)) if engine == "desk" else None,
                note=f"linear = {factor:g}x (the bars grow {factor:g}x)",
            )
        )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backtest", description=__doc__.splitlines()[0])
    parser.add_argument("--desk", action="store_true", help="one desk run over --data (what the section runs)")
    parser.add_argument("--data", nargs="+", default=[], help="desk CSV files")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.desk:
        print(json.dumps(run_desk(args.data)), flush=True)
        return 0
    from bench.stats import render_table

    figures, _raw = run(QUICK if args.quick else FULL)
    print(render_table(figures))
    for f in figures:
        if f.note:
            print(f"  * {f.name}: {f.note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
