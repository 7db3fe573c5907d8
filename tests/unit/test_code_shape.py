"""No function or method over 80 lines outside tests (issue 16: a long function is split along its seams).

A function's length is counted from its ``def`` line to its last line (``end_lineno - lineno + 1``):
its docstring, comments and blank lines count, its decorators do not (``ast`` puts ``lineno`` on the
``def``). Nested functions are measured on their own, and also count towards the one around them.

Walked: the desk's own source, the bench and its peer scripts included. Left out: the generated
protobuf code (``desk/v1``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WALKED = ("desk", "services", "strategy_sdk", "desk_client", "tools", "bench")
LEFT_OUT = ("desk/v1",)
MAX_LINES = 80


def _source_files() -> list[Path]:
    files = []
    for top in WALKED:
        for path in sorted((ROOT / top).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if any(relative == out or relative.startswith(out + "/") for out in LEFT_OUT):
                continue
            if any(part.startswith(".") for part in path.relative_to(ROOT).parts):
                continue  # .venv-peers and other tool folders
            files.append(path)
    return files


def long_functions(max_lines: int = MAX_LINES) -> dict[str, int]:
    """``path:qualified name`` -> lines, for every function or method longer than ``max_lines``."""
    found: dict[str, int] = {}
    for path in _source_files():
        relative = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=relative)
        for name, node in _functions(tree):
            assert node.end_lineno is not None
            lines = node.end_lineno - node.lineno + 1
            if lines > max_lines:
                found[f"{relative}:{name}"] = lines
    return found


def _functions(tree: ast.AST, prefix: str = "") -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function in ``tree`` with its qualified name (``Class.method``, ``outer.inner``)."""
    out: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.append((prefix + node.name, node))
            out.extend(_functions(node, f"{prefix}{node.name}."))
        elif isinstance(node, ast.ClassDef):
            out.extend(_functions(node, f"{prefix}{node.name}."))
        else:
            out.extend(_functions(node, prefix))
    return out


def test_the_walk_reads_the_source_and_leaves_out_generated_code() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in _source_files()}
    assert "services/broker_gateway/service.py" in names
    assert "desk/bus/kv.py" in names
    assert "bench/peers/nautilus_crossover.py" in names
    assert not any(name.startswith("desk/v1/") for name in names)


def test_no_function_is_longer_than_80_lines() -> None:
    found = long_functions()
    listing = "\n".join(f"  {name}: {lines} lines" for name, lines in sorted(found.items()))
    assert not found, f"functions over {MAX_LINES} lines (split them along their seams):\n{listing}"
