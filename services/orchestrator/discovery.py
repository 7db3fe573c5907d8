"""Find and validate strategies: ``<root>/<strategy_id>/strategy.py`` + ``config.json``.

:func:`validate_strategy` is pure (text in, spec or error out); :func:`discover` only adds the
reading of the folder. A bad strategy is reported with a clear message and never stops the others.

``config.json`` keeps the old desk's keys (``user_id`` -> member_id, ``name``, ``description``,
``version``, ``env``) and accepts new optional ones: ``initial_cash``, ``risk``
(``max_order_notional``, ``max_position_notional``, ``max_orders_per_minute``, ``allow_short``),
``symbols``, ``enabled`` (default true), ``runtime`` and ``site`` (another machine's Docker engine:
services.orchestrator.sites). Numbers are read as Decimal, exactly.

The spec it builds must also pass :func:`desk.specs.validate_spec` (the rule every service shares:
its size, its limits...), and a ``runtime`` other than the orchestrator's own is refused: a strategy
that asks for ``docker`` is never run unconfined as a local process.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from desk.bus import subjects
from desk.bus.decimals import fmt, parse_decimal
from desk.bus.errors import DeskError
from desk.specs import ENV_NAME_RE, FORBIDDEN_ENV_PREFIXES, MEMBER_ID_RE, RUNTIMES, spec_problems
from desk.v1 import strategy_pb2

STRATEGY_FILE = "strategy.py"
CONFIG_FILE = "config.json"
__all__ = [
    "ENV_NAME_RE",
    "FORBIDDEN_ENV_PREFIXES",
    "MEMBER_ID_RE",
    "RUNTIMES",
    "discover",
    "load_folder",
    "validate_strategy",
]
# A class deriving from the SDK's Strategy: `class X(Strategy)` or `class X(strategy_sdk.Strategy)`.
_SDK_SUBCLASS_RE = re.compile(r"^\s*class\s+\w+\s*\([^)]*\bStrategy\s*\)", re.MULTILINE)
_RISK_KEYS = ("max_order_notional", "max_position_notional", "max_orders_per_minute", "allow_short")


class StrategyConfigError(ValueError):
    """A strategy folder that cannot be deployed; the message says what to fix."""


@dataclass(frozen=True)
class DiscoveredStrategy:
    spec: strategy_pb2.StrategySpec
    enabled: bool


@dataclass
class Discovery:
    """Valid strategies by id, and an error message per invalid folder."""

    strategies: dict[str, DiscoveredStrategy] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def enabled(self) -> list[DiscoveredStrategy]:
        return [s for s in self.strategies.values() if s.enabled]


def is_legacy(source: str) -> bool:
    """Old-desk form: uses ``desk_client`` and defines no subclass of ``strategy_sdk.Strategy``."""
    return "desk_client" in source and not _SDK_SUBCLASS_RE.search(source)


def _string(config: dict[str, Any], key: str, default: str = "") -> str:
    value = config.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise StrategyConfigError(f"{key} must be a string, got {type(value).__name__} {value!r}")
    return value


def _decimal(key: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise StrategyConfigError(f"{key} must be a decimal number, got {type(value).__name__} {value!r}")
    try:
        number = parse_decimal(key, str(value))
    except DeskError as err:
        raise StrategyConfigError(err.message) from None
    return fmt(number)


def _env(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StrategyConfigError(f"env must be an object of string values, got {type(value).__name__}")
    env: dict[str, str] = {}
    for key, item in value.items():
        if not ENV_NAME_RE.match(key):
            raise StrategyConfigError(f"env key {key!r} is not a valid environment variable name")
        if key.upper().startswith(FORBIDDEN_ENV_PREFIXES):
            raise StrategyConfigError(f"env.{key}: broker keys are not allowed in a strategy's environment")
        if not isinstance(item, str):
            raise StrategyConfigError(
                f'env.{key} must be a string, got {type(item).__name__} {item!r} (quote it: "{item}")'
            )
        env[key] = item
    return env


def _risk(value: Any) -> strategy_pb2.RiskLimits:
    risk = strategy_pb2.RiskLimits()
    if value is None:
        return risk
    if not isinstance(value, dict):
        raise StrategyConfigError(f"risk must be an object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(_RISK_KEYS))
    if unknown:
        raise StrategyConfigError(f"risk has unknown keys {unknown} (known: {', '.join(_RISK_KEYS)})")
    for key in ("max_order_notional", "max_position_notional"):
        if value.get(key) is not None:
            setattr(risk, key, _decimal(f"risk.{key}", value[key]))
    per_minute = value.get("max_orders_per_minute")
    if per_minute is not None:
        if isinstance(per_minute, bool) or not isinstance(per_minute, int) or not 1 <= per_minute < 2**32:
            raise StrategyConfigError(
                f"risk.max_orders_per_minute must be a whole number >= 1, got {per_minute!r} "
                "(leave it out to use the desk's default)"
            )
        risk.max_orders_per_minute = per_minute
    allow_short = value.get("allow_short")
    if allow_short is not None:
        if not isinstance(allow_short, bool):
            raise StrategyConfigError(f"risk.allow_short must be true or false, got {allow_short!r}")
        risk.allow_short = allow_short
    return risk


def _symbols(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise StrategyConfigError(f"symbols must be a list of symbols, got {type(value).__name__}")
    bad = [s for s in value if not isinstance(s, str) or not subjects.SYMBOL_RE.match(s)]
    if bad:
        raise StrategyConfigError(f"symbols {bad!r} are not valid symbols (upper-case tickers like AAPL)")
    return list(dict.fromkeys(value))


_MEMORY_RE = re.compile(r"^[1-9][0-9]*[kmg]?$")


def _resources(value: Any) -> strategy_pb2.Resources:
    """``resources`` {memory: "256m", cpus: "0.5", pids: 64}: container limits of the docker runtime."""
    resources = strategy_pb2.Resources()
    if value is None:
        return resources
    if not isinstance(value, dict):
        raise StrategyConfigError(f"resources must be an object, got {type(value).__name__}")
    unknown = set(value) - {"memory", "cpus", "pids"}
    if unknown:
        raise StrategyConfigError(f"resources has unknown keys {sorted(unknown)}: use memory, cpus, pids")
    memory = value.get("memory")
    if memory is not None:
        if not isinstance(memory, str) or not _MEMORY_RE.match(memory.lower()):
            raise StrategyConfigError(f'resources.memory must look like "256m" or "1g", got {memory!r}')
        resources.memory = memory.lower()
    cpus = value.get("cpus")
    if cpus is not None:
        number = _decimal("resources.cpus", cpus)
        if Decimal(number) > 64:
            raise StrategyConfigError(f"resources.cpus {number} is more than a machine has")
        resources.cpus = number
    pids = value.get("pids")
    if pids is not None:
        if isinstance(pids, bool) or not isinstance(pids, int) or not 8 <= pids <= 4096:
            raise StrategyConfigError(f"resources.pids must be a whole number from 8 to 4096, got {pids!r}")
        resources.pids = pids
    return resources


def validate_strategy(
    strategy_id: str, config_text: str, strategy_source: str, path: str = "", default_runtime: str = "process"
) -> DiscoveredStrategy:
    """Build the :class:`StrategySpec` of one strategy or raise :class:`StrategyConfigError`."""
    if not subjects.STRATEGY_ID_RE.match(strategy_id):
        raise StrategyConfigError(
            f"folder name {strategy_id!r} is not a valid strategy id: use 1-32 characters of a-z, 0-9, _ and -, "
            "starting with a letter or digit"
        )
    try:
        config = json.loads(config_text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise StrategyConfigError(
            f"{CONFIG_FILE} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(config, dict):
        raise StrategyConfigError(f"{CONFIG_FILE} must hold a JSON object, got {type(config).__name__}")
    if "user_id" not in config or config["user_id"] in (None, ""):
        raise StrategyConfigError(f"{CONFIG_FILE} has no user_id (the member who owns the strategy)")
    member_id = config["user_id"]
    if not isinstance(member_id, str) or not MEMBER_ID_RE.match(member_id):
        raise StrategyConfigError(
            f"user_id {member_id!r} must be a string of 1-64 letters, digits, '_', '.', '@' or '-'"
        )
    enabled = config.get("enabled", True)
    if not isinstance(enabled, bool):
        raise StrategyConfigError(f"enabled must be true or false, got {enabled!r}")
    runtime = _string(config, "runtime") or default_runtime
    if runtime not in RUNTIMES:
        raise StrategyConfigError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if runtime != default_runtime:
        raise StrategyConfigError(
            f"strategy {strategy_id} asks for runtime {runtime} but this desk runs strategies with "
            f"{default_runtime}; remove runtime from {CONFIG_FILE} or run the desk under compose"
            if runtime == "docker"
            else f"strategy {strategy_id} asks for runtime {runtime} but this desk runs strategies with "
            f"{default_runtime}; remove runtime from {CONFIG_FILE}"
        )
    spec = strategy_pb2.StrategySpec(
        strategy_id=strategy_id,
        member_id=member_id,
        name=_string(config, "name") or strategy_id,
        description=_string(config, "description"),
        version=_string(config, "version"),
        env=_env(config.get("env")),
        initial_cash=_decimal("initial_cash", config["initial_cash"]) if config.get("initial_cash") is not None else "",
        risk=_risk(config.get("risk")),
        symbols=_symbols(config.get("symbols")),
        legacy=is_legacy(strategy_source),
        path=path,
        runtime=runtime,
        resources=_resources(config.get("resources")),
        site=_string(config, "site"),
    )
    problems = spec_problems(spec)
    if problems:
        raise StrategyConfigError("; ".join(problems))
    return DiscoveredStrategy(spec=spec, enabled=enabled)


def discover(root: Path, default_runtime: str = "process") -> Discovery:
    """Every strategy folder under ``root``; folders with neither file (and hidden ones) are ignored."""
    found = Discovery()
    if not root.is_dir():
        return found
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or folder.name.startswith((".", "_")):
            continue
        strategy_file, config_file = folder / STRATEGY_FILE, folder / CONFIG_FILE
        if not strategy_file.is_file() and not config_file.is_file():
            continue
        try:
            found.strategies[folder.name] = load_folder(folder.name, folder, default_runtime)
        except StrategyConfigError as exc:
            found.errors[folder.name] = str(exc)
    return found


def load_folder(strategy_id: str, folder: Path, default_runtime: str = "process") -> DiscoveredStrategy:
    """One strategy folder (``strategy.py`` + ``config.json``) as ``strategy_id``, or StrategyConfigError."""
    strategy_file, config_file = folder / STRATEGY_FILE, folder / CONFIG_FILE
    if not strategy_file.is_file():
        raise StrategyConfigError(f"{STRATEGY_FILE} is missing")
    if not config_file.is_file():
        raise StrategyConfigError(f"{CONFIG_FILE} is missing")
    try:
        config_text = config_file.read_text(encoding="utf-8")
        source = strategy_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StrategyConfigError(f"cannot read the strategy's files: {exc}") from None
    return validate_strategy(strategy_id, config_text, source, str(folder.resolve()), default_runtime)
