"""``desk watch``, ``desk streams`` and ``desk services`` against a real nats-server, run as the
``desk`` command (a subprocess: the CLI's process state stays out of the tests)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from desk.bus import auth, codec, streams, subjects
from desk.bus import testing as bus_testing
from desk.bus.errors import DeskError
from desk.bus.lifecycle import ServiceRuntime
from desk.bus.micro import add_service
from desk.bus.request import request, request_raw
from desk.bus.settings import BusSettings
from desk.bus.testing import InProcessService, NatsServer, run_in_process
from desk.v1 import common_pb2, executions_pb2, ledger_pb2, marketdata_pb2, orders_pb2, strategy_pb2

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: Bound on every wait for the CLI (a Python start-up on a busy machine included).
WAIT = 60.0


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_USER", "NATS_PASSWORD", "NATS_URL")}
    return {**env, **extra}


async def _spawn(url: str, *args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "desk.cli",
        "--nats-url",
        url,
        "--credentials",
        "/nonexistent/cli.json",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env or _env(),
    )


async def _desk(url: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await _spawn(url, *args, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Watching:
    """A running ``desk watch``, subscribed (it said so on stderr) before the test publishes."""

    def __init__(self, proc: asyncio.subprocess.Process, said: str) -> None:
        self.proc = proc
        self.said = said

    @classmethod
    async def start(cls, url: str, *args: str) -> Watching:
        proc = await _spawn(url, "watch", *args)
        assert proc.stderr is not None
        line = (await asyncio.wait_for(proc.stderr.readline(), WAIT)).decode()
        assert line.startswith("watching "), line
        return cls(proc, line)

    async def line(self) -> str:
        assert self.proc.stdout is not None
        return (await asyncio.wait_for(self.proc.stdout.readline(), WAIT)).decode()

    async def finish(self) -> tuple[int, str, str]:
        out, err = await asyncio.wait_for(self.proc.communicate(), WAIT)
        assert self.proc.returncode is not None
        return self.proc.returncode, out.decode(), err.decode()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await asyncio.wait_for(self.proc.communicate(), WAIT)


@pytest.fixture
async def watchers() -> AsyncIterator[list[Watching]]:
    started: list[Watching] = []
    try:
        yield started
    finally:
        for w in started:
            await w.kill()


async def _watch(watchers: list[Watching], url: str, *args: str) -> Watching:
    w = await Watching.start(url, *args)
    watchers.append(w)
    return w


async def _publish(nc: Client, subject: str, message: Any) -> None:
    data, headers = codec.encode(message)
    await nc.publish(subject, data, headers=headers)
    await nc.flush()


def _order(strategy: str = "alpha", symbol: str = "AAPL") -> orders_pb2.OrderRequest:
    return orders_pb2.OrderRequest(
        strategy_id=strategy,
        client_order_id="c-1",
        symbol=symbol,
        side=common_pb2.SIDE_BUY,
        type=common_pb2.ORDER_TYPE_LIMIT,
        qty="10",
        limit_price="187.25",
    )


# -- desk watch ----------------------------------------------------------------------------------------


async def test_watch_prints_a_desk_message_decoded_with_its_type_and_fields(
    nats_server: NatsServer, nc: Client, watchers: list[Watching]
) -> None:
    w = await _watch(watchers, nats_server.url, "--count", "1", "--headers")
    assert "desk.>" in w.said
    await _publish(nc, "desk.order.submit.alpha", _order())
    code, out, err = await w.finish()
    assert code == 0, err
    line = out.strip()
    assert " desk.order.submit.alpha OrderRequest " in line, line
    assert '"symbol":"AAPL"' in line and '"side":"buy"' in line and '"type":"limit"' in line, line
    assert '"limit_price":"187.25"' in line and '"Desk-Type":"desk.v1.OrderRequest"' in line, line
    assert '"notional"' not in line  # a line leaves out empty fields
    assert "1 message shown (0 undecoded), 0 filtered out" in err


async def test_watch_json_writes_one_object_a_line_by_the_clis_json_rule(
    nats_server: NatsServer, nc: Client, watchers: list[Watching]
) -> None:
    w = await _watch(watchers, nats_server.url, "desk.exec.>", "--json", "--count", "1")
    report = executions_pb2.ExecutionReport(
        strategy_id="alpha",
        symbol="MSFT",
        exec_type=executions_pb2.EXEC_TYPE_FILL,
        side=common_pb2.SIDE_SELL,
        event_ns=1_700_000_000_123_456_789,
    )
    await _publish(nc, "desk.exec.alpha", report)
    code, out, err = await w.finish()
    assert code == 0, err
    row = json.loads(out)
    assert set(row) == {
        "received_ns",
        "subject",
        "reply",
        "type",
        "by_subject",
        "size",
        "headers",
        "message",
        "undecoded",
        "data_base64",
    }
    assert row["subject"] == "desk.exec.alpha" and row["type"] == "desk.v1.ExecutionReport"
    assert row["headers"][codec.DESK_TYPE] == "desk.v1.ExecutionReport" and row["undecoded"] is None
    message = row["message"]
    assert message["exec_type"] == "fill" and message["side"] == "sell" and message["symbol"] == "MSFT"
    assert message["event_ns"] == 1_700_000_000_123_456_789  # int64: a JSON number
    assert message["order_id"] == ""  # --json keeps the empty fields
    assert row["size"] == len(report.SerializeToString())


async def test_watch_filters_by_type_and_by_strategy(
    nats_server: NatsServer, nc: Client, watchers: list[Watching]
) -> None:
    w = await _watch(
        watchers,
        nats_server.url,
        "--type",
        "OrderRequest",
        "--type",
        "desk.v1.RoutedOrder",
        "--strategy",
        "alpha",
        "--json",
        "--count",
        "2",
    )
    await _publish(nc, "desk.hb.alpha", strategy_pb2.Heartbeat(strategy_id="alpha"))  # another type
    await _publish(nc, "desk.order.submit.beta", _order("beta"))  # another strategy
    await nc.publish("desk.order.submit.alpha", b"\xff\xff\xff")  # undecoded: neither type nor strategy
    await _publish(nc, "desk.order.submit.alpha", _order("alpha", "IBM"))
    routed = orders_pb2.RoutedOrder(order_id="o-1", new_order=_order("alpha", "TSLA"))  # strategy_id nested only
    await _publish(nc, "desk.broker.sim.orders", routed)
    code, out, err = await w.finish()
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["type"], r["subject"]) for r in rows] == [
        ("desk.v1.OrderRequest", "desk.order.submit.alpha"),
        ("desk.v1.RoutedOrder", "desk.broker.sim.orders"),
    ]
    assert rows[0]["message"]["symbol"] == "IBM" and rows[1]["message"]["new_order"]["symbol"] == "TSLA"
    assert "2 messages shown (0 undecoded), 3 filtered out" in err


async def test_garbage_and_unknown_types_are_shown_undecoded_and_the_watch_goes_on(
    nats_server: NatsServer, nc: Client, watchers: list[Watching]
) -> None:
    lines = await _watch(watchers, nats_server.url, "--count", "5", "--raw")
    rows = await _watch(watchers, nats_server.url, "--count", "5", "--raw", "--json")
    await nc.publish("desk.order.submit.evil", b"garbage!")  # no header
    await nc.publish("desk.order.submit.evil", b"\x08\x01", headers={codec.DESK_TYPE: "desk.v1.NoSuchThing"})
    await nc.publish("desk.order.submit.evil", b"\xff\xff\xff", headers={codec.DESK_TYPE: "desk.v1.OrderRequest"})
    await nc.publish("desk.order.submit.\x1b[2J", b"")  # a terminal escape in the subject
    await _publish(nc, "desk.order.submit.alpha", _order())  # and a good one after them
    code, out, err = await lines.finish()
    assert code == 0, err
    shown = out.splitlines()
    assert len(shown) == 5, out
    assert "undecoded 8 bytes (no Desk-Type header) Z2FyYmFnZSE=" in shown[0]
    assert "undecoded 2 bytes (unknown type 'desk.v1.NoSuchThing')" in shown[1]
    assert "undecoded 3 bytes (MALFORMED" in shown[2]
    assert "desk.order.submit.\\x1b[2J undecoded 0 bytes" in shown[3] and "\x1b" not in out
    assert " OrderRequest " in shown[4] and '"symbol":"AAPL"' in shown[4]
    assert "5 messages shown (4 undecoded)" in err and "Traceback" not in err
    code, out, err = await rows.finish()
    assert code == 0, err
    decoded = [json.loads(line) for line in out.splitlines()]
    assert [r["type"] for r in decoded] == [None, None, None, None, "desk.v1.OrderRequest"]
    assert decoded[0]["message"] is None and decoded[0]["data_base64"] == "Z2FyYmFnZSE=" and decoded[0]["size"] == 8
    assert decoded[1]["undecoded"] == "unknown type 'desk.v1.NoSuchThing'"
    assert decoded[3]["subject"] == "desk.order.submit.\x1b[2J" and decoded[4]["data_base64"] is None


async def test_undecoded_can_be_chosen_and_kv_values_decoded_by_subject(
    nats_server: NatsServer, nc: Client, watchers: list[Watching]
) -> None:
    only_garbage = await _watch(watchers, nats_server.url, "--type", "undecoded", "--count", "1")
    kv = await _watch(watchers, nats_server.url, "$KV.DESK_PRICES.>", "--by-subject", "--count", "1")
    await _publish(nc, "desk.order.submit.alpha", _order())
    await nc.publish("desk.order.submit.evil", b"\x00")
    prices = await nc.jetstream().key_value(subjects.KV_PRICES)
    await prices.put("AAPL", marketdata_pb2.Trade(symbol="AAPL", price="190.5").SerializeToString())
    code, out, err = await only_garbage.finish()
    assert code == 0 and "desk.order.submit.evil undecoded 1 bytes" in out and "1 filtered out" in err, (out, err)
    code, out, err = await kv.finish()
    assert code == 0, err
    assert "$KV.DESK_PRICES.AAPL Trade? {" in out and '"price":"190.5"' in out, out


async def test_count_stops_the_watch_and_a_timeout_before_it_is_exit_1(
    nats_server: NatsServer, nc: Client, watchers: list[Watching]
) -> None:
    w = await _watch(watchers, nats_server.url, "desk.hb.*", "--count", "2")
    for n in range(3):
        await _publish(nc, "desk.hb.alpha", strategy_pb2.Heartbeat(strategy_id="alpha", bars_seen=n + 1))
    code, out, err = await w.finish()
    assert code == 0, err
    assert len(out.splitlines()) == 2 and '"bars_seen":2' in out and '"bars_seen":3' not in out, out
    code, out, err = await _desk(nats_server.url, "watch", "desk.nobody.>", "--count", "1", "--timeout", "0.5")
    assert code == 1 and out == "" and "timed out after 0.5s with 0 of 1 messages" in err, (out, err)
    code, out, err = await _desk(nats_server.url, "watch", "desk.nobody.>", "--timeout", "0.2")
    assert code == 0 and "0 messages shown" in err, err


async def test_ctrl_c_ends_the_watch_with_a_summary(
    nats_server: NatsServer, nc: Client, watchers: list[Watching]
) -> None:
    w = await _watch(watchers, nats_server.url)
    await _publish(nc, "desk.hb.alpha", strategy_pb2.Heartbeat(strategy_id="alpha"))
    assert " desk.hb.alpha Heartbeat " in await w.line()
    w.proc.send_signal(signal.SIGINT)
    code, out, err = await w.finish()
    assert code == 0 and out == "" and "1 message shown (0 undecoded), 0 filtered out" in err, (out, err)
    assert "Traceback" not in err


async def test_bad_arguments_are_refused_with_exit_2(nats_server: NatsServer) -> None:
    code, _, err = await _desk(nats_server.url, "watch", "--type", "NoSuchType")
    assert code == 2 and "--type 'NoSuchType' is not a desk message type" in err, err
    code, _, err = await _desk(nats_server.url, "watch", "desk.>.x")
    assert code == 2 and "is not a NATS subject" in err, err


# -- desk streams ----------------------------------------------------------------------------------------


async def test_streams_lists_the_desks_streams_and_buckets_with_their_counts(
    nats_server: NatsServer, nc: Client
) -> None:
    js = nc.jetstream()
    await streams.provision(js, log_actions=False)
    for n in range(3):
        data, headers = codec.encode(executions_pb2.ExecutionReport(strategy_id="alpha", execution_id=f"e{n}"))
        await js.publish("desk.exec.alpha", data, headers=headers)
    prices = await js.key_value(subjects.KV_PRICES)
    await prices.put("AAPL", b"1")
    await prices.put("AAPL", b"2")  # history 1: one value
    await prices.put("MSFT", b"3")
    await js.create_object_store("REPORTS")

    code, out, err = await _desk(nats_server.url, "streams", "--json")
    assert code == 0, err
    listing = json.loads(out)
    found = {s["name"]: s for s in listing["streams"]}
    assert set(found) == {subjects.STREAM_EXECUTIONS, subjects.STREAM_ORDERS}
    executions = found[subjects.STREAM_EXECUTIONS]
    assert executions["messages"] == 3 and executions["first_seq"] == 1 and executions["last_seq"] == 3
    assert executions["subjects"] == [subjects.EXEC_ALL] and executions["storage"] == "file"
    assert executions["replicas"] == 1 and executions["consumers"] == 0 and executions["bytes"] > 0
    assert found[subjects.STREAM_ORDERS]["retention"] == "workqueue"
    buckets = {b["name"]: b for b in listing["buckets"]}
    assert set(buckets) == set(streams.BUCKETS)
    assert buckets[subjects.KV_PRICES]["values"] == 2 and buckets[subjects.KV_PRICES]["history"] == 1
    assert buckets[subjects.KV_STRATEGIES]["history"] == 5 and buckets[subjects.KV_STRATEGIES]["ttl_seconds"] == 0
    assert buckets[subjects.KV_ORDER_IDS]["ttl_seconds"] == 7 * 24 * 3600
    assert [o["name"] for o in listing["object_stores"]] == sorted([subjects.OBJ_CODE, "REPORTS"])  # the desk's, ours

    code, out, err = await _desk(nats_server.url, "streams")
    assert code == 0, err
    for name in (subjects.STREAM_EXECUTIONS, subjects.STREAM_ORDERS, *streams.BUCKETS, "REPORTS"):
        assert name in out, (name, out)
    assert "7d" in out and "desk.exec.>" in out


# -- desk services ---------------------------------------------------------------------------------------


@pytest.fixture
async def inspectee(nats_server: NatsServer) -> AsyncIterator[InProcessService]:
    async def start(runtime: ServiceRuntime) -> None:
        svc = await add_service(runtime, "inspectee", "1.2.3", "answers positions queries")

        async def positions(query: ledger_pb2.LedgerQuery, subject: str) -> ledger_pb2.PositionsReply:
            if query.symbol == "BAD":
                raise DeskError("UNKNOWN_SYMBOL", "no such symbol", status=404)
            return ledger_pb2.PositionsReply()

        await svc.add_endpoint("positions", "inspect.positions", ledger_pb2.LedgerQuery, positions)
        await svc.add_endpoint("other", "inspect.other", ledger_pb2.LedgerQuery, positions)

    proc = await run_in_process("inspectee", BusSettings(nats_url=nats_server.url), start)
    try:
        yield proc
    finally:
        assert await proc.stop() == 0


async def test_services_lists_a_micro_service_with_its_endpoints_and_counts(
    nats_server: NatsServer, nc: Client, inspectee: InProcessService
) -> None:
    await request(nc, "inspect.positions", ledger_pb2.LedgerQuery(symbol="AAPL"), ledger_pb2.PositionsReply)
    with pytest.raises(DeskError):
        await request(nc, "inspect.positions", ledger_pb2.LedgerQuery(symbol="BAD"), ledger_pb2.PositionsReply)
    await request_raw(nc, "inspect.positions", b"\xff\xff")  # MALFORMED, answered with an error

    code, out, err = await _desk(nats_server.url, "services", "--json", "--wait", "1")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["inspectee"]
    row = rows[0]
    assert row["version"] == "1.2.3" and row["description"] == "answers positions queries" and row["id"]
    assert [e["name"] for e in row["endpoints"]] == ["positions", "other"]
    positions = row["endpoints"][0]
    assert positions["subject"] == "inspect.positions" and positions["num_requests"] == 3
    assert positions["refused"] == {"UNKNOWN_SYMBOL": 1, "MALFORMED": 1} and row["refused"] == 2
    assert row["num_requests"] == 3 and row["average_processing_time_ns"] > 0

    code, out, err = await _desk(nats_server.url, "services", "inspectee", "--endpoints", "--wait", "0.5")
    assert code == 0, err
    assert "inspectee" in out and "1.2.3" in out and "positions, other" in out
    assert "inspect.positions" in out and "MALFORMED 1" in out and "UNKNOWN_SYMBOL 1" in out, out

    code, out, err = await _desk(nats_server.url, "services", "nosuch", "--wait", "0.2")
    assert code == 1 and "no micro service named nosuch answered" in out, (out, err)


async def test_no_services_is_nothing_not_an_error(nats_server: NatsServer) -> None:
    code, out, err = await _desk(nats_server.url, "services", "--wait", "0.2", "--json")
    assert code == 0 and json.loads(out) == [] and err == "", (out, err)
    code, out, err = await _desk(nats_server.url, "services", "--wait", "0.2")
    assert code == 0 and "no micro service answered within 0.2s" in out and err == "", (out, err)


# -- errors ----------------------------------------------------------------------------------------------


async def test_no_server_is_a_clear_error_for_every_command(nats_server: NatsServer) -> None:
    url = nats_server.url
    nats_server.stop()
    for args in (["watch"], ["streams"], ["services"], ["streams", "--json"]):
        code, out, err = await _desk(url, *args)
        assert code == 1 and out == "" and "NO_DESK: cannot reach NATS at" in err and "Traceback" not in err, (
            args,
            err,
        )


async def test_permission_errors_are_named(tmp_path: Path) -> None:
    password = "s3cret-alpha"
    users = [auth.strategy_entry("alpha", auth.hash_password(password))]
    server = bus_testing.secured_server(tmp_path, users)
    try:
        env = _env(NATS_USER=auth.strategy_user("alpha"), NATS_PASSWORD=password)
        code, out, err = await _desk(server.url, "watch", "desk.>", env=env)
        assert code == 1 and "NOT_PERMITTED: the NATS user may not subscribe to desk.>" in err, err
        assert "permissions violation for subscription" in err.lower(), err
        code, out, err = await _desk(server.url, "--timeout", "1", "streams", env=env)
        assert code == 1 and "NOT_PERMITTED" in err, err
        code, out, err = await _desk(server.url, "services", "--wait", "0.2", env=env)
        assert code == 1 and "NOT_PERMITTED" in err, err
        env = _env(NATS_USER=auth.strategy_user("alpha"), NATS_PASSWORD="wrong")
        code, out, err = await _desk(server.url, "streams", env=env)
        assert code == 1 and out == "" and "NOT_AUTHORIZED" in err, err
    finally:
        server.cleanup()


async def test_help_shows_an_example_for_each_command(nats_server: NatsServer) -> None:
    for command in ("watch", "streams", "services"):
        code, out, err = await _desk(nats_server.url, command, "--help")
        assert code == 0 and "Example: desk " + command in out, (command, out, err)


# -- leases ----------------------------------------------------------------------------------------------


async def test_leases_names_each_holder_and_shows_a_value_that_is_not_one_as_such(
    nats_server: NatsServer, nc: Client
) -> None:
    from desk.bus import lease as leases

    code, out, err = await _desk(nats_server.url, "leases")
    assert code == 0 and "no leases held" in out and err == "", (out, err)

    kv, ttl = await leases.open_bucket(nc.jetstream(), 30.0)
    holder = leases.Holder(service="broker_gateway", instance="gw-a", host="club-1", pid=4242, since_ns=1)
    held = leases.Lease(kv, "gateway-sim", ttl, holder)
    assert await held.acquire(asyncio.Event())
    await kv.put("router-p3", b"\xff not json")  # another writer's bytes: listed, never trusted

    code, out, err = await _desk(nats_server.url, "leases", "--json")
    assert code == 0 and err == "", err
    rows = json.loads(out)
    assert [r["key"] for r in rows] == ["gateway-sim", "router-p3"]
    assert rows[0]["holder"] == {
        "service": "broker_gateway",
        "instance": "gw-a",
        "host": "club-1",
        "pid": 4242,
        "since_ns": 1,
    }
    assert rows[1]["holder"] is None and rows[1]["revision"] > rows[0]["revision"]
    code, out, err = await _desk(nats_server.url, "leases")
    assert code == 0 and "gw-a" in out and "club-1" in out and "(not a holder)" in out, (out, err)
    code, out, err = await _desk(nats_server.url, "leases", "--help")
    assert code == 0 and "Example: desk leases" in out, out
