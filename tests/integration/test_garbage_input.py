"""Garbage input: thousands of malformed and hostile messages against every endpoint a strategy reaches.

A real nats-server and the real order router, sim broker gateway, ledger and marketdata run in this
event loop. A seeded generator (``random.Random(SEED)``: a failure reproduces) sends random bytes,
truncated orders, every other message type, extreme decimals, payloads up to the server's 1 MB
limit and a flood from one strategy ("alpha") to ``desk.order.*``, ``desk.ledger.*``,
``desk.risk.*`` and ``desk.ctl.*``, and publishes garbage on ``desk.exec.*`` and ``desk.hb.*``.

Every request must be answered: a reply, or a refusal with the micro error headers, a specific code
and a typed body saying why (never INTERNAL / 500); a publish over the server's max_payload is
refused by the client before it is sent; nobody serves ``desk.ctl.*`` here (no orchestrator), which
the server answers with "no responders". Afterwards every service still answers PING, STATS counts
exactly the refusals seen per endpoint and reason, and a second strategy ("beta") trades normally
with books that hold exactly its own fills.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client
from nats.aio.msg import Msg

from desk.bus import codec, subjects
from desk.bus import kv as desk_kv
from desk.bus.errors import DeskError
from desk.bus.request import ERROR_CODE_HEADER, ERROR_HEADER, request, request_raw
from desk.bus.testing import InProcessService, NatsServer, run_in_process
from desk.core.orders import reject_reason
from desk.v1 import common_pb2, executions_pb2, ledger_pb2, marketdata_pb2, orders_pb2, strategy_pb2
from services.broker_gateway.service import BrokerGatewayService
from services.broker_gateway.settings import Settings as GatewaySettings
from services.ledger.service import LedgerService
from services.ledger.settings import Settings as LedgerSettings
from services.marketdata.service import MarketDataService
from services.marketdata.settings import Settings as MarketDataSettings
from services.order_router.service import NAME as ROUTER
from services.order_router.service import OrderRouterService
from services.order_router.settings import Settings as RouterSettings

pytestmark = pytest.mark.integration

SEED = 20260525
E = executions_pb2
BUY, SELL = common_pb2.SIDE_BUY, common_pb2.SIDE_SELL
MARKET, LIMIT = common_pb2.ORDER_TYPE_MARKET, common_pb2.ORDER_TYPE_LIMIT
DAY = common_pb2.TIME_IN_FORCE_DAY
TIMEOUT = 10.0
RATE_LIMIT = 60  # the router's default orders per minute (alpha's and beta's specs set none)
INVALID_TAG = b"\x07"  # field number 0 with wire type 7: no protobuf message parses bytes starting so

SERVICES = ("order_router", "broker_gateway", "ledger", "marketdata")
# subject -> (service, endpoint name) of everything a strategy can send a request to
ROUTER_ENDPOINTS = {
    subjects.order_submit("alpha"): "submit",
    subjects.order_cancel("alpha"): "cancel",
    subjects.RISK_HALT: "halt",
    subjects.RISK_RESUME: "resume",
    subjects.RISK_STATUS: "risk_status",
}
LEDGER_ENDPOINTS = {
    f"desk.ledger.{name}": name for name in ("positions", "orders", "fills", "pnl", "leaderboard", "equity")
}
CTL_SUBJECTS = [subjects.CTL_DEPLOY, subjects.CTL_START, subjects.CTL_STOP, subjects.CTL_LIST, subjects.CTL_LOGS]

# Decimal strings no order may carry (each refused as INVALID_FIELD, whatever field it is in).
EXTREME_DECIMALS = [
    "1e400",
    "-1e400",
    "1e999999999",
    "1e-999999999",
    "1e9999999999999999999",
    "-0",
    "0",
    "+0",
    "-0.0",
    "NaN",
    "-NaN",
    "sNaN",
    "nan",
    "Infinity",
    "-Infinity",
    "inf",
    "1e-30",
    "0.0000000001",
    "9" * 40,
    "1" + "0" * 39,
    "0." + "0" * 39 + "1",
    "-" + "9" * 40,
    "\u0661\u0660",  # Arabic-Indic 10
    "\uff11\uff10",  # full-width 10
    "\u0663.\u0665",  # Arabic-Indic 3.5
    " 10",
    "10 ",
    "\t1\n",
    "1 0",
    "1_000",
    "1,5",
    "0x10",
    "--1",
    "1e",
    "e5",
    ".",
    "1.2.3",
    "\x00",
    "10\x00",
    "½",
    "abc",
    "-1",
]
# The other message types, sent with their own Desk-Type header where another is expected.
OTHER_TYPES = [
    orders_pb2.CancelRequest(strategy_id="alpha", client_order_id="x"),
    orders_pb2.HaltRequest(strategy_id="beta", reason="mine now"),
    orders_pb2.RoutedOrder(order_id="o", strategy_id="beta"),
    orders_pb2.OrderAck(strategy_id="beta", accepted=True),
    executions_pb2.ExecutionReport(execution_id="e", strategy_id="beta", fill_qty="100", fill_price="1"),
    ledger_pb2.LedgerQuery(strategy_id="beta"),
    marketdata_pb2.Bar(symbol="AAPL", open="1", high="1", low="1", close="1"),
    marketdata_pb2.Trade(symbol="AAPL", price="0.01"),
    strategy_pb2.StrategySpec(strategy_id="alpha", initial_cash="1e12"),
    strategy_pb2.StrategyControl(strategy_id="beta"),
    strategy_pb2.Heartbeat(strategy_id="beta"),
    common_pb2.ErrorReply(code="OK"),
]


def _order(strategy_id: str = "alpha", client_order_id: str = "c-1", **fields: Any) -> orders_pb2.OrderRequest:
    base: dict[str, Any] = {
        "strategy_id": strategy_id,
        "client_order_id": client_order_id,
        "symbol": "AAPL",
        "side": BUY,
        "type": MARKET,
        "time_in_force": DAY,
        "qty": "1",
    }
    base.update(fields)
    return orders_pb2.OrderRequest(**base)


def _parses(data: bytes, message_type: type[Message]) -> bool:
    try:
        message_type().ParseFromString(data)
    except DecodeError:
        return False
    return True


@dataclass(frozen=True)
class Probe:
    """One hostile request, and the codes its refusal may carry (None: any specific code, or a reply)."""

    kind: str
    subject: str
    data: bytes
    headers: dict[str, str] | None
    codes: frozenset[str] | None


def _refused(*codes: str) -> frozenset[str]:
    return frozenset(codes)


class Garbage:
    """The seeded generator of hostile requests."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def junk(self, max_len: int = 2048) -> bytes:
        return self.rng.randbytes(self.rng.choice([0, 1, 2, 7, 64, self.rng.randrange(max_len + 1)]))

    def header(self, message: Message | None = None) -> dict[str, str] | None:
        return None if message is None or self.rng.random() < 0.3 else codec.headers_for(message)

    def submits(self, n: int) -> list[Probe]:
        subject = subjects.order_submit("alpha")
        probes: list[Probe] = []
        for i in range(n):
            kind = self.rng.choice(["bytes", "truncated", "other_type", "decimal", "spoof", "fields", "bad_header"])
            if kind == "bytes":
                data = self.junk()
                codes = _refused("MALFORMED") if not _parses(data, orders_pb2.OrderRequest) else None
                probes.append(Probe(kind, subject, data, None, codes))
            elif kind == "truncated":
                full = _order(client_order_id=f"t-{i}", qty=self.rng.choice(["1", "2.5", "0.001"]))
                data = full.SerializeToString()
                cut = data[: self.rng.randrange(len(data))]  # always drops at least part of qty, the last field
                codes = _refused("MALFORMED", "INVALID_FIELD", "WRONG_SUBJECT")
                probes.append(Probe(kind, subject, cut, self.header(full), codes))
            elif kind == "other_type":
                message = self.rng.choice(OTHER_TYPES)
                probes.append(
                    Probe(
                        kind, subject, message.SerializeToString(), codec.headers_for(message), _refused("WRONG_TYPE")
                    )
                )
            elif kind == "decimal":
                value = self.rng.choice(EXTREME_DECIMALS)
                field = self.rng.choice(["qty", "notional", "limit_price"])
                fields: dict[str, Any] = {"qty": ""} if field == "notional" else {}
                if field == "limit_price":
                    fields["type"] = LIMIT
                fields[field] = value
                message = _order(client_order_id=f"d-{i}", **fields)
                probes.append(
                    Probe(kind, subject, message.SerializeToString(), self.header(message), _refused("INVALID_FIELD"))
                )
            elif kind == "spoof":  # alpha sends beta's orders on its own subject
                message = _order("beta", f"s-{i}")
                probes.append(
                    Probe(kind, subject, message.SerializeToString(), self.header(message), _refused("WRONG_SUBJECT"))
                )
            elif kind == "fields":  # one bad non-numeric field each
                bad: dict[str, Any] = self.rng.choice(
                    [
                        {"symbol": "ZZZZ"},
                        {"symbol": "aapl"},
                        {"symbol": "AAPL.>"},
                        {"symbol": "A" * 5000},
                        {"client_order_id": ""},
                        {"client_order_id": "x" * 65},
                        {"client_order_id": "a b"},
                        {"side": 99},
                        {"type": -1},
                        {"time_in_force": 12345},
                        {"extended_hours": True},
                        {"stop_price": "10"},
                        {"limit_price": "10"},
                        {"strategy_id": ""},
                    ]
                )
                message = _order(**{"client_order_id": f"f-{i}", **bad})
                probes.append(
                    Probe(
                        kind,
                        subject,
                        message.SerializeToString(),
                        self.header(message),
                        _refused("INVALID_FIELD", "UNKNOWN_SYMBOL", "WRONG_SUBJECT"),
                    )
                )
            else:  # a Desk-Type header that names no type, or the wrong one
                message = _order(client_order_id=f"h-{i}")
                headers = {codec.DESK_TYPE: self.rng.choice(["desk.v1.Nope", "", "desk.v1.OrderAck", "\u00e9" * 10])}
                codes = None if headers[codec.DESK_TYPE] == "" else _refused("WRONG_TYPE")
                if codes is None:  # an empty Desk-Type is no type at all: make the body bad instead
                    message.qty = "NaN"
                    codes = _refused("INVALID_FIELD")
                probes.append(Probe(kind, subject, message.SerializeToString(), headers, codes))
        return probes

    def cancels(self, n: int) -> list[Probe]:
        subject = subjects.order_cancel("alpha")
        probes: list[Probe] = []
        for i in range(n):
            kind = self.rng.choice(["bytes", "other_type", "spoof", "unknown", "bad_id"])
            if kind == "bytes":
                data = self.junk()
                codes = _refused("MALFORMED") if not _parses(data, orders_pb2.CancelRequest) else None
                probes.append(Probe(kind, subject, data, None, codes))
            elif kind == "other_type":
                message = self.rng.choice([m for m in OTHER_TYPES if not isinstance(m, orders_pb2.CancelRequest)])
                probes.append(
                    Probe(
                        kind, subject, message.SerializeToString(), codec.headers_for(message), _refused("WRONG_TYPE")
                    )
                )
            else:
                cancel = orders_pb2.CancelRequest(
                    strategy_id="beta" if kind == "spoof" else "alpha",
                    client_order_id={"spoof": "beta-1", "unknown": f"never-{i}", "bad_id": "no such id!"}[kind],
                )
                codes = {
                    "spoof": _refused("WRONG_SUBJECT"),
                    "unknown": _refused("UNKNOWN_ORDER"),
                    "bad_id": _refused("INVALID_FIELD"),
                }[kind]
                probes.append(Probe(kind, subject, cancel.SerializeToString(), self.header(cancel), codes))
        return probes

    def ledger_queries(self, n: int) -> list[Probe]:
        probes: list[Probe] = []
        for _ in range(n):
            subject = self.rng.choice(list(LEDGER_ENDPOINTS))
            kind = self.rng.choice(["bytes", "other_type", "bad_query", "odd_query"])
            if kind == "bytes":
                data = self.junk()
                codes = _refused("MALFORMED") if not _parses(data, ledger_pb2.LedgerQuery) else None
                probes.append(Probe(kind, subject, data, None, codes))
            elif kind == "other_type":
                message = self.rng.choice([m for m in OTHER_TYPES if not isinstance(m, ledger_pb2.LedgerQuery)])
                probes.append(
                    Probe(
                        kind, subject, message.SerializeToString(), codec.headers_for(message), _refused("WRONG_TYPE")
                    )
                )
            elif kind == "bad_query":
                query = self.rng.choice(
                    [
                        ledger_pb2.LedgerQuery(strategy_id="Beta!"),
                        ledger_pb2.LedgerQuery(symbol="aapl"),
                        ledger_pb2.LedgerQuery(member_id="m" * 65),
                        ledger_pb2.LedgerQuery(since_ns=-1),
                        ledger_pb2.LedgerQuery(strategy_id="x" * 5000),
                        ledger_pb2.LedgerQuery(symbol="AAPL'; DROP TABLE"),
                    ]
                )
                probes.append(
                    Probe(kind, subject, query.SerializeToString(), self.header(query), _refused("INVALID_FIELD"))
                )
            else:  # well-formed but odd: answered normally
                query = ledger_pb2.LedgerQuery(
                    strategy_id=self.rng.choice(["", "alpha", "beta", "nobody"]),
                    limit=self.rng.choice([0, 1, 2**32 - 1]),
                    since_ns=self.rng.choice([0, 2**63 - 1]),
                )
                probes.append(Probe(kind, subject, query.SerializeToString(), self.header(query), None))
        return probes

    def risk(self, n: int) -> list[Probe]:
        """Nothing here may halt the desk: halt/resume only get bodies that cannot be a valid request.

        (A well-formed HaltRequest would work on this server, which has no permissions: the operator's
        ``desk.risk.halt`` / ``resume`` must be denied to strategy users by the deployment.)
        """
        probes: list[Probe] = []
        for _ in range(n):
            subject = self.rng.choice(list(ROUTER_ENDPOINTS)[2:])
            kind = self.rng.choice(["bytes", "other_type", "bad_id"])
            if kind == "bytes":
                data = INVALID_TAG + self.junk() if subject != subjects.RISK_STATUS else self.junk()
                codes = _refused("MALFORMED") if not _parses(data, orders_pb2.HaltRequest) else None
                probes.append(Probe(kind, subject, data, None, codes))
            elif kind == "other_type":
                message = self.rng.choice([m for m in OTHER_TYPES if not isinstance(m, orders_pb2.HaltRequest)])
                probes.append(
                    Probe(
                        kind, subject, message.SerializeToString(), codec.headers_for(message), _refused("WRONG_TYPE")
                    )
                )
            else:
                halt = orders_pb2.HaltRequest(strategy_id=self.rng.choice(["Beta", "beta!", "_global", "x" * 33]))
                codes = _refused("INVALID_FIELD") if subject != subjects.RISK_STATUS else None
                probes.append(Probe(kind, subject, halt.SerializeToString(), self.header(halt), codes))
        return probes

    def big(self, max_payload: int) -> list[Probe]:
        """Bodies between the codec's 64 KiB limit and the server's max_payload (headers fit in the rest)."""
        sizes = [codec.MAX_MESSAGE_BYTES + 1, 100_000, 512 * 1024, max_payload - 4096]
        probes: list[Probe] = []
        for subject in [*ROUTER_ENDPOINTS, *LEDGER_ENDPOINTS]:
            size = self.rng.choice(sizes)
            data = self.rng.choice([b"\x00" * size, self.rng.randbytes(size)])
            probes.append(
                Probe(
                    "big",
                    subject,
                    data,
                    self.rng.choice([None, {codec.DESK_TYPE: "desk.v1.OrderRequest"}]),
                    _refused("PAYLOAD_TOO_LARGE"),
                )
            )
        return probes

    def executions(self, n: int) -> list[tuple[str, bytes, dict[str, str]]]:
        """Reports every consumer must skip (each one malformed for the ledger: it counts them)."""
        out: list[tuple[str, bytes, dict[str, str]]] = []
        for i in range(n):
            kind = self.rng.choice(["bytes", "other_type", "no_id", "bad_number", "bad_strategy", "big"])
            if kind == "bytes":
                out.append((subjects.execution("alpha"), INVALID_TAG + self.junk(), {}))
            elif kind == "other_type":
                message = self.rng.choice([m for m in OTHER_TYPES if not isinstance(m, E.ExecutionReport)])
                out.append((subjects.execution("alpha"), message.SerializeToString(), codec.headers_for(message)))
            elif kind == "big":
                out.append((subjects.execution("alpha"), b"\x00" * (codec.MAX_MESSAGE_BYTES + 1 + i), {}))
            else:
                report = E.ExecutionReport(
                    execution_id="" if kind == "no_id" else f"garbage-{i}",
                    order_id=f"o-{i}",
                    strategy_id="al pha" if kind == "bad_strategy" else "alpha",
                    symbol="AAPL",
                    side=BUY,
                    exec_type=E.EXEC_TYPE_FILL,
                    status=E.ORDER_STATUS_FILLED,
                    fill_qty="1",
                    fill_price="1",
                )
                if kind == "no_id":
                    report.fill_qty, report.fill_price = "", ""  # nothing a consumer could book even without the id
                if kind == "bad_number":
                    value = self.rng.choice(["NaN", "abc", "-1", "Infinity", "", "0"])
                    report.fill_price = value
                    report.fill_qty = "" if value == "" else "1"
                    if value == "":
                        report.exec_type = E.EXEC_TYPE_PARTIAL_FILL  # a partial fill needs a qty
                    if value == "-1":
                        report.fill_qty, report.fill_price = "-1", "1"
                out.append((subjects.execution("alpha"), report.SerializeToString(), codec.headers_for(report)))
        return out


