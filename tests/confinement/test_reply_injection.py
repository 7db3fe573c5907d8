"""Reply-subject injection, tried as an attacker would: a real strategy deployed on the real embedded
desk (`desk up`), with nothing but its own NATS credentials, sends *allowed* requests to every
endpoint a strategy may publish to, with the reply subject pointed at the desk's buckets, streams,
the JetStream API and other strategies. None takes effect: every one is dropped, counted per reason
in the service's STATS and logged; the buckets and streams are unchanged; the desk still trades."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from desk.bus import codec, confine, subjects
from desk.bus.request import request
from desk.v1 import common_pb2, orders_pb2
from tests.support import ROOT, DeskUp, free_port, poll

pytestmark = pytest.mark.e2e

# Where the attacker points its replies (None: no reply at all).
TARGETS = (
    "$KV.DESK_RISK.halt._global",
    "$KV.DESK_RISK.halt.victim",
    "$KV.DESK_STRATEGIES.victim",
    "$KV.DESK_ORDER_IDS.victim.v-1",
    "$KV.DESK_PRICES.AAPL",
    "$JS.API.STREAM.PURGE.EXECUTIONS",
    "$JS.API.STREAM.DELETE.ORDERS",
    "desk.exec.victim",
    "desk.hb.victim",
    "_INBOX_S.victim.stolen",
    "_INBOX.someone",
    None,
)
EXPECTED_REASONS = Counter({confine.REPLY_NOT_INBOX: 9, confine.REPLY_FOREIGN_INBOX: 2, confine.NO_REPLY: 1})
# endpoint (service, name) -> the subject a strategy sends it on
ENDPOINTS = {
    ("order_router", "submit"): "desk.order.submit.attacker",
    ("order_router", "cancel"): "desk.order.cancel.attacker",
    ("ledger", "own_positions"): "desk.ledger.positions.attacker",
    ("ledger", "own_orders"): "desk.ledger.orders.attacker",
    ("ledger", "own_pnl"): "desk.ledger.pnl.attacker",
}

ATTACKER = """\
import json, os
import nats
from strategy_sdk import Strategy
from desk.bus import codec
from desk.v1 import common_pb2, ledger_pb2, orders_pb2

TARGETS = %(targets)s
ENDPOINTS = %(endpoints)s


class Attacker(Strategy):
    async def on_start(self) -> None:
        me = os.environ["DESK_STRATEGY_ID"]
        nc = await nats.connect(os.environ["NATS_URL"], user=os.environ["NATS_USER"],
                                password=os.environ["NATS_PASSWORD"], inbox_prefix=os.environ["NATS_INBOX_PREFIX"])
        sent = 0
        for subject in ENDPOINTS:
            for i, target in enumerate(TARGETS):
                if subject.startswith("desk.order.submit."):
                    message = orders_pb2.OrderRequest(
                        strategy_id=me, client_order_id=f"evil-{i}", symbol="AAPL", side=common_pb2.SIDE_BUY,
                        type=common_pb2.ORDER_TYPE_MARKET, time_in_force=common_pb2.TIME_IN_FORCE_DAY, qty="1000")
                elif subject.startswith("desk.order.cancel."):
                    message = orders_pb2.CancelRequest(strategy_id=me, client_order_id="anything")
                else:
                    message = ledger_pb2.LedgerQuery(strategy_id=me)
                data, headers = codec.encode(message)
                await nc.publish(subject, data, reply=target or "", headers=headers)
                sent += 1
        await nc.flush()
        # the honest way still works: its own inbox
        answer = await nc.request("desk.ledger.pnl." + me, codec.encode(ledger_pb2.LedgerQuery())[0], timeout=10)
        print(json.dumps({"attacks_sent": sent, "honest_answer_bytes": len(answer.data)}), flush=True)
        await nc.close()
"""

VICTIM_CONFIG = {
    "user_id": "vic",
    "name": "victim",
    "symbols": ["AAPL"],
    "initial_cash": "100000",
    "risk": {"max_order_notional": "2000", "max_orders_per_minute": 30},
}
ATTACKER_CONFIG = {"user_id": "mallory", "name": "attacker", "symbols": ["AAPL"], "initial_cash": "1000"}
VICTIM = """\
from strategy_sdk import Strategy


class Victim(Strategy):
    async def on_start(self) -> None:
        self.log.info("victim up")
