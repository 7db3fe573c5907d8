"""desk.specs: the one rule for a StrategySpec every service can use (orchestrator at deploy, router on read)."""

from __future__ import annotations

import pytest

from desk.bus import codec
from desk.bus.errors import DeskError
from desk.specs import MAX_SPEC_BYTES, SpecError, spec_problems, validate_spec
from desk.v1 import strategy_pb2


def _spec(**fields: object) -> strategy_pb2.StrategySpec:
    base: dict[str, object] = {"strategy_id": "ma_x", "member_id": "alice", "runtime": "process"}
    base.update(fields)
    return strategy_pb2.StrategySpec(**base)  # type: ignore[arg-type]


def test_a_plain_spec_and_one_with_every_field_set_are_valid() -> None:
    assert spec_problems(_spec()) == []
    full = _spec(
        initial_cash="100000",
        symbols=["AAPL", "MSFT"],
        env={"LOOKBACK": "20"},
        risk=strategy_pb2.RiskLimits(
            max_order_notional="25000", max_position_notional="50000.5", max_orders_per_minute=30, allow_short=True
        ),
        resources=strategy_pb2.Resources(memory="256m", cpus="0.5", pids=64),
    )
    validate_spec(full)  # does not raise
    assert MAX_SPEC_BYTES < codec.MAX_MESSAGE_BYTES


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"strategy_id": "Bad Id"}, "strategy id 'Bad Id' is not valid"),
        ({"member_id": ""}, "user_id '' must be"),
        ({"initial_cash": "0"}, "initial_cash must be positive, got 0"),
        ({"initial_cash": "-5"}, "initial_cash must be positive, got -5"),
        ({"initial_cash": "lots"}, "initial_cash 'lots' is not a decimal number"),
        ({"initial_cash": "NaN"}, "initial_cash must be a finite number"),
        ({"initial_cash": "1e400"}, "initial_cash 1e400 is larger than the limit"),
        ({"risk": strategy_pb2.RiskLimits(max_order_notional="-1")}, "risk.max_order_notional must be positive"),
        (
            {"risk": strategy_pb2.RiskLimits(max_position_notional="Infinity")},
            "risk.max_position_notional must be a finite number",
        ),
        ({"symbols": ["aapl"]}, "symbols ['aapl'] are not valid symbols"),
        ({"symbols": ["AAPL", "AAPL"]}, "more than once"),
        ({"env": {"1X": "y"}}, "env keys ['1X'] are not valid"),
        ({"env": {"ALPACA_API_KEY": "k"}}, "broker keys are not allowed"),
        ({"runtime": "k8s"}, "runtime 'k8s' is not one of process, docker"),
        ({"resources": strategy_pb2.Resources(memory="lots")}, "resources.memory must look like"),
        ({"resources": strategy_pb2.Resources(cpus="100")}, "more than a machine has"),
        ({"resources": strategy_pb2.Resources(pids=2)}, "resources.pids must be a whole number from 8 to 4096"),
    ],
)
def test_each_problem_is_named(fields: dict[str, object], problem: str) -> None:
    problems = spec_problems(_spec(**fields))
    assert len(problems) == 1 and problem in problems[0], problems


def test_a_spec_the_bus_could_not_carry_is_refused_with_its_size_and_where_it_is() -> None:
    spec = _spec(env={"BLOB": "x" * 100_000})
    with pytest.raises(SpecError) as refused:
        validate_spec(spec)
    err = refused.value
    assert isinstance(err, DeskError) and err.code == "INVALID_STRATEGY" and err.status == 400
    assert f"its spec is {spec.ByteSize()} bytes, more than the {MAX_SPEC_BYTES}" in err.message
    assert "most of it in env" in err.message and "'ma_x'" in err.message
    just_fits = _spec(description="d" * (MAX_SPEC_BYTES - _spec(description="").ByteSize() - 3))
    assert just_fits.ByteSize() <= MAX_SPEC_BYTES and spec_problems(just_fits) == []


def test_every_problem_is_reported_at_once() -> None:
    problems = spec_problems(_spec(initial_cash="-1", symbols=["x"], runtime="vm"))
    assert len(problems) == 3