# --- the desk -----------------------------------------------------------------------------------


@dataclass
class Desk:
    nc: Client
    router: OrderRouterService
    ledger: LedgerService
    services: dict[str, InProcessService]


async def _put(nc: Client, bucket: str, key: str, message: Message) -> None:
    await desk_kv.put(nc.jetstream(), bucket, key, message)


@pytest.fixture
async def desk(nats_server: NatsServer, nc: Client, tmp_path: Path) -> AsyncIterator[Desk]:
    for strategy_id in ("alpha", "beta"):
        spec = strategy_pb2.StrategySpec(strategy_id=strategy_id, member_id=f"m-{strategy_id}", initial_cash="100000")
        await _put(nc, subjects.KV_STRATEGIES, strategy_id, spec)
    url = nats_server.url
    started: dict[str, InProcessService] = {}
    try:
        # synthetic prices land in DESK_PRICES at once; the first bar would come after an hour
        md = MarketDataSettings(nats_url=url, md_symbols="AAPL,MSFT", md_interval=3600)
        started["marketdata"] = await run_in_process("marketdata", md, MarketDataService(md).start)
        await _put(nc, subjects.KV_PRICES, "AAPL", marketdata_pb2.Trade(symbol="AAPL", price="100", ts_ns=1))
        ledger_settings = LedgerSettings(nats_url=url, ledger_db_path=str(tmp_path / "ledger.db"), drain_timeout=5)
        ledger = LedgerService(ledger_settings)
        started["ledger"] = await run_in_process("ledger", ledger_settings, ledger.start)
        gateway = GatewaySettings(nats_url=url, drain_timeout=5)
        started["broker_gateway"] = await run_in_process("broker_gateway", gateway, BrokerGatewayService(gateway).start)
        router_settings = RouterSettings(nats_url=url)
        router = OrderRouterService(router_settings)
        started["order_router"] = await run_in_process(ROUTER, router_settings, router.start)
        await router.wait_until(lambda: router.prices.get("AAPL") == Decimal(100))
        await ledger.wait_for(lambda _: ledger.prices.get("AAPL") == Decimal(100))
        yield Desk(nc, router, ledger, started)
    finally:
        for name in reversed(list(started)):
            assert await started[name].stop() == 0, f"{name} did not stop cleanly"


