"""Issue 15: the CLI's `--json` and tables are consistent, and `desk up` suggests a command that works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from desk.cli.embedded import cli_command
from desk.cli.render import enum_word, json_ready, money, percent
from desk.v1 import common_pb2, executions_pb2, ledger_pb2, strategy_pb2


def test_json_writes_enums_as_words_counts_as_numbers_and_money_as_exact_decimal_strings() -> None:
    fills = ledger_pb2.FillsReply(
        fills=[
            ledger_pb2.Fill(
                execution_id="e1",
                side=common_pb2.SIDE_BUY,
                qty="3",
                price="187.5",
                fee="0.190481896",
                event_ns=1_700_000_000_000_000_000,
            )
        ]
    )
    row = json.loads(json.dumps(json_ready(fills)))["fills"][0]
    assert row["side"] == "buy"
    assert row["event_ns"] == 1_700_000_000_000_000_000  # int64: a number, not "1700000000000000000"
    assert (row["qty"], row["price"], row["fee"]) == ("3", "187.5", "0.190481896")  # exact, never floats

    pnl = json_ready(
        ledger_pb2.PnlReply(strategies=[ledger_pb2.PnlRow(strategy_id="a", fills=12, return_pct="0.0184")])
    )
    assert pnl["strategies"][0]["fills"] == 12 and pnl["strategies"][0]["return_pct"] == "0.0184"
    board = json_ready(ledger_pb2.LeaderboardReply(rows=[ledger_pb2.LeaderboardRow(rank=1, strategies=2, fills=7)]))
    assert board["rows"][0] == {**board["rows"][0], "rank": 1, "strategies": 2, "fills": 7}

    status = json_ready(
        strategy_pb2.StrategyStatusList(
            strategies=[
                strategy_pb2.StrategyStatus(
                    strategy_id="a", state=strategy_pb2.STRATEGY_STATE_RUNNING, restarts=2, last_heartbeat_ns=5
                )
            ]
        )
    )
    assert status["strategies"][0]["state"] == "running"
    assert status["strategies"][0]["restarts"] == 2 and status["strategies"][0]["last_heartbeat_ns"] == 5

    orders = json_ready(
        ledger_pb2.OrdersReply(
            orders=[
                ledger_pb2.OrderRecord(
                    status=executions_pb2.ORDER_STATUS_PARTIALLY_FILLED,
                    type=common_pb2.ORDER_TYPE_STOP_LIMIT,
                    time_in_force=common_pb2.TIME_IN_FORCE_GTC,
                )
            ]
        )
    )["orders"][0]
    assert (orders["status"], orders["type"], orders["time_in_force"], orders["side"]) == (
        "partially_filled",
        "stop_limit",
        "gtc",
        "",
    )  # unset enum: ""


def test_every_enum_of_the_wire_becomes_a_lower_case_word_without_its_prefix() -> None:
    for module in (common_pb2, executions_pb2, strategy_pb2):
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            for value in enum.values:
                word = enum_word(value.name, enum.name)
                if value.number == 0:
                    assert word == ""
                else:
                    assert word and word == word.lower() and word.upper() in value.name, (enum.name, value.name, word)
                    assert not word.startswith(enum.name.lower()), (enum.name, value.name, word)


def test_json_of_maps_nested_messages_and_unset_messages() -> None:
    spec = json_ready(strategy_pb2.StrategySpec(strategy_id="a", env={"K": "v"}, symbols=["AAPL"]))
    assert spec["env"] == {"K": "v"} and spec["symbols"] == ["AAPL"] and spec["risk"] is None
    spec = json_ready(strategy_pb2.StrategySpec(risk=strategy_pb2.RiskLimits(max_orders_per_minute=30)))
    assert spec["risk"]["max_orders_per_minute"] == 30 and spec["risk"]["allow_short"] is False


@pytest.mark.parametrize(
    ("value", "shown"),
    [("0.0184", "0.02%"), ("0", "0.00%"), ("-0.001", "0.00%"), ("12.5", "12.50%"), ("-3.14159", "-3.14%"), ("", "-")],
)
def test_percentages_have_two_decimals(value: str, shown: str) -> None:
    assert percent(value) == shown


@pytest.mark.parametrize(("value", "shown"), [("0.190481896", "0.19"), ("0", "0.00"), ("1234.5", "1,234.50")])
def test_money_and_fees_are_shown_in_cents(value: str, shown: str) -> None:
    assert money(value) == shown


def test_desk_up_suggests_plain_desk_with_the_defaults(tmp_path: Path) -> None:
    creds = tmp_path / "var" / "credentials" / "cli.json"
    assert cli_command(4222, creds, {}, tmp_path) == "desk"


def test_desk_up_suggests_the_url_and_credentials_a_non_default_desk_needs(tmp_path: Path) -> None:
    creds = tmp_path / "other-data" / "credentials" / "cli.json"
    assert cli_command(4333, creds, {}, tmp_path) == (
        "desk --nats-url nats://127.0.0.1:4333 --credentials other-data/credentials/cli.json"
    )
    elsewhere = Path("/srv/desk data/credentials/cli.json")  # outside the current directory: absolute, quoted
    assert cli_command(4222, elsewhere, {}, tmp_path) == "desk --credentials '/srv/desk data/credentials/cli.json'"


def test_desk_up_takes_the_clis_own_environment_into_account(tmp_path: Path) -> None:
    creds = tmp_path / "d" / "credentials" / "cli.json"
    env = {"NATS_URL": "nats://127.0.0.1:4333", "DESK_CREDENTIALS": str(creds)}
    assert cli_command(4333, creds, env, tmp_path) == "desk"  # what the CLI finds by itself already works
    default_creds = tmp_path / "var" / "credentials" / "cli.json"
    assert cli_command(4222, default_creds, {"NATS_URL": "nats://10.0.0.9:4222"}, tmp_path) == (
        "desk --nats-url nats://127.0.0.1:4222"
    )
