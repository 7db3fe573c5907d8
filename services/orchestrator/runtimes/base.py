"""The runtime protocol: what the orchestrator needs from anything that runs a strategy."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from desk.v1 import strategy_pb2

# "ValueError: boom", "strategy_sdk.errors.ConfigError: ...", "Error: ...", "FATAL ...".
_ERROR_LINE_RE = re.compile(
    r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b|.*\b(error|fatal|critical)\b)", re.IGNORECASE
)


def is_error_line(line: str) -> bool:
    """Whether a line a strategy wrote reads as its error (a traceback's last line, say)."""
    return bool(line.strip()) and not line[:1].isspace() and bool(_ERROR_LINE_RE.match(line.strip()))


def last_error_line(lines: Iterable[str]) -> str:
    """The last error-looking line, else the last non-blank one ("" when there is none)."""
    last_error = last_line = ""
    for line in lines:
        if line.strip():
            last_line = line.strip()
            if is_error_line(line):
                last_error = line.strip()
    return last_error or last_line


@dataclass(frozen=True)
class RunHandle:
    """One run of one strategy (a process, a container)."""

    strategy_id: str
    pid: int = 0
    container_id: str = ""
    started_ns: int = 0


@dataclass(frozen=True)
class ExitInfo:
    """How a run ended: ``exit_code`` (negative = killed by that signal), a ``reason`` for people,
    and ``last_error``, the last error line it wrote (empty after a clean exit)."""

    exit_code: int
    reason: str
    last_error: str = ""


class Runtime(Protocol):
    @property
    def name(self) -> str:
        """ "process", "docker"..."""
        ...

    @property
    def confinement(self) -> str:
        """What confines a strategy ("bwrap sandbox", "docker container"...); "none: <why>" when nothing does."""
        ...

    async def start(self, spec: strategy_pb2.StrategySpec, secrets: dict[str, str] | None = None) -> RunHandle:
        """Start the strategy; raises (any exception, with a clear message) when it cannot.

        ``secrets`` (its NATS credentials) go into its environment only: never into the spec,
        which is published on the bus."""
        ...

    async def stop(self, handle: RunHandle, timeout: float) -> None:
        """Ask the run to stop (SIGTERM or equivalent), force it after ``timeout`` seconds."""
        ...

    async def wait(self, handle: RunHandle) -> ExitInfo:
        """Wait for the run to end (whoever ended it) and say how it ended."""
        ...

    async def logs(self, strategy_id: str, tail: int) -> list[str]:
        """The last ``tail`` lines the strategy wrote (across its runs)."""
        ...

    async def cleanup(self) -> None:
        """Remove what a previous orchestrator left running (called once at start)."""
        ...
