"""The runtime protocol: what the orchestrator needs from anything that runs a strategy."""

from __future__ import annotations

import collections
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


#: Lines a follow reply holds at most, and their bytes (a reply stays well under the 64 KiB message limit).
FOLLOW_LINES = 1000
FOLLOW_BYTES = 48 * 1024


@dataclass(frozen=True)
class LogSlice:
    """Lines of a strategy's log and the cursor after them (`desk logs -f`): ``next`` is how many lines
    the log has had so far; ``skipped`` the lines after the asked cursor no longer held; ``more`` says
    the reply was cut to fit and more lines are there now."""

    lines: list[str]
    next: int
    skipped: int = 0
    more: bool = False


class LogRing:
    """The last ``size`` lines of a strategy's log, each numbered: line ``n`` (from 0) of everything
    appended since this ring was made. A reader that passes back ``next`` gets each line once."""

    def __init__(self, size: int) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=size)
        self.total = 0  # lines ever appended

    def append(self, line: str) -> None:
        self.lines.append(line)
        self.total += 1

    def extend(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.append(line)

    def tail(self, count: int) -> list[str]:
        return list(self.lines)[-count:] if count > 0 else []

    def after(self, cursor: int, max_lines: int = FOLLOW_LINES, max_bytes: int = FOLLOW_BYTES) -> LogSlice:
        """The lines after ``cursor`` (a ``next`` of before), at most ``max_lines`` and about
        ``max_bytes``; a cursor beyond the count (another ring's) starts from the oldest line held."""
        first = self.total - len(self.lines)  # number of the oldest line held
        if cursor > self.total:
            cursor = first
        start = max(cursor, first)
        lines: list[str] = []
        size = 0
        for line in list(self.lines)[start - first :]:
            size += len(line.encode("utf-8", "replace")) + 4
            if lines and (len(lines) >= max_lines or size > max_bytes):
                break
            lines.append(line)
        end = start + len(lines)
        return LogSlice(lines=lines, next=end, skipped=start - cursor, more=end < self.total)


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

    @property
    def log_epoch(self) -> str:
        """Which count the cursors of :meth:`follow_logs` are (new for every runtime made)."""
        ...

    async def follow_logs(self, strategy_id: str, after: int | None, tail: int) -> LogSlice:
        """``after`` None: the last ``tail`` lines and the cursor after them; else the lines after the
        cursor ``after`` (the ``next`` of an earlier slice); raises DeskError where it cannot follow."""
        ...

    async def cleanup(self) -> None:
        """Remove what a previous orchestrator left running (called once at start)."""
        ...
