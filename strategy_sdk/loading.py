"""Finding and importing a member's strategy: its folder and file, old-desk or SDK, its Strategy class.

No I/O beyond reading and importing the strategy's own files; nothing here touches NATS.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType

from strategy_sdk.strategy import Strategy

__all__ = ["EXIT_LOAD", "StrategyLoadError", "is_legacy_source", "load_strategy_class", "resolve_strategy_path"]

#: The runner's exit code when the strategy cannot be loaded or its ``on_start`` fails.
EXIT_LOAD = 2


class StrategyLoadError(Exception):
    """The strategy cannot be run: missing files, bad config, import failure, no Strategy class."""


def resolve_strategy_path(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(folder, strategy.py) for a folder holding strategy.py, or for a strategy.py file itself."""
    p = Path(path).resolve()
    if p.is_dir():
        file = p / "strategy.py"
        if not file.is_file():
            raise StrategyLoadError(f"{p} has no strategy.py")
        return p, file
    if p.is_file() and p.suffix == ".py":
        return p.parent, p
    raise StrategyLoadError(f"{path} is neither a strategy folder nor a .py file")


def is_legacy_source(source: str, filename: str = "strategy.py") -> bool:
    """True for an old-desk strategy: it imports desk_client and not strategy_sdk.

    Decided from the syntax tree, without importing: an old strategy reads stdin at import time.
    """
    tree = ast.parse(source, filename)
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module.split(".")[0])
    return "desk_client" in modules and "strategy_sdk" not in modules


def _import_file(file: Path, module_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise StrategyLoadError(f"cannot import {file}")
    module = importlib.util.module_from_spec(spec)
    # The strategy's own helper modules, next to it, must be importable.
    if str(file.parent) not in sys.path:
        sys.path.insert(0, str(file.parent))
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # SystemExit: a strategy calling sys.exit() while importing
        sys.modules.pop(module_name, None)
        detail = "".join(traceback.format_exception(exc))
        raise StrategyLoadError(f"importing {file} failed: {exc!r}\n{detail}") from exc
    return module


def load_strategy_class(file: Path, module_name: str = "desk_strategy") -> type[Strategy]:
    """Import ``file`` and return the one Strategy subclass it defines."""
    module = _import_file(file, module_name)
    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, Strategy) and obj is not Strategy and obj.__module__ == module_name
    ]
    if not found:
        raise StrategyLoadError(
            f"{file} defines no subclass of strategy_sdk.Strategy (and does not use desk_client, "
            "so it is not an old-desk strategy either)"
        )
    if len(found) > 1:
        names = ", ".join(sorted(c.__name__ for c in found))
        raise StrategyLoadError(f"{file} defines several Strategy subclasses ({names}); keep exactly one")
    return found[0]
