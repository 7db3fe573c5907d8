"""The restart policy and heartbeat watchdog of one strategy, as a pure state machine with an
injected clock.

States (``StrategyState``): STOPPED -> STARTING (launched, no heartbeat yet) -> RUNNING (its first
heartbeat arrived); an exit nobody asked for -> CRASHED, then BACKOFF while a restart waits (1, 2, 4
... seconds up to ``backoff_max``), then STARTING again. A run that lasted ``stable_after`` seconds
resets the backoff. After ``max_restarts`` consecutive quick crashes the strategy is FAILED: no more
restarts until someone starts it. A stop asked for by a user ends in STOPPED and never restarts.

Decisions about runs that never got going:

* A run started by a user (deploy, start, restart) that **exits before its first heartbeat** is
  FAILED at once, without a restart loop: its code cannot load (a SyntaxError, no Strategy class,
  an import error, on_start failing) and restarting it cannot help. The one exception is exit code
  1, the SDK's "cannot reach NATS", which may pass: that is an ordinary crash, retried with backoff.
  Runs started by the restart timer (after a crash) are ordinary crashes whatever their exit.
* **Watchdog** (:meth:`Supervisor.watchdog`, called periodically): a run whose heartbeats stop for
  ``heartbeat_misses`` intervals of ``heartbeat_interval`` (a hook stuck in ``while True``, a
  deadlock), or that sends none within ``start_timeout`` of starting, is declared hung; the service
  kills it and its exit counts as a crash (backoff, then FAILED after ``max_restarts``), with
  ``last_error`` saying "no heartbeat for ...". A start timeout is not FAILED at once: a slow start
  (a busy machine) may pass.

``last_error`` is the current run's: it is cleared when a run reaches RUNNING (its first heartbeat),
whoever started it, and set again when a run ends on its own. So a strategy that recovered after an
automatic restart no longer shows the error it recovered from; a crash loop still shows it while it
waits to restart (CRASHED, BACKOFF, FAILED), and ``restarts`` counts the restarts. The error it
replaced is kept in :attr:`Supervisor.previous_error` (the service logs it, ``strategy.recovered``),
and every crash is in the orchestrator's log (``strategy.crashed``) and the strategy's own.

The supervisor decides; the service acts (starts processes, kills hung ones, arms timers) and
reports back.
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
#: The SDK runner's exit code for "cannot reach NATS" (strategy_sdk.runner.EXIT_CONNECT): transient.
EXIT_CONNECT = 1


def _secs(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


@dataclass(frozen=True)
class RestartPolicy:
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    stable_after: float = 60.0
    max_restarts: int = 10
    heartbeat_interval: float = 5.0
    heartbeat_misses: int = 3
    start_timeout: float = 30.0

    @property
    def heartbeat_timeout(self) -> float:
        """Seconds without a heartbeat after which a running strategy is declared hung."""
        return self.heartbeat_interval * self.heartbeat_misses

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
    #: The current run was started by a user (deploy, start, restart), not by the restart timer.
    requested_run: bool = False
    #: Monotonic time of the current run's last heartbeat (None: none yet).
    last_heartbeat_at: float | None = None
    #: Why the watchdog declared the current run hung ("" = it did not).
    hung_reason: str = ""
    #: The last error a run recovered from (cleared from ``last_error`` when that run reached RUNNING).
    previous_error: str = ""

    def start_requested(self) -> None:
        """A user (or deploy) starts the strategy: any backoff history is forgotten."""
        self.consecutive_crashes = 0
        self.stop_requested = False
        self.requested_run = True
        self._starting()

    def restart_due(self) -> bool:
        """The backoff timer fired; True when the restart should go ahead."""
        if self.state != BACKOFF or self.stop_requested:
            return False
        self.restarts += 1
        self.requested_run = False
        self._starting()
        return True

    def _starting(self) -> None:
        self.state = STARTING
        self.next_restart_at = None
        self.pid = 0
        self.message = ""
        self.started_at = None
        self.last_heartbeat_at = None
        self.hung_reason = ""

    def started(self, pid: int) -> None:
        """The runtime launched the run; RUNNING once it heartbeats (it may already have)."""
        self.state = RUNNING if self.last_heartbeat_at is not None else STARTING
        self.pid = pid
        self.started_at = self.clock()
        self.exit_code = 0
        if self.state == RUNNING and self.last_error:  # it heartbeated before the runtime said it started
            self.previous_error, self.last_error = self.last_error, ""

    def heartbeat(self) -> bool:
        """A heartbeat of this strategy arrived. Returns True when it is the current run's first.

        Heartbeats outside a run (a dying process's last one, during backoff) and of a run already
        declared hung (it is being killed) are ignored."""
        if self.state not in ACTIVE or self.stop_requested or self.hung_reason:
            return False
        now = self.clock()
        first = self.last_heartbeat_at is None
        self.last_heartbeat_at = now
        if self.started_at is not None:  # launched (a container has no pid: started_at says it)
            self.state = RUNNING
        if self.last_error and self.state == RUNNING:  # the error shown is the current run's: it has none
            self.previous_error = self.last_error
            self.last_error = ""
        return first

    @property
    def heartbeat_seen(self) -> bool:
        return self.last_heartbeat_at is not None

    def watchdog(self) -> str | None:
        """Periodic check: the reason the current run must be killed as hung, once; else None."""
        if self.state not in ACTIVE or self.stop_requested or self.hung_reason:
            return None
        if self.started_at is None:
            return None
        now = self.clock()
        policy = self.policy
        if self.last_heartbeat_at is None:
            waited = now - self.started_at
            if waited < policy.start_timeout:
                return None
            reason = (
                f"no heartbeat within {_secs(waited)} s of starting (ORCH_START_TIMEOUT {policy.start_timeout:g} s)"
            )
        else:
            silent = now - self.last_heartbeat_at
            if silent < policy.heartbeat_timeout:
                return None
            reason = (
                f"no heartbeat for {_secs(silent)} s ({policy.heartbeat_misses} intervals of "
                f"{policy.heartbeat_interval:g} s)"
            )
        self.hung_reason = reason
        self.message = f"{reason}: killing it"
        return reason

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
        hung = self.hung_reason
        self.last_error = hung or last_error or f"exited with code {exit_code}"
        if self.requested_run and not hung and not self.heartbeat_seen and exit_code != EXIT_CONNECT:
            self.state = FAILED
            self.consecutive_crashes += 1
            self.message = (
                f"exited with code {exit_code} before its first heartbeat: it cannot start"
                f"{' (' + last_error + ')' if last_error else ''}; not restarted: fix it and deploy it again"
            )
            return ExitDecision(FAILED, None, self.message)
        if ran_for >= self.policy.stable_after:
            self.consecutive_crashes = 0
        self.consecutive_crashes += 1
        self.state = CRASHED
        if self.consecutive_crashes > self.policy.max_restarts:
            self.state = FAILED
            if hung:
                self.last_error = f"{hung}: killed"
            self.message = (
                f"gave up after {self.policy.max_restarts} restarts: it crashed {self.consecutive_crashes} times in a "
                f"row, each within {self.policy.stable_after:g}s of starting (last exit code {exit_code}); "
                "fix it and start it again"
            )
            return ExitDecision(FAILED, None, self.message)
        delay = self.policy.delay(self.consecutive_crashes)
        if hung:
            self.last_error = f"{hung}: restarted"
            self.message = f"{hung}: killed; restart {self.consecutive_crashes} in {delay:g}s"
        else:
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
