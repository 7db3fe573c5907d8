"""Strategy discovery: good folders become specs, bad ones get a clear error, others are unaffected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.orchestrator.discovery import StrategyConfigError, discover, is_legacy, validate_strategy

SDK_STRATEGY = """from strategy_sdk import Strategy


class Momentum(Strategy):
    def on_bar(self, bar):
        pass
"""

LEGACY_STRATEGY = """import json, sys
from desk_client import place_order

for line in sys.stdin:
    tick = json.loads(line)
"""


def _folder(root: Path, name: str, config: object | str | None, source: str | None = SDK_STRATEGY) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    if config is not None:
        (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if source is not None:
        (folder / "strategy.py").write_text(source)
    return folder


def test_a_good_folder_becomes_a_spec_with_old_and_new_keys(tmp_path: Path) -> None:
    folder = _folder(
        tmp_path,
        "momentum",
        """{"user_id": "alice", "name": "Momentum", "description": "buys strength", "version": "1.2",
            "env": {"LOOKBACK": "20"}, "initial_cash": 25000.50, "symbols": ["AAPL", "MSFT"],
            "risk": {"max_order_notional": "5000", "max_position_notional": 10000.0,
                     "max_orders_per_minute": 30, "allow_short": true}}""",
    )
    found = discover(tmp_path)
    assert found.errors == {}
    strategy = found.strategies["momentum"]
    spec = strategy.spec
    assert strategy.enabled
    assert (spec.strategy_id, spec.member_id, spec.name, spec.description, spec.version) == (
        "momentum",
        "alice",
        "Momentum",
        "buys strength",
        "1.2",
    )
    assert dict(spec.env) == {"LOOKBACK": "20"}
    assert spec.initial_cash == "25000.5"
    assert list(spec.symbols) == ["AAPL", "MSFT"]
    assert (spec.risk.max_order_notional, spec.risk.max_position_notional) == ("5000", "10000")
    assert (spec.risk.max_orders_per_minute, spec.risk.allow_short) == (30, True)
    assert spec.path == str(folder.resolve()) and spec.runtime == "process" and not spec.legacy


def test_the_old_desk_config_alone_is_enough_and_name_defaults_to_the_id(tmp_path: Path) -> None:
    _folder(tmp_path, "old-one", {"user_id": "bob", "env": {}}, LEGACY_STRATEGY)
    spec = discover(tmp_path).strategies["old-one"].spec
    assert spec.member_id == "bob" and spec.name == "old-one" and spec.legacy
    assert spec.initial_cash == "" and spec.risk.max_order_notional == "" and list(spec.symbols) == []


def test_bad_folders_are_reported_one_by_one_and_the_good_one_still_deploys(tmp_path: Path) -> None:
    _folder(tmp_path, "good", {"user_id": "alice"})
    _folder(tmp_path, "no-user", {"name": "x"})
    _folder(tmp_path, "bad-json", '{"user_id": "alice",')
    _folder(tmp_path, "Bad.Name", {"user_id": "alice"})
    _folder(tmp_path, "int-env", {"user_id": "alice", "env": {"LOOKBACK": 20}})
    _folder(tmp_path, "no-code", {"user_id": "alice"}, source=None)
    _folder(tmp_path, "no-config", None)
    _folder(tmp_path, "broker-keys", {"user_id": "alice", "env": {"ALPACA_API_KEY": "k"}})
    (tmp_path / "not-a-strategy").mkdir()
    (tmp_path / "__pycache__").mkdir()
    found = discover(tmp_path)
    assert list(found.strategies) == ["good"]
    errors = found.errors
    assert set(errors) == {"no-user", "bad-json", "Bad.Name", "int-env", "no-code", "no-config", "broker-keys"}
    assert "no user_id" in errors["no-user"]
    assert "not valid JSON" in errors["bad-json"] and "line 1" in errors["bad-json"]
    assert "not a valid strategy id" in errors["Bad.Name"]
    assert "env.LOOKBACK must be a string, got int 20" in errors["int-env"]
    assert "strategy.py is missing" in errors["no-code"]
    assert "config.json is missing" in errors["no-config"]
    assert "broker keys are not allowed" in errors["broker-keys"]


def test_disabled_strategies_are_found_but_not_in_the_enabled_list(tmp_path: Path) -> None:
    _folder(tmp_path, "on", {"user_id": "a"})
    _folder(tmp_path, "off", {"user_id": "a", "enabled": False})
    found = discover(tmp_path)
    assert sorted(found.strategies) == ["off", "on"]
    assert [s.spec.strategy_id for s in found.enabled] == ["on"]


def test_a_missing_strategies_folder_finds_nothing(tmp_path: Path) -> None:
    found = discover(tmp_path / "nowhere")
    assert found.strategies == {} and found.errors == {}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('["user_id"]', "must hold a JSON object"),
        ('{"user_id": 42}', "user_id 42 must be a string"),
        ('{"user_id": "a", "name": 3}', "name must be a string"),
        ('{"user_id": "a", "env": ["A=1"]}', "env must be an object"),
        ('{"user_id": "a", "env": {"1BAD": "x"}}', "not a valid environment variable name"),
        ('{"user_id": "a", "initial_cash": -5}', "initial_cash must be positive"),
        ('{"user_id": "a", "initial_cash": "lots"}', "not a decimal number"),
        ('{"user_id": "a", "risk": {"max_leverage": 2}}', "unknown keys ['max_leverage']"),
        ('{"user_id": "a", "risk": {"max_orders_per_minute": 1.5}}', "max_orders_per_minute must be a whole number"),
        ('{"user_id": "a", "risk": {"allow_short": "yes"}}', "allow_short must be true or false"),
        ('{"user_id": "a", "symbols": ["aapl"]}', "are not valid symbols"),
        ('{"user_id": "a", "enabled": "no"}', "enabled must be true or false"),
        ('{"user_id": "a", "runtime": "k8s"}', "runtime 'k8s' is not one of process, docker"),
        ('{"user_id": "a", "risk": {"max_orders_per_minute": 0}}', "max_orders_per_minute must be a whole number >= 1"),
        ('{"user_id": "a", "risk": {"max_order_notional": "0"}}', "risk.max_order_notional must be positive"),
        ('{"user_id": "a", "env": {"BIG": "' + "x" * 100_000 + '"}}', "more than the 16384 the desk accepts"),
        (
            '{"user_id": "a", "runtime": "docker"}',
            (
                "strategy s asks for runtime docker but this desk runs strategies with process; remove runtime from "
                "config.json or run the desk under compose"
            ),
        ),
    ],
)
def test_each_bad_value_gets_a_message_that_names_it(config: str, message: str) -> None:
    with pytest.raises(StrategyConfigError) as refused:
        validate_strategy("s", config, SDK_STRATEGY)
    assert message in str(refused.value)


def test_legacy_means_desk_client_without_an_sdk_strategy_class() -> None:
    assert is_legacy(LEGACY_STRATEGY)
    assert not is_legacy(SDK_STRATEGY)
    assert not is_legacy(
        "import strategy_sdk\nfrom desk_client import place_order\n\nclass X(strategy_sdk.Strategy):\n    pass\n"
    )
    assert not is_legacy("print('no desk client here')\n")


def test_the_runtime_of_the_orchestrator_is_accepted_spelled_out_or_implied() -> None:
    assert (
        validate_strategy(
            "s", '{"user_id": "a", "runtime": "docker"}', SDK_STRATEGY, default_runtime="docker"
        ).spec.runtime
        == "docker"
    )
    assert validate_strategy("s", '{"user_id": "a"}', SDK_STRATEGY, default_runtime="docker").spec.runtime == "docker"
    with pytest.raises(StrategyConfigError) as refused:
        validate_strategy("s", '{"user_id": "a", "runtime": "process"}', SDK_STRATEGY, default_runtime="docker")
    assert "asks for runtime process but this desk runs strategies with docker" in str(refused.value)


def test_a_huge_config_is_listed_as_invalid_with_the_size_reason(tmp_path: Path) -> None:
    _folder(tmp_path, "huge", {"user_id": "a", "env": {"BLOB": "x" * 100_000}})
    _folder(tmp_path, "fine", {"user_id": "b"})
    found = discover(tmp_path)
    assert list(found.strategies) == ["fine"]
    assert "its spec is" in found.errors["huge"] and "most of it in env" in found.errors["huge"]