class Executions:
    """Execution reports of one strategy, as the sim venue publishes them."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[E.ExecutionReport] = asyncio.Queue()
        self.fills: list[E.ExecutionReport] = []

    async def on_msg(self, msg: Msg) -> None:
        try:
            report = codec.decode(msg.data, E.ExecutionReport, msg.headers)
        except DeskError:
            return  # the garbage this test publishes itself
        if report.venue != "sim":
            return
        if report.exec_type in (E.EXEC_TYPE_FILL, E.EXEC_TYPE_PARTIAL_FILL):
            self.fills.append(report)
        await self.queue.put(report)

    async def until(self, client_order_id: str, exec_type: int) -> E.ExecutionReport:
        while True:
            report = await asyncio.wait_for(self.queue.get(), TIMEOUT)
            if report.client_order_id == client_order_id and report.exec_type == exec_type:
                return report


async def _ask(nc: Client, probe: Probe) -> tuple[str, str]:
    """(status, code) of the reply: ("200", "") for an answer, else the refusal's, checked for a clear body."""
    reply = await request_raw(nc, probe.subject, probe.data, headers=probe.headers, timeout=TIMEOUT)
    headers = reply.headers or {}
    if ERROR_CODE_HEADER not in headers:
        return "200", ""
    status, code = headers[ERROR_CODE_HEADER], headers[ERROR_HEADER].split(":", 1)[0]
    if probe.subject.startswith("desk.order.submit."):
        ack = codec.decode(reply.data, orders_pb2.OrderAck, headers)
        assert (ack.accepted, ack.reason) == (False, reject_reason(code)) and ack.message, (probe.kind, ack)
    elif probe.subject.startswith("desk.order.cancel."):
        cancel_ack = codec.decode(reply.data, orders_pb2.CancelAck, headers)
        assert not cancel_ack.accepted and cancel_ack.message, (probe.kind, cancel_ack)
    else:
        error = codec.decode(reply.data, common_pb2.ErrorReply, headers)
        assert error.code == code and error.message, (probe.kind, error)
    return status, code


