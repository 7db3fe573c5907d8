"""The shared bus package against a real nats-server: typed endpoints, refusals, lifecycle."""

from __future__ import annotations

import pytest
from nats.aio.client import Client

from desk.bus import codec
from desk.bus.errors import DeskError
from desk.bus.lifecycle import ServiceRuntime
from desk.bus.micro import add_service
from desk.bus.request import request
from desk.bus.settings import BusSettings
from desk.bus.testing import NatsServer, run_in_process
from desk.v1 import common_pb2, ledger_pb2, orders_pb2

pytestmark = pytest.mark.integration


async def _echo_service(runtime: ServiceRuntime) -> None:
    svc = await add_service(runtime, "echo", "0.1.0", "echoes a LedgerQuery's symbol")

    async def handle(query: ledger_pb2.LedgerQuery, subject: str) -> ledger_pb2.PositionsReply:
        if query.symbol == "BAD":
            raise DeskError("UNKNOWN_SYMBOL", "no such symbol BAD", status=404)
        return ledger_pb2.PositionsReply(positions=[ledger_pb2.Position(symbol=query.symbol)])

    await svc.add_endpoint("echo", "test.echo", ledger_pb2.LedgerQuery, handle)


async def test_typed_endpoint_answers_refuses_and_keeps_serving(nats_server: NatsServer, nc: Client) -> None:
    svc = await run_in_process("echo", BusSettings(nats_url=nats_server.url), _echo_service)
    try:
        reply = await request(nc, "test.echo", ledger_pb2.LedgerQuery(symbol="AAPL"), ledger_pb2.PositionsReply)
        assert reply.positions[0].symbol == "AAPL"

        with pytest.raises(DeskError) as refused:
            await request(nc, "test.echo", ledger_pb2.LedgerQuery(symbol="BAD"), ledger_pb2.PositionsReply)
        assert (refused.value.code, refused.value.status) == ("UNKNOWN_SYMBOL", 404)

        garbage = await nc.request("test.echo", b"\xff\xff\xff", timeout=5)
        assert garbage.headers and garbage.headers["Nats-Service-Error-Code"] == "400"
        assert codec.decode(garbage.data, common_pb2.ErrorReply).code == "MALFORMED"

        wrong, headers = codec.encode(orders_pb2.OrderRequest(symbol="AAPL"))
        wrong_reply = await nc.request("test.echo", wrong, headers=headers, timeout=5)
        assert codec.decode(wrong_reply.data, common_pb2.ErrorReply).code == "WRONG_TYPE"

        huge = await nc.request("test.echo", b"\x00" * (codec.MAX_MESSAGE_BYTES + 1), timeout=5)
        assert codec.decode(huge.data, common_pb2.ErrorReply).code == "PAYLOAD_TOO_LARGE"

        again = await request(nc, "test.echo", ledger_pb2.LedgerQuery(symbol="MSFT"), ledger_pb2.PositionsReply)
        assert again.positions[0].symbol == "MSFT"

        stats = await nc.request("$SRV.STATS.echo", b"", timeout=5)
        assert b'"MALFORMED": 1' in stats.data and b'"WRONG_TYPE": 1' in stats.data
    finally:
        assert await svc.stop() == 0
