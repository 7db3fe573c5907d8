"""The restart policy of one strategy, as a pure state machine with an injected clock.

States (``StrategyState``): STOPPED -> STARTING -> RUNNING; an exit nobody asked for -> CRASHED,
then BACKOFF while a restart waits (1, 2, 4 ... seconds up to ``backoff_max``), then STARTING
again. A run that lasted ``stable_after`` seconds resets the backoff. After ``max_restarts``
consecutive quick crashes the strategy is FAILED: no more restarts until someone starts it. A stop
asked for by a user ends in STOPPED and never restarts.

The supervisor decides; the service acts (starts processes, arms timers) and reports back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from desk.v1 import strategy_pb2

State = strategy_pb2.StrategyState
STOPPED = strategy_pb2.STRATEGY_STATE_STOPPED
STARTING = strategy_pb2.STRATEGY_STATE_STARTING
RUNNING = strategy_pb2.STRATEGY_STATE_RUNNING
CRASHED = strategy_pb2.STRATEGY_STATE_CRASHED
BACKOFF = strategy_pb2.STRATEGY_STATE_BACKOFF
FAILED = strategy_pb2.STRATEGY_STATE_FAILED

#: The states in which a process may exist (a stop must go through the runtime).
ACTIVE = (STARTING, RUNNING)


@dataclass(frozen=True)
class RestartPolicy:
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    stable_after: float = 60.0
    max_restarts: int = 10

    def delay(self, consecutive_crashes: int) -> float:
        """Backoff before the restart that follows the ``consecutive_crashes``-th quick crash."""
        exponent = max(0, consecutive_crashes - 1)
        if exponent > 62:  # 2**62 seconds is past any sensible maximum
            return self.backoff_max
        return float(min(self.backoff_max, self.backoff_initial * (2**exponent)))


@dataclass(frozen=True)
class ExitDecision:
    """What to do after an exit: ``restart_in`` seconds, or nothing (``None``)."""

    state: State
    restart_in: float | None
    message: str


@dataclass
class Supervisor:
    """Lifecycle bookkeeping of one strategy. ``clock`` returns monotonic seconds."""

    policy: RestartPolicy
    clock: Callable[[], float]
    state: State = STOPPED
    pid: int = 0
    restarts: int = 0
    consecutive_crashes: int = 0
    exit_code: int = 0
    last_error: str = ""
    message: str = ""
    started_at: float | None = None
    next_restart_at: float | None = None
    stop_requested: bool = field(default=False)

    def start_requested(self) -> None:
        """A user (or deploy) starts the strategy: any backoff history is forgotten."""
        self.consecutive_crashes = 0
        self.stop_requested = False
        self._starting()

    def restart_due(self) -> bool:
        """The backoff timer fired; True when the restart should go ahead."""
        if self.state != BACKOFF or self.stop_requested:
            return False
        self.restarts += 1
        self._starting()
        return True

    def _starting(self) -> None:
        self.state = STARTING
        self.next_restart_at = None
        self.pid = 0
        self.message = ""

    def started(self, pid: int) -> None:
        self.state = RUNNING
        self.pid = pid
        self.started_at = self.clock()
        self.exit_code = 0

    def stop_request(self) -> bool:
        """A user stops the strategy. Returns True when a running process must be stopped;
        otherwise (backoff, failed, crashed, stopped) it is STOPPED at once."""
        self.stop_requested = True
        self.next_restart_at = None
        if self.state in ACTIVE:
            return True
        self.state = STOPPED
        self.message = "stopped by request"
        return False

    def exited(self, exit_code: int, last_error: str) -> ExitDecision:
        """The process ended (or could not start). Decide between STOPPED, a restart, or FAILED."""
        now = self.clock()
        ran_for = now - self.started_at if self.started_at is not None else 0.0
        self.pid = 0
        self.started_at = None
        self.exit_code = exit_code
        if self.stop_requested:
            self.state = STOPPED
            self.message = "stopped by request"
            return ExitDecision(STOPPED, None, self.message)
        self.last_error = last_error
        if ran_for >= self.policy.stable_after:
            self.consecutive_crashes = 0
        self.consecutive_crashes += 1
        self.state = CRASHED
        if self.consecutive_crashes > self.policy.max_restarts:
            self.state = FAILED
            self.message = (
                f"gave up after {self.policy.max_restarts} restarts: it crashed {self.consecutive_crashes} times in a "
                f"row, each within {self.policy.stable_after:g}s of starting (last exit code {exit_code}); "
                "fix it and start it again"
            )
            return ExitDecision(FAILED, None, self.message)
        delay = self.policy.delay(self.consecutive_crashes)
        self.message = f"crashed with exit code {exit_code}; restart {self.consecutive_crashes} in {delay:g}s"
        return ExitDecision(CRASHED, delay, self.message)

    def backoff(self, delay: float) -> None:
        """The restart timer is armed: BACKOFF until :meth:`restart_due`."""
        if self.state == CRASHED:
            self.state = BACKOFF
            self.next_restart_at = self.clock() + delay

    def seconds_to_restart(self) -> float | None:
        if self.next_restart_at is None:
            return None
        return max(0.0, self.next_restart_at - self.clock())
