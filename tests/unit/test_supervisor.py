"""The restart policy and the heartbeat watchdog as a pure state machine, driven by a fake clock."""

from __future__ import annotations

from services.orchestrator.supervisor import (
    BACKOFF,
    CRASHED,
    FAILED,
    RUNNING,
    STARTING,
    STOPPED,
    RestartPolicy,
    Supervisor,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _running(policy: RestartPolicy | None = None) -> tuple[Supervisor, FakeClock]:
    clock = FakeClock()
    sup = Supervisor(policy or RestartPolicy(), clock)
    sup.start_requested()
    assert sup.state == STARTING
    sup.started(pid=42)
    assert sup.state == STARTING and sup.pid == 42  # launched; RUNNING once it heartbeats
    assert sup.heartbeat() is True
    assert sup.state == RUNNING
    return sup, clock


def _crash_quickly(sup: Supervisor, clock: FakeClock, run_for: float = 0.5) -> float | None:
    clock.now += run_for
    decision = sup.exited(1, "ValueError: boom")
    if decision.restart_in is None:
        return None
    assert sup.state == CRASHED
    sup.backoff(decision.restart_in)
    assert sup.state == BACKOFF
    clock.now += decision.restart_in
    assert sup.restart_due()
    sup.started(pid=sup.restarts + 100)
    return decision.restart_in


def test_quick_crashes_back_off_exponentially_up_to_the_maximum() -> None:
    sup, clock = _running(RestartPolicy(max_restarts=20))
    delays = [_crash_quickly(sup, clock) for _ in range(9)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert sup.restarts == 9


def test_a_crash_records_the_exit_code_and_last_error_and_the_restart_time() -> None:
    sup, clock = _running()
    clock.now += 3
    decision = sup.exited(3, "RuntimeError: nope")
    assert (decision.state, decision.restart_in) == (CRASHED, 1.0)
    assert (sup.exit_code, sup.last_error, sup.pid) == (3, "RuntimeError: nope", 0)
    sup.backoff(1.0)
    assert sup.seconds_to_restart() == 1.0
    clock.now += 0.25
    assert sup.seconds_to_restart() == 0.75


def test_a_stable_run_resets_the_backoff() -> None:
    sup, clock = _running()
    assert [_crash_quickly(sup, clock) for _ in range(4)] == [1, 2, 4, 8]
    assert _crash_quickly(sup, clock, run_for=60.0) == 1
    assert _crash_quickly(sup, clock) == 2


def test_too_many_quick_crashes_fail_the_strategy_for_good() -> None:
    sup, clock = _running(RestartPolicy(max_restarts=3))
    assert [_crash_quickly(sup, clock) for _ in range(3)] == [1, 2, 4]
    clock.now += 1
    decision = sup.exited(1, "ValueError: boom")
    assert decision.state == FAILED and decision.restart_in is None and sup.state == FAILED
    assert "gave up after 3 restarts" in decision.message
    assert sup.restarts == 3 and sup.last_error == "ValueError: boom"
    assert not sup.restart_due()
    sup.start_requested()  # a user starts it again: a fresh budget
    sup.started(7)
    sup.heartbeat()
    assert _crash_quickly(sup, clock) == 1


def test_a_user_stop_while_running_ends_stopped_without_a_restart() -> None:
    sup, clock = _running()
    assert sup.stop_request() is True
    clock.now += 1
    decision = sup.exited(-15, "")
    assert decision.state == STOPPED and decision.restart_in is None and sup.state == STOPPED
    assert sup.last_error == ""


def test_a_user_stop_during_backoff_cancels_the_restart() -> None:
    sup, clock = _running()
    clock.now += 1
    decision = sup.exited(1, "boom")
    assert decision.restart_in is not None
    sup.backoff(decision.restart_in)
    assert sup.stop_request() is False
    assert sup.state == STOPPED and sup.seconds_to_restart() is None
    clock.now += 10
    assert not sup.restart_due() and sup.state == STOPPED


def test_zero_max_restarts_fails_on_the_first_crash() -> None:
    sup, clock = _running(RestartPolicy(max_restarts=0))
    clock.now += 1
    assert sup.exited(1, "boom").state == FAILED


# -- exits before the first heartbeat ------------------------------------------------------------


def test_a_requested_start_that_exits_before_its_first_heartbeat_fails_without_a_restart() -> None:
    clock = FakeClock()
    sup = Supervisor(RestartPolicy(), clock)
    sup.start_requested()
    sup.started(pid=9)
    clock.now += 0.4
    decision = sup.exited(2, "ModuleNotFoundError: No module named 'nope'")
    assert (decision.state, decision.restart_in, sup.state) == (FAILED, None, FAILED)
    assert sup.last_error == "ModuleNotFoundError: No module named 'nope'"
    assert "before its first heartbeat" in sup.message and "not restarted" in sup.message
    assert "exited with code 2" in sup.message and not sup.restart_due()


def test_cannot_reach_nats_before_the_first_heartbeat_is_an_ordinary_crash() -> None:
    clock = FakeClock()
    sup = Supervisor(RestartPolicy(), clock)
    sup.start_requested()
    sup.started(pid=9)
    decision = sup.exited(1, "nats.connect_failed")
    assert (decision.state, decision.restart_in) == (CRASHED, 1.0)


def test_an_automatic_restart_that_exits_before_its_heartbeat_is_an_ordinary_crash() -> None:
    sup, clock = _running()
    clock.now += 1
    sup.backoff(sup.exited(2, "boom").restart_in or 0)
    clock.now += 1
    assert sup.restart_due()
    sup.started(pid=43)
    decision = sup.exited(2, "boom again")
    assert decision.state == CRASHED and decision.restart_in == 2.0


def test_a_heartbeat_before_the_runtime_returns_still_counts() -> None:
    clock = FakeClock()
    sup = Supervisor(RestartPolicy(), clock)
    sup.start_requested()
    assert sup.heartbeat() is True and sup.state == STARTING
    sup.started(pid=5)
    assert sup.state == RUNNING and sup.heartbeat() is False


def test_heartbeats_outside_a_run_are_ignored() -> None:
    sup, clock = _running()
    clock.now += 1
    sup.backoff(sup.exited(1, "boom").restart_in or 0)
    assert sup.heartbeat() is False and sup.state == BACKOFF


# -- the watchdog --------------------------------------------------------------------------------

POLICY = RestartPolicy(heartbeat_interval=5.0, heartbeat_misses=3, start_timeout=30.0, max_restarts=2)


def test_a_running_strategy_is_hung_after_the_missed_intervals_and_its_exit_is_a_crash() -> None:
    sup, clock = _running(POLICY)
    clock.now += 14.9
    assert sup.watchdog() is None
    sup.heartbeat()  # a beat resets the count
    clock.now += 14.9
    assert sup.watchdog() is None
    clock.now += 0.2
    reason = sup.watchdog()
    assert reason == "no heartbeat for 15 s (3 intervals of 5 s)"
    assert sup.watchdog() is None  # declared once per run
    assert sup.heartbeat() is False  # a late beat does not save a run being killed
    clock.now += 5
    decision = sup.exited(-9, "")
    assert (decision.state, decision.restart_in) == (CRASHED, 1.0)
    assert sup.last_error == "no heartbeat for 15 s (3 intervals of 5 s): restarted"
    assert sup.consecutive_crashes == 1 and "killed; restart 1 in 1s" in sup.message


def test_a_strategy_that_never_heartbeats_is_hung_after_the_start_timeout() -> None:
    clock = FakeClock()
    sup = Supervisor(POLICY, clock)
    sup.start_requested()
    sup.started(pid=3)
    clock.now += 29
    assert sup.watchdog() is None
    clock.now += 1
    assert sup.watchdog() == "no heartbeat within 30 s of starting (ORCH_START_TIMEOUT 30 s)"
    decision = sup.exited(-9, "")
    # killed by the watchdog, not exited by itself: a crash with a restart, not FAILED at once
    assert decision.state == CRASHED and decision.restart_in == 1.0
    assert sup.last_error.startswith("no heartbeat within 30 s")


def test_hung_runs_count_towards_failed_like_any_crash() -> None:
    sup, clock = _running(POLICY)
    for attempt in range(3):
        clock.now += 16
        assert sup.watchdog() is not None
        decision = sup.exited(-9, "")
        if attempt < 2:
            sup.backoff(decision.restart_in or 0)
            clock.now += decision.restart_in or 0
            assert sup.restart_due()
            sup.started(pid=50 + attempt)
            sup.heartbeat()
    assert decision.state == FAILED and sup.state == FAILED
    assert sup.last_error == "no heartbeat for 16 s (3 intervals of 5 s): killed"


def test_the_watchdog_leaves_stopped_stopping_and_backoff_strategies_alone() -> None:
    sup, clock = _running(POLICY)
    assert sup.stop_request() is True
    clock.now += 100
    assert sup.watchdog() is None
    sup.exited(-15, "")
    assert sup.state == STOPPED and sup.watchdog() is None
    sup.start_requested()  # launching, no pid yet: nothing to kill
    clock.now += 100
    assert sup.watchdog() is None


def test_last_error_is_cleared_by_the_first_heartbeat_of_a_requested_start() -> None:
    sup, clock = _running(POLICY)
    clock.now += 1
    sup.exited(3, "RuntimeError: old")
    sup.start_requested()
    sup.started(pid=8)
    assert sup.last_error == "RuntimeError: old"  # until the new run proves itself
    sup.heartbeat()
    assert sup.last_error == "" and sup.state == RUNNING


def test_after_an_automatic_restart_last_error_is_the_current_runs() -> None:
    # Issue 15: a strategy that recovered kept its old error in red. The error shown is the current
    # run's: cleared when the restarted run reaches RUNNING, kept as previous_error (and logged).
    sup, clock = _running(POLICY)
    clock.now += 1
    sup.backoff(sup.exited(3, "RuntimeError: flaky").restart_in or 0)
    assert sup.state == BACKOFF and sup.last_error == "RuntimeError: flaky"  # while it waits: why
    clock.now += 1
    assert sup.restart_due()
    sup.started(pid=8)
    assert sup.last_error == "RuntimeError: flaky"  # STARTING: not recovered yet
    sup.heartbeat()
    assert sup.state == RUNNING and sup.last_error == "" and sup.previous_error == "RuntimeError: flaky"
    assert sup.restarts == 1  # the restart itself stays visible
    clock.now += 1
    sup.backoff(sup.exited(4, "RuntimeError: again").restart_in or 0)
    assert sup.last_error == "RuntimeError: again"  # a crash loop still shows its error between crashes


def test_a_run_without_a_pid_a_container_is_running_at_its_first_heartbeat_and_watched() -> None:
    clock = FakeClock()
    sup = Supervisor(POLICY, clock)
    sup.start_requested()
    sup.started(pid=0)  # the docker runtime: a container id, no pid
    assert sup.state == STARTING
    assert sup.heartbeat() is True and sup.state == RUNNING
    clock.now += POLICY.heartbeat_interval * POLICY.heartbeat_misses + 1
    assert sup.watchdog() is not None  # a silent container is hung like a silent process