def _endpoint(subject: str) -> tuple[str, str]:
    if subject in ROUTER_ENDPOINTS:
        return "order_router", ROUTER_ENDPOINTS[subject]
    return "ledger", LEDGER_ENDPOINTS[subject]


async def _in_chunks(items: list[Any], send: Callable[[Any], Any], size: int = 50) -> list[Any]:
    results: list[Any] = []
    for start in range(0, len(items), size):
        results += await asyncio.gather(*(send(item) for item in items[start : start + size]))
    return results


async def _stats_errors(nc: Client, service: str) -> dict[str, dict[str, int]]:
    stats = json.loads((await nc.request(f"$SRV.STATS.{service}", b"", timeout=TIMEOUT)).data)
    return {e["name"]: dict((e.get("data") or {}).get("errors", {})) for e in stats["endpoints"]}


async def _beta_order(desk: Desk, execs: Executions, client_order_id: str, side: int, qty: str) -> E.ExecutionReport:
    ack = await request(
        desk.nc, subjects.order_submit("beta"), _order("beta", client_order_id, side=side, qty=qty), orders_pb2.OrderAck
    )
    assert ack.accepted, ack
    return await execs.until(client_order_id, E.EXEC_TYPE_FILL)


async def test_thousands_of_hostile_messages_are_refused_and_harm_no_one(desk: Desk, nc: Client) -> None:
    garbage = Garbage(SEED)
    beta_execs = Executions()
    beta_sub = await nc.subscribe(subjects.execution("beta"), cb=beta_execs.on_msg)
    alpha_execs = Executions()
    alpha_sub = await nc.subscribe(subjects.execution("alpha"), cb=alpha_execs.on_msg)
    await nc.flush()

    # beta opens a position before the storm: its order rests until the sim sees a price
    ack = await request(nc, subjects.order_submit("beta"), _order("beta", "beta-1", qty="5"), orders_pb2.OrderAck)
    assert ack.accepted
    await beta_execs.until("beta-1", E.EXEC_TYPE_NEW)
    body, headers = codec.encode(marketdata_pb2.Trade(symbol="AAPL", price="100", ts_ns=1))
    await nc.publish(subjects.md_trade("AAPL"), body, headers=headers)
    await beta_execs.until("beta-1", E.EXEC_TYPE_FILL)

    refusals: Counter[tuple[str, str, str]] = Counter()  # (service, endpoint, code)

    # 1. a flood from alpha: valid orders until the rate limit, then RATE_LIMIT (429)
    flood = [
        Probe(
            "flood",
            subjects.order_submit("alpha"),
            _order(client_order_id=f"flood-{i}").SerializeToString(),
            codec.headers_for(orders_pb2.OrderRequest()),
            None,
        )
        for i in range(150)
    ]
    flood_replies = [await _ask(nc, probe) for probe in flood]  # one at a time: the window is exact
    assert Counter(flood_replies) == Counter({("200", ""): RATE_LIMIT, ("429", "RATE_LIMIT"): 150 - RATE_LIMIT})
    refusals[("order_router", "submit", "RATE_LIMIT")] += 150 - RATE_LIMIT

    # 2. thousands of hostile requests, 50 in flight at a time
    probes = [
        *garbage.submits(1500),
        *garbage.cancels(400),
        *garbage.ledger_queries(600),
        *garbage.risk(300),
        *garbage.big(nc.max_payload),
    ]
    garbage.rng.shuffle(probes)

    async def ask(probe: Probe) -> tuple[Probe, str, str]:
        status, code = await _ask(nc, probe)
        return probe, status, code

    answered = await _in_chunks(probes, ask)
    assert len(answered) == len(probes) >= 2800
    for probe, status, code in answered:
        assert status != "500" and code != "INTERNAL", (probe, status, code)
        if probe.codes is not None:
            assert code in probe.codes, (probe.kind, probe.subject, probe.data[:80], probe.headers, status, code)
        if status != "200":
            service, endpoint = _endpoint(probe.subject)
            refusals[(service, endpoint, code)] += 1
    by_kind = Counter(probe.kind for probe, status, _ in answered if status != "200")
    assert by_kind["decimal"] > 100 and by_kind["truncated"] > 100 and by_kind["big"] == len(ROUTER_ENDPOINTS) + 6

    # beyond the server's max_payload: refused by the client before a byte is sent
    for subject in (subjects.order_submit("alpha"), subjects.LEDGER_PNL):
        with pytest.raises(nats.errors.MaxPayloadError):
            await nc.request(subject, b"\x00" * (nc.max_payload + 1), timeout=TIMEOUT)

    # nobody serves desk.ctl.* here (no orchestrator): the server answers "no responders"
    for subject in CTL_SUBJECTS:
        with pytest.raises(nats.errors.NoRespondersError):
            await nc.request(subject, garbage.junk(), timeout=TIMEOUT)

    # 3. garbage on the streams a strategy could publish to: executions (the ledger skips and counts
    # them) and heartbeats (nobody here consumes them)
    js = nc.jetstream()
    bad_reports = garbage.executions(300)
    for subject, data, hdrs in bad_reports:
        await js.publish(subject, data, headers=hdrs or None)
    for _ in range(100):
        await nc.publish(subjects.heartbeat("alpha"), garbage.junk(), headers=garbage.header(strategy_pb2.Heartbeat()))
    await nc.flush()

    # 4. beta trades on as if nothing happened
    await _beta_order(desk, beta_execs, "beta-2", BUY, "3")
    await desk.router.wait_until(lambda: desk.router.account("beta").position("AAPL") == 8)
    await _beta_order(desk, beta_execs, "beta-3", SELL, "2")

    # the ledger has read the whole stream: every fill booked, every bad report skipped and counted
    last_seq = (await js.stream_info(subjects.STREAM_EXECUTIONS)).state.last_seq
    stats = await desk.ledger.wait_for(lambda s: s.messages >= last_seq, timeout=TIMEOUT)
    assert stats.malformed == len(bad_reports)
    assert stats.fills_booked == len(beta_execs.fills) + len(alpha_execs.fills)
    assert len(alpha_execs.fills) == RATE_LIMIT  # every accepted flood order filled, nothing else of alpha did

    # every service is alive and answers PING; none of their tasks ended
    for name in SERVICES:
        pong = json.loads((await nc.request(f"$SRV.PING.{name}", b"", timeout=TIMEOUT)).data)
        assert pong["name"] == name
        assert not desk.services[name].task.done()
    status = await request(nc, subjects.RISK_STATUS, orders_pb2.HaltRequest(), orders_pb2.HaltAck)
    assert (status.global_halted, list(status.halted_strategies)) == (False, [])

    # STATS shows exactly the refusals seen, per endpoint and reason
    for service in ("order_router", "ledger"):
        errors = await _stats_errors(nc, service)
        seen: dict[str, dict[str, int]] = {}
        for (svc, endpoint, code), count in refusals.items():
            if svc == service:
                seen.setdefault(endpoint, {})[code] = count
        assert {k: v for k, v in errors.items() if v} == seen, service
    router_errors = await _stats_errors(nc, "order_router")
    assert {"MALFORMED", "WRONG_TYPE", "INVALID_FIELD", "WRONG_SUBJECT", "PAYLOAD_TOO_LARGE", "RATE_LIMIT"} <= set(
        router_errors["submit"]
    )

    # beta's books are exactly its own three fills
    fills = beta_execs.fills
    assert [(f.client_order_id, f.fill_qty) for f in fills] == [("beta-1", "5"), ("beta-2", "3"), ("beta-3", "2")]
    bought = [(Decimal(f.fill_qty), Decimal(f.fill_price), Decimal(f.fee)) for f in fills if f.side == BUY]
    sold = [(Decimal(f.fill_qty), Decimal(f.fill_price), Decimal(f.fee)) for f in fills if f.side == SELL]
    zero = Decimal(0)
    buy_qty, buy_cost = sum((q for q, _, _ in bought), zero), sum((q * p for q, p, _ in bought), zero)
    avg = buy_cost / buy_qty  # both buys fill at the same price here: exact
    sell_qty, sell_value = sum((q for q, _, _ in sold), zero), sum((q * p for q, p, _ in sold), zero)
    fees = sum((f for *_, f in bought + sold), zero)
    qty, realized = buy_qty - sell_qty, sell_value - avg * sell_qty
    cash = Decimal(100000) - buy_cost + sell_value - fees
    last = Decimal(100)

    positions = (
        await request(
            nc, subjects.LEDGER_POSITIONS, ledger_pb2.LedgerQuery(strategy_id="beta"), ledger_pb2.PositionsReply
        )
    ).positions
    assert [
        (p.symbol, Decimal(p.qty), Decimal(p.avg_cost), Decimal(p.realized_pnl), Decimal(p.unrealized_pnl))
        for p in positions
    ] == [("AAPL", qty, avg, realized, qty * last - avg * qty)]
    pnl = (
        await request(nc, subjects.LEDGER_PNL, ledger_pb2.LedgerQuery(strategy_id="beta"), ledger_pb2.PnlReply)
    ).strategies
    assert [
        (r.strategy_id, Decimal(r.cash), Decimal(r.realized_pnl), Decimal(r.fees), Decimal(r.equity), r.fills)
        for r in pnl
    ] == [("beta", cash, realized, fees, cash + qty * last, 3)]
    ledger_fills = (
        await request(nc, subjects.LEDGER_FILLS, ledger_pb2.LedgerQuery(strategy_id="beta"), ledger_pb2.FillsReply)
    ).fills
    assert sorted(f.execution_id for f in ledger_fills) == sorted(f.execution_id for f in fills)
    orders = (
        await request(nc, subjects.LEDGER_ORDERS, ledger_pb2.LedgerQuery(strategy_id="beta"), ledger_pb2.OrdersReply)
    ).orders
    assert sorted(o.client_order_id for o in orders) == ["beta-1", "beta-2", "beta-3"]
    # and the router's view of beta (its pre-trade risk) agrees
    await desk.router.wait_until(lambda: fills[-1].execution_id in desk.router.applied_executions)
    account = desk.router.account("beta")
    assert (account.position("AAPL"), account.cash_change) == (qty, cash - Decimal(100000))

    await beta_sub.unsubscribe()
    await alpha_sub.unsubscribe()


