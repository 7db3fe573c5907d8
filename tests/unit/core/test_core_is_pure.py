"""desk.core is the pure engine: importing it pulls in no NATS, no asyncio bus code and no service."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import desk.core

ROOT = Path(__file__).resolve().parents[3]
CORE_MODULES = sorted(f"desk.core.{m.name}" for m in pkgutil.iter_modules(desk.core.__path__))
#: desk.bus modules that are async or talk to NATS; desk.core may use only decimals, errors, subjects.
ASYNC_BUS_MODULES = ("desk.bus.connect", "desk.bus.lifecycle", "desk.bus.micro", "desk.bus.kv")


def test_every_core_module_is_listed() -> None:
    assert CORE_MODULES == [
        "desk.core.books",
        "desk.core.ids",
        "desk.core.marketdata",
        "desk.core.matching",
        "desk.core.orders",
        "desk.core.partition",
        "desk.core.risk",
    ]


def test_importing_desk_core_loads_neither_nats_nor_the_async_bus_nor_a_service() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {CORE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('nats', 'services', 'structlog', 'pydantic')\n"
        f"             or m in {ASYNC_BUS_MODULES!r})\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_desk_core_imports_only_the_standard_library_desk_v1_and_the_pure_bus_modules() -> None:
    allowed_desk = ("desk.v1", "desk.core", "desk.bus.decimals", "desk.bus.errors", "desk.bus.subjects")
    code = (
        "import importlib, sys\n"
        "before = set(sys.modules)\n"
        f"for name in {CORE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print('\\n'.join(sorted(set(sys.modules) - before)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = out.stdout.split()
    stdlib = sys.stdlib_module_names
    foreign = [
        m
        for m in loaded
        if m.split(".")[0] not in stdlib
        and m.split(".")[0] not in ("google", "desk")  # google: protobuf
        and not m.startswith("_")
    ]
    assert foreign == []
    desk_modules = [m for m in loaded if m.split(".")[0] == "desk" and m not in ("desk", "desk.bus")]
    assert [m for m in desk_modules if not any(m == a or m.startswith(a + ".") for a in allowed_desk)] == []
    assert not any(m == "asyncio" or m.startswith("asyncio.") for m in loaded)
