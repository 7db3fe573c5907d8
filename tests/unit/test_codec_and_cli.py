"""The codec's subject -> type map and the `desk decode` / `desk` front door."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from desk.bus import codec
from desk.bus.decimals import fmt, parse_decimal
from desk.bus.errors import DeskError
from desk.v1 import executions_pb2, ledger_pb2, marketdata_pb2, orders_pb2, strategy_pb2

ROOT = Path(__file__).resolve().parents[2]


def desk(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "desk.cli", *args], input=stdin, capture_output=True, cwd=ROOT, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("md.bar.AAPL", marketdata_pb2.Bar),
        ("md.quote.BRK.B", None),  # a dot in the symbol token is not a subject we publish
        ("md.trade.MSFT", marketdata_pb2.Trade),
        ("desk.order.submit.alpha", orders_pb2.OrderRequest),
        ("desk.order.cancel.alpha", orders_pb2.CancelRequest),
        ("desk.broker.sim.orders", orders_pb2.RoutedOrder),
        ("desk.exec.alpha", executions_pb2.ExecutionReport),
        ("desk.hb.alpha", strategy_pb2.Heartbeat),
        ("desk.risk.halt", orders_pb2.HaltRequest),
        ("desk.ledger.positions", ledger_pb2.LedgerQuery),
        ("desk.ctl.strategy.logs", strategy_pb2.LogsRequest),
        ("desk.ctl.strategy.deploy", strategy_pb2.StrategyControl),
        ("$KV.DESK_STRATEGIES.alpha", strategy_pb2.StrategySpec),
        ("_INBOX.abc.def", None),
    ],
)
def test_each_subject_pattern_maps_to_exactly_one_message_type(subject: str, expected: type | None) -> None:
    assert codec.type_for_subject(subject) is expected


def test_decode_refuses_a_message_whose_header_names_another_type() -> None:
    data, headers = codec.encode(orders_pb2.OrderRequest(symbol="AAPL"))
    with pytest.raises(DeskError) as refused:
        codec.decode(data, ledger_pb2.LedgerQuery, headers)
    assert refused.value.code == "WRONG_TYPE"
    assert codec.decode(data, orders_pb2.OrderRequest, headers).symbol == "AAPL"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "positive"),
        ("-1", "positive"),
        ("NaN", "finite"),
        ("inf", "finite"),
        ("1e20", "larger"),
        ("ten", "not a decimal"),
        ("", "required"),
    ],
)
def test_parse_decimal_names_what_is_wrong(value: str, problem: str) -> None:
    with pytest.raises(DeskError) as refused:
        parse_decimal("qty", value)
    assert refused.value.code == "INVALID_FIELD" and problem in refused.value.message and "qty" in refused.value.message


def test_fmt_writes_plain_decimals_without_exponents_or_trailing_zeros() -> None:
    from decimal import Decimal

    assert [fmt(Decimal("1E+3")), fmt(Decimal("0.10")), fmt(Decimal("-0")), fmt(None), fmt(Decimal("2.345"), 2)] == [
        "1000",
        "0.1",
        "0",
        "",
        "2.34",
    ]


def test_desk_decode_prints_a_bar_body_as_json() -> None:
    body = marketdata_pb2.Bar(symbol="AAPL", close="187.42", volume="1200").SerializeToString()
    result = desk("decode", "md.bar.AAPL", stdin=body)
    assert result.returncode == 0, result.stderr
    decoded = json.loads(result.stdout)
    assert (decoded["symbol"], decoded["close"], decoded["volume"]) == ("AAPL", "187.42", "1200")


def test_desk_decode_takes_an_explicit_type_for_reply_subjects() -> None:
    body = orders_pb2.OrderAck(client_order_id="c1", accepted=True).SerializeToString()
    result = desk("decode", "_INBOX.x.y", "--type", "OrderAck", stdin=body)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["accepted"] is True


def test_desk_decode_explains_an_unmapped_subject_and_a_malformed_body() -> None:
    unmapped = desk("decode", "_INBOX.x.y", stdin=b"")
    assert unmapped.returncode == 2 and b"--type" in unmapped.stderr
    malformed = desk("decode", "desk.exec.alpha", stdin=b"\xff\xff\xff")
    assert malformed.returncode == 1 and b"MALFORMED" in malformed.stderr


def test_desk_commands_say_clearly_when_no_desk_is_running() -> None:
    result = desk("--nats-url", "nats://127.0.0.1:1", "positions")
    assert result.returncode == 1
    assert b"cannot reach NATS" in result.stderr and b"make run" in result.stderr