async def _publish_report(nc: Client, report: E.ExecutionReport) -> None:
    data, headers = codec.encode(report)
    await nc.jetstream().publish(subjects.execution(report.strategy_id or "alpha"), data, headers=headers)


async def test_an_execution_report_with_an_overflowing_decimal_is_skipped_not_fatal(desk: Desk, nc: Client) -> None:
    ledger = desk.services.pop("ledger")  # stopped and checked here, so a failure is the test's
    try:
        # parse_decimal's abs() rounds in the default context: 1e999999999 overflows it
        for n, value in enumerate(["1e999999999", "-1e999999999"]):
            await _publish_report(
                nc,
                E.ExecutionReport(
                    execution_id=f"overflow-{n}",
                    order_id="o",
                    strategy_id="alpha",
                    symbol="AAPL",
                    side=BUY,
                    exec_type=E.EXEC_TYPE_NEW,
                    status=E.ORDER_STATUS_NEW,
                    cum_qty=value,
                ),
            )
        fine = E.ExecutionReport(
            execution_id="fine",
            order_id="o2",
            strategy_id="alpha",
            symbol="AAPL",
            side=BUY,
            exec_type=E.EXEC_TYPE_FILL,
            status=E.ORDER_STATUS_FILLED,
            fill_qty="1",
            fill_price="100",
        )
        await _publish_report(nc, fine)
        booked = asyncio.ensure_future(desk.ledger.wait_for(lambda s: s.messages >= 3, timeout=TIMEOUT))
        await asyncio.wait({booked, ledger.task}, return_when=asyncio.FIRST_COMPLETED)
        if not booked.done():
            booked.cancel()
        assert not ledger.task.done(), f"the ledger stopped with exit code {ledger.task.result()}"
        stats = booked.result()
        assert (stats.malformed, stats.fills_booked) == (2, 1)
    finally:
        code = await ledger.stop()
    assert code == 0


