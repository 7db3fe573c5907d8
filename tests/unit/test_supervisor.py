"""The restart policy as a pure state machine, driven by a fake clock."""

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
    assert sup.state == RUNNING and sup.pid == 42
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
