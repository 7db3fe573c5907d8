"""Two ledger replicas against a real nats-server: each its own SQLite file and its own consumer
(``ledger-<LEDGER_INSTANCE>``), both book every execution, both answer reads; a second ledger on a file
another ledger holds is refused at start, naming the holder."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nats.aio.client import Client

from desk.bus import subjects
from desk.bus.request import request
from desk.bus.testing import NatsServer, run_in_process
from desk.v1 import ledger_pb2
from services.ledger.filelock import FileInUse, FileLock
from services.ledger.service import NAME, LedgerService
from services.ledger.settings import Settings
from services.ledger.store import LedgerStore
from tests.integration.test_ledger import E, publish, report
from tests.support import watch_logs

pytestmark = pytest.mark.integration

BOUND = 30.0


def settings(server: NatsServer, path: Path, instance: str) -> Settings:
    return Settings(nats_url=server.url, ledger_db_path=str(path), ledger_instance=instance, drain_timeout=5)


async def test_two_replicas_book_everything_each_in_its_own_file_and_both_answer(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    a = LedgerService(settings(nats_server, tmp_path / "a.db", "a"))
    sa = await run_in_process(NAME, a.settings, a.start, timeout=BOUND)
    sb = None
    try:
        fills = [
            report("alpha", f"o{i}", E.EXEC_TYPE_FILL, fill_qty="1", fill_price="10", member_id="al") for i in range(40)
        ]
        for r in fills[:20]:
            await publish(nc, r)
        await a.wait_for(lambda s: s.fills_booked >= 20, BOUND)
        # a replica started later books the whole stream from its own consumer
        b = LedgerService(settings(nats_server, tmp_path / "b.db", "b"))
        sb = await run_in_process(NAME, b.settings, b.start, timeout=BOUND)
        for r in fills[20:]:
            await publish(nc, r)
        await a.wait_for(lambda s: s.fills_booked == 40, BOUND)
        await b.wait_for(lambda s: s.fills_booked == 40, BOUND)
        js = nc.jetstream()
        for durable in ("ledger-a", "ledger-b"):
            info = await js.consumer_info(subjects.STREAM_EXECUTIONS, durable)
            assert info.num_pending == 0 and info.num_ack_pending == 0, durable
        with pytest.raises(Exception, match="not found"):
            await js.consumer_info(subjects.STREAM_EXECUTIONS, subjects.LEDGER_DURABLE)  # no single-ledger consumer
        # both answer reads (one queue group): every answer, whoever gave it, has the same 40 fills
        for _ in range(6):
            reply = await request(
                nc,
                subjects.LEDGER_POSITIONS,
                ledger_pb2.LedgerQuery(strategy_id="alpha"),
                ledger_pb2.PositionsReply,
                timeout=10,
            )
            assert [(p.symbol, p.qty) for p in reply.positions] == [("AAPL", "40")]
    finally:
        if sb is not None:
            assert await asyncio.wait_for(sb.stop(), BOUND) == 0
        assert await asyncio.wait_for(sa.stop(), BOUND) == 0
    # the books of the two files are equal
    books = []
    for path in (tmp_path / "a.db", tmp_path / "b.db"):
        async with LedgerStore(path) as store:
            got = await store.fills(ledger_pb2.LedgerQuery(), 1000)
            positions = await store.positions()
            books.append(
                (
                    sorted((f.execution_id, f.qty, f.price) for f in got),
                    [(p.strategy_id, p.position.symbol, p.position.qty) for p in positions],
                )
            )
    assert books[0] == books[1] and len(books[0][0]) == 40


async def test_a_second_ledger_on_the_same_file_is_refused(nats_server: NatsServer, nc: Client, tmp_path: Path) -> None:
    path = tmp_path / "books.db"
    first = LedgerService(settings(nats_server, path, "a"))
    running = await run_in_process(NAME, first.settings, first.start, timeout=BOUND)
    try:
        second = LedgerService(settings(nats_server, path, "b"))
        with watch_logs() as logs:
            with pytest.raises(RuntimeError, match="exited during start-up with code 1"):
                await run_in_process(NAME, second.settings, second.start, timeout=BOUND)
            failed = await logs.wait_for("service.start_failed")
        assert "FileInUse" in failed["error"] and "another ledger" in failed["error"] and "books.db" in failed["error"]
        # nothing of the second was made: no consumer of its own
        with pytest.raises(Exception, match="not found"):
            await nc.jetstream().consumer_info(subjects.STREAM_EXECUTIONS, "ledger-b")
    finally:
        assert await asyncio.wait_for(running.stop(), BOUND) == 0
    FileLock(path).take().release()  # free again once the first stopped


def test_the_lock_is_refused_while_held_and_free_after(tmp_path: Path) -> None:
    held = FileLock(tmp_path / "x.db").take()
    with pytest.raises(FileInUse, match=r"another ledger \(pid \d+\) writes x.db"):
        FileLock(tmp_path / "x.db").take()
    held.release()
    FileLock(tmp_path / "x.db").take().release()