async def test_a_report_the_ledger_refuses_does_not_move_the_routers_view_of_a_strategy(desk: Desk, nc: Client) -> None:
    forged = [
        # no execution id: the ledger refuses it (INVALID_FIELD), so it is no fill of beta's
        E.ExecutionReport(
            order_id="x1",
            strategy_id="beta",
            symbol="AAPL",
            side=BUY,
            exec_type=E.EXEC_TYPE_FILL,
            status=E.ORDER_STATUS_FILLED,
            fill_qty="1000",
            fill_price="1",
        ),
        # a NaN price: refused by the ledger too
        E.ExecutionReport(
            execution_id="x2",
            order_id="x2",
            strategy_id="beta",
            symbol="AAPL",
            side=BUY,
            exec_type=E.EXEC_TYPE_FILL,
            status=E.ORDER_STATUS_FILLED,
            fill_qty="1",
            fill_price="NaN",
        ),
    ]
    for report in forged:
        await _publish_report(nc, report)
    stats = await desk.ledger.wait_for(lambda s: s.messages >= len(forged), timeout=TIMEOUT)
    assert stats.malformed == len(forged)
    await desk.router.wait_until(lambda: "x2" in desk.router.applied_executions)  # the router read both
    account = desk.router.account("beta")
    assert (account.position("AAPL"), account.cash_change) == (Decimal(0), Decimal(0))
    ack = await request(nc, subjects.order_submit("beta"), _order("beta", "after-forgery"), orders_pb2.OrderAck)
    assert ack.accepted, ack