"""

REPLY_TYPES = {
    f"desk.v1.{name}" for name in ("OrderAck", "CancelAck", "ErrorReply", "PositionsReply", "OrdersReply", "PnlReply")
}


def write_strategy(folder: Path, source: str, config: Mapping[str, object]) -> None:
    folder.mkdir(parents=True)
    (folder / "strategy.py").write_text(source)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[DeskUp]:
    strategies = tmp_path / "strategies"
    write_strategy(strategies / "victim", VICTIM, VICTIM_CONFIG)
    desk = DeskUp(tmp_path / "var", strategies, free_port())
    yield desk
    if desk.process and desk.process.returncode is None:
        desk.process.kill()
        await desk.process.wait()


async def _stats(nc: Client, service: str) -> dict[str, Counter[str]]:
    reply = json.loads((await nc.request(f"$SRV.STATS.{service}", b"", timeout=10)).data)
    return {e["name"]: Counter((e.get("data") or {}).get("dropped", {})) for e in reply["endpoints"]}


async def test_no_reply_subject_attack_takes_effect_on_any_endpoint(desk: DeskUp, tmp_path: Path) -> None:
    await desk.start()
    nc = await nats.connect(desk.url)
    js = nc.jetstream()
    try:
        # What a forged reply would leave behind: a reply-typed message on any subject but the
        # attacker's own inbox (KV writes, stream publishes, other inboxes, desk subjects).
        leaked: list[str] = []

        async def watch(msg: Msg) -> None:
            kind = (msg.headers or {}).get(codec.DESK_TYPE, "")
            if kind in REPLY_TYPES and not msg.subject.startswith("_INBOX_S.attacker."):
                leaked.append(f"{msg.subject}: {kind}")

        for pattern in ("$KV.>", "desk.>", "_INBOX.someone", "_INBOX_S.victim.stolen", "$JS.API.>"):
            await nc.subscribe(pattern, cb=watch)
        await nc.flush()
        victim_spec = await (await js.key_value(subjects.KV_STRATEGIES)).get("victim")
        before = {
            name: (await js.stream_info(name)).state
            for name in ("EXECUTIONS", "ORDERS", "KV_DESK_RISK", "KV_DESK_ORDER_IDS")
        }

        source = ATTACKER % {"targets": repr(TARGETS), "endpoints": repr(list(ENDPOINTS.values()))}
        write_strategy(desk.strategies / "attacker", source, ATTACKER_CONFIG)
        desk.cli("deploy", "attacker")

        # the attacker says it sent everything (its log, through the orchestrator)
        expected_total = len(TARGETS) * len(ENDPOINTS)

        def attack_report() -> dict[str, int] | None:
            for line in desk.cli("logs", "attacker")["lines"]:
                if line.startswith("{") and "attacks_sent" in line:
                    return dict(json.loads(line))
            return None

        report = await poll(attack_report, "the attacker reports what it sent")
        assert report["attacks_sent"] == expected_total and report["honest_answer_bytes"] > 0

        # every attack dropped and counted, per endpoint and reason
        async def all_dropped() -> bool:
            dropped = {
                **{("order_router", k): v for k, v in (await _stats(nc, "order_router")).items()},
                **{("ledger", k): v for k, v in (await _stats(nc, "ledger")).items()},
            }
            return all(dropped.get(endpoint) == EXPECTED_REASONS for endpoint in ENDPOINTS)

        await poll(all_dropped, "every attack counted as dropped", timeout=30)
        assert leaked == []

        # ... and nothing changed: no halt, the victim's spec, the order ids, the streams
        assert (await js.stream_info("KV_DESK_RISK")).state.messages == before["KV_DESK_RISK"].messages == 0
        spec_now = await (await js.key_value(subjects.KV_STRATEGIES)).get("victim")
        assert spec_now.revision == victim_spec.revision
        assert (await js.stream_info("KV_DESK_ORDER_IDS")).state.messages == before["KV_DESK_ORDER_IDS"].messages
        assert (await js.stream_info("EXECUTIONS")).state.messages >= before["EXECUTIONS"].messages
        assert (await js.stream_info("EXECUTIONS")).state.first_seq == before["EXECUTIONS"].first_seq
        assert (await js.stream_info("ORDERS")).config.name == "ORDERS"
        orders = desk.cli("orders", "-s", "attacker")["orders"]
        assert orders == []  # not one of the 12 forged submits was placed

        # the desk still takes the victim's orders
        ack = await request(
            nc,
            subjects.order_submit("victim"),
            orders_pb2.OrderRequest(
                strategy_id="victim",
                client_order_id="after-attack",
                symbol="AAPL",
                side=common_pb2.SIDE_BUY,
                type=common_pb2.ORDER_TYPE_MARKET,
                time_in_force=common_pb2.TIME_IN_FORCE_DAY,
                qty="1",
            ),
            orders_pb2.OrderAck,
        )
        assert ack.accepted, ack.message
    finally:
        await nc.close()
    assert await desk.interrupt() == 0

    # logged, once per strategy and minute (not once per attack)
    router_log = (desk.data_dir / "logs" / "order_router.log").read_text().splitlines()
    drops = [json.loads(line) for line in router_log if '"request.dropped"' in line]
    assert drops and all(d["strategy_id"] == "attacker" for d in drops) and len(drops) <= 2
    # and the services' own users never needed anything their permissions refuse
    server_log = (desk.data_dir / "logs" / "nats-server.log").read_text().splitlines()
    assert [line for line in server_log if "Violation" in line and "svc-" in line] == []


def test_the_attackers_source_is_a_loadable_strategy(tmp_path: Path) -> None:
    # guards the test above against a typo that would make it vacuous (an attacker that never runs)
    source = ATTACKER % {"targets": repr(TARGETS), "endpoints": repr(list(ENDPOINTS.values()))}
    compile(source, "strategy.py", "exec")
    assert sum(EXPECTED_REASONS.values()) == len(TARGETS)
    assert shutil.which("nats-server") or (ROOT / ".venv" / "bin" / "nats-server").exists()
