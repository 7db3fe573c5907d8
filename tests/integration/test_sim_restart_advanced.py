"""A bracket's exits and a trailing stop survive a sim gateway SIGKILL: the restarted gateway rebuilds
them from EXECUTIONS with their OCO tie and their trail (the gateway is its own OS process)."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
from nats.aio.client import Client

from desk.bus import codec, streams, subjects
from desk.bus.testing import NatsServer
from desk.core.ids import order_id_for
from desk.v1 import common_pb2, executions_pb2, orders_pb2
from tests.integration.test_sim_restart import Gateway, book, next_reports, publish_bar, route, routed

pytestmark = pytest.mark.integration

E = executions_pb2


def kinds(reports: list[executions_pb2.ExecutionReport]) -> list[tuple[str, str]]:
    return [(r.client_order_id, E.ExecType.Name(r.exec_type).removeprefix("EXEC_TYPE_")) for r in reports]


async def test_a_brackets_exits_and_a_trailing_stop_survive_a_gateway_sigkill(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    js = nc.jetstream()
    await streams.ensure_all(js)
    sub = await js.subscribe(subjects.execution("alpha"), ordered_consumer=True)
    gateway = Gateway(nats_server.url, tmp_path / "gateway.log")
    tp, sl = order_id_for("alpha", "c-br-tp"), order_id_for("alpha", "c-br-sl")
    try:
        await gateway.start(nc)
        await publish_bar(nc, "100", "101", "99", "100")
        await route(
            nc,
            routed(
                "br",
                type=common_pb2.ORDER_TYPE_MARKET,
                order_class=orders_pb2.ORDER_CLASS_BRACKET,
                take_profit_limit_price="110",
                stop_loss_stop_price="95",
            ),
            "br",
        )
        # the outbox publishes in waves (one report per order each): the exits' NEWs may overtake the FILL
        assert sorted(kinds(await next_reports(sub, 4))) == [
            ("c-br", "FILL"),
            ("c-br", "NEW"),
            ("c-br-sl", "NEW"),
            ("c-br-tp", "NEW"),
        ]
        await route(
            nc, routed("tr", side=common_pb2.SIDE_SELL, type=common_pb2.ORDER_TYPE_TRAILING_STOP, trail_price="3"), "tr"
        )
        [trail] = await next_reports(sub, 1)
        assert (trail.stop_price, trail.hwm) == ("97", "100")  # the bar's close

        await gateway.kill9()
        await gateway.start(nc)
        assert sorted(o[0] for o in await book(nc)) == sorted([tp, sl, "tr"])

        # the stop-loss fills and its OCO partner is canceled, as before the kill; the trailing stop
        # (97) is triggered by the same bar's low
        await publish_bar(nc, "96", "96", "94", "94.5")
        after = await next_reports(sub, 3)
        assert sorted(kinds(after)) == [("c-br-sl", "FILL"), ("c-br-tp", "CANCELED"), ("c-tr", "FILL")]
        assert await book(nc) == []
        assert await gateway.terminate() == 0
    finally:
        if gateway.process is not None and gateway.process.returncode is None:
            gateway.process.kill()
            await gateway.process.wait()
        await sub.unsubscribe()

    info = await js.stream_info(subjects.STREAM_EXECUTIONS)
    stored = [
        codec.decode(m.data or b"", E.ExecutionReport, m.headers)
        for m in [await js.get_msg(subjects.STREAM_EXECUTIONS, seq) for seq in range(1, info.state.last_seq + 1)]
    ]
    assert [i for i, n in collections.Counter(r.execution_id for r in stored).items() if n > 1] == []
    assert len(stored) == 8  # 4 NEW, 3 FILL, 1 CANCELED: nothing else, nothing twice after the restart
