"""Who a strategy is and what it listens to: arguments, then the environment, then its config.json.

:class:`RunnerConfig` gathers and checks the settings (ids and symbols against the desk's subject
rules, a positive heartbeat interval, a numeric initial cash); a bad one is a
:class:`~strategy_sdk.loading.StrategyLoadError`. No I/O beyond reading config.json.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from desk.bus import subjects
from strategy_sdk.loading import StrategyLoadError, resolve_strategy_path

__all__ = ["DEFAULT_INITIAL_CASH", "DEFAULT_NATS_URL", "RunnerConfig", "load_config"]

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_INITIAL_CASH = Decimal(100000)
log = logging.getLogger("strategy_sdk")


def load_config(folder: Path) -> dict[str, Any]:
    """The folder's config.json as a dict; an empty one (and a warning) when there is none."""
    file = folder / "config.json"
    if not file.is_file():
        log.warning("strategy.no_config: %s not found; using an empty config", file)
        return {}
    try:
        config = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StrategyLoadError(f"cannot read {file}: {exc}") from exc
    if not isinstance(config, dict):
        raise StrategyLoadError(f"{file} must hold a JSON object")
    return config


def _strategy_id(given: str | None, env: Mapping[str, str], folder: Path) -> str:
    sid = given or env.get("DESK_STRATEGY_ID") or folder.name
    if not subjects.STRATEGY_ID_RE.match(sid):
        raise StrategyLoadError(f"strategy id {sid!r} must match {subjects.STRATEGY_ID_RE.pattern}")
    return sid


def _symbols(given: list[str] | None, env: Mapping[str, str], config: dict[str, Any]) -> tuple[str, ...]:
    symbols = given
    if symbols is None:
        raw = env.get("DESK_SYMBOLS", "")
        if raw.strip():
            symbols = [s.strip() for s in raw.split(",") if s.strip()]
        elif isinstance(config.get("symbols"), list):
            symbols = [str(s) for s in config["symbols"]]
        else:
            symbols = []
    for symbol in symbols:
        if not subjects.SYMBOL_RE.match(symbol):
            raise StrategyLoadError(f"symbol {symbol!r} must match {subjects.SYMBOL_RE.pattern}")
    return tuple(symbols)


def _heartbeat_interval(given: float | None, env: Mapping[str, str]) -> float:
    interval = given
    if interval is None:
        try:
            interval = float(env.get("DESK_HEARTBEAT_INTERVAL", "5") or 5)
        except ValueError:
            raise StrategyLoadError("DESK_HEARTBEAT_INTERVAL must be a number of seconds") from None
    if interval <= 0:
        raise StrategyLoadError("DESK_HEARTBEAT_INTERVAL must be positive")
    return interval


def _initial_cash(given: Decimal | None, env: Mapping[str, str], config: dict[str, Any]) -> Decimal:
    if given is not None:
        return given
    raw_cash = env.get("DESK_INITIAL_CASH") or str(config.get("initial_cash") or DEFAULT_INITIAL_CASH)
    try:
        return Decimal(raw_cash)
    except InvalidOperation:
        raise StrategyLoadError(f"initial cash {raw_cash!r} is not a number") from None


@dataclass(frozen=True)
class RunnerConfig:
    """Who the strategy is and what it listens to, from arguments, then env, then config.json."""

    folder: Path
    file: Path
    config: dict[str, Any]
    nats_url: str
    strategy_id: str
    member_id: str
    symbols: tuple[str, ...]
    heartbeat_interval: float
    initial_cash: Decimal

    @classmethod
    def build(
        cls,
        path: str | os.PathLike[str],
        *,
        nats_url: str | None = None,
        strategy_id: str | None = None,
        member_id: str | None = None,
        symbols: list[str] | None = None,
        heartbeat_interval: float | None = None,
        initial_cash: Decimal | None = None,
        env: Mapping[str, str] | None = None,
    ) -> RunnerConfig:
        env = os.environ if env is None else env
        folder, file = resolve_strategy_path(path)
        config = load_config(folder)
        sid = _strategy_id(strategy_id, env, folder)
        mid = member_id or env.get("DESK_MEMBER_ID") or str(config.get("user_id", ""))
        return cls(
            folder=folder,
            file=file,
            config=config,
            nats_url=nats_url or env.get("NATS_URL") or DEFAULT_NATS_URL,
            strategy_id=sid,
            member_id=mid,
            symbols=_symbols(symbols, env, config),
            heartbeat_interval=_heartbeat_interval(heartbeat_interval, env),
            initial_cash=_initial_cash(initial_cash, env, config),
        )

    def market_subjects(self, kind: str) -> list[str]:
        """``md.<kind>.<SYM>`` per symbol, or ``md.<kind>.*`` for every symbol."""
        if not self.symbols:
            return [f"md.{kind}.*"]
        return [f"md.{kind}.{s}" for s in self.symbols]
