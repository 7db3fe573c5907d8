"""One backtest of a strategy folder: what ``desk backtest`` and ``python -m strategy_sdk backtest`` share.

Load the folder (strategy.py + config.json), take the bars (the caller loads them: files, or the desk's
Alpaca cache), run :func:`strategy_sdk.testing.run_backtest` with the folder's config (symbols, initial
cash, risk), and compute :mod:`desk.backtest.metrics`' figures; the caller prints them its own way.
Every problem a person can fix is a :class:`BacktestError` with the message and the exit code (1: the
strategy or the data cannot be used, 2: a bad option).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from desk.backtest.metrics import BacktestData, Metrics, compute_data, to_json
from desk.data.loaders import NEW_YORK


class BacktestError(Exception):
    """A backtest that cannot run: the message for stderr and the exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def parse_when(text: str, option: str, *, end: bool) -> int | None:
    """YYYY-MM-DD (a New York day, inclusive) or an ISO timestamp, as ns; None when empty."""
    if not text:
        return None
    try:
        moment = datetime.combine(date.fromisoformat(text), time.max if end else time.min, NEW_YORK)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise BacktestError(f"{option} {text!r} is neither a date (YYYY-MM-DD) nor an ISO timestamp", 2) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=NEW_YORK)
    return int(moment.timestamp() * 1_000_000_000)


def wanted_symbols(symbols: str, config: dict[str, Any]) -> list[str]:
    """``--symbols`` (comma-separated), else the config's ``symbols``."""
    return [s.strip().upper() for s in symbols.split(",") if s.strip()] or [str(s) for s in config.get("symbols") or []]


@dataclass(frozen=True)
class Folder:
    """A loaded strategy folder: its path, its Strategy class and its config.json."""

    path: Path
    cls: type[Any]
    config: dict[str, Any]

    @property
    def title(self) -> str:
        return f"{self.config.get('name') or self.path.name} — {self.config.get('user_id') or 'backtest'}"


def load_folder(path: str | Path, *, module_prefix: str, legacy_hint: str = "") -> Folder:
    """The strategy of folder (or strategy.py file) ``path``; old-desk (stdin) strategies cannot backtest."""
    from strategy_sdk.config import load_config
    from strategy_sdk.loading import StrategyLoadError, is_legacy_source, load_strategy_class, resolve_strategy_path

    try:
        folder, file = resolve_strategy_path(path)
        config: dict[str, Any] = load_config(folder)
        if is_legacy_source(file.read_text(), str(file)):
            raise BacktestError(f"{file} is an old-desk (stdin) strategy: it can only run on the desk{legacy_hint}")
        cls = load_strategy_class(file, f"{module_prefix}_{folder.name.replace('-', '_')}")
    except StrategyLoadError as exc:
        raise BacktestError(str(exc)) from None
    except SyntaxError as exc:
        raise BacktestError(f"{path}: {exc}") from None
    return Folder(folder, cls, config)


def initial_cash(cash: str, config: dict[str, Any]) -> Decimal:
    """``--cash``, else the config's ``initial_cash``, else 100000; positive and finite."""
    try:
        initial = Decimal(cash or str(config.get("initial_cash") or "100000"))
    except InvalidOperation:
        raise BacktestError(f"initial cash {cash or config.get('initial_cash')!r} is not a number", 2) from None
    if not initial.is_finite() or initial <= 0:
        raise BacktestError(f"initial cash must be a positive number, got {initial}", 2)
    return initial


@dataclass(frozen=True)
class Outcome:
    """A finished backtest: the engine's result, the report's columns and the figures."""

    result: Any  # strategy_sdk.testing.BacktestResult
    data: BacktestData
    metrics: Metrics

    def summary_json(self, folder: Folder, symbols: list[str], html: Path | None) -> dict[str, Any]:
        """The stable ``--json`` object of both commands."""
        out = to_json(self.metrics)
        out.update(
            strategy=folder.path.name,
            symbols=symbols,
            orders=len(self.result.orders),
            hook_errors=self.result.errors,
            report=str(html) if html else None,
        )
        return out

    def hook_warning(self) -> str | None:
        """The warning for stderr when the strategy's hooks raised, else None."""
        if not self.result.errors:
            return None
        first = self.result.error_messages[0] if self.result.error_messages else ""
        return f"warning: the strategy's hooks raised {self.result.errors} times; first: {first}"


def run_folder(
    folder: Folder, bars: Any, cash: str = "", feed: Callable[[Iterable[Any], int], Iterator[Any]] | None = None
) -> Outcome:
    """Backtest ``folder`` over ``bars`` (a selected :class:`desk.data.BarData`, not empty); ``feed``
    wraps the bar iterator (a progress bar) given the bar count."""
    from strategy_sdk.testing import run_backtest

    initial = initial_cash(cash, folder.config)
    risk = folder.config.get("risk") or {}
    stream: Iterator[Any] = iter(bars) if feed is None else feed(iter(bars), len(bars))
    result = run_backtest(
        folder.cls,
        stream,
        initial_cash=initial,
        config=dict(folder.config, symbols=bars.symbol_list()),
        allow_short=bool(risk.get("allow_short", False)),
        strategy_id=folder.path.name,
        member_id=str(folder.config.get("user_id", "")),
    )
    data = BacktestData.from_result(result, bars, initial_cash=initial, name=folder.title)
    return Outcome(result, data, compute_data(data))
