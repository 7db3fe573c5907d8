"""Ledger ingest: executions from the EXECUTIONS stream to committed SQLite rows (durable), and its growth."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import aiosqlite
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from bench.harness import Desk
from bench.stats import Figure, Target
from desk.bus import codec, subjects
from desk.v1 import common_pb2, executions_pb2

SECTION = "ledger"
BATCH = 256  # LEDGER_BATCH_SIZE's default


def report(i: int, strategy_id: str = "bench-0") -> executions_pb2.ExecutionReport:
    return executions_pb2.ExecutionReport(
        execution_id=f"x{i}",
        order_id=f"o{i}",
        client_order_id=f"c{i}",
        strategy_id=strategy_id,
        member_id="bench",
        exec_type=executions_pb2.EXEC_TYPE_FILL,
        status=executions_pb2.ORDER_STATUS_FILLED,
        symbol="BENCH",
        side=common_pb2.SIDE_BUY if i % 2 == 0 else common_pb2.SIDE_SELL,
        type=common_pb2.ORDER_TYPE_MARKET,
        time_in_force=common_pb2.TIME_IN_FORCE_DAY,
        order_qty="1",
        fill_qty="1",
        fill_price="100.02",
        cum_qty="1",
        avg_price="100.02",
        leaves_qty="0",
        fee="0.01",
        venue="sim",
        event_ns=time.time_ns(),
    )


async def publish_reports(nc: Client, start: int, count: int) -> None:
    """Core publishes captured by EXECUTIONS (Nats-Msg-Id = execution id), flushed every 1000."""
    for i in range(start, start + count):
        r = report(i)
        body, headers = codec.encode(r)
        headers["Nats-Msg-Id"] = r.execution_id
        await nc.publish(subjects.execution(r.strategy_id), body, headers=headers)
        if i % 1000 == 0:
            await nc.flush()
    await nc.flush()


async def _pending(nc: Client) -> int:
    info = await nc.jetstream().consumer_info(subjects.STREAM_EXECUTIONS, subjects.LEDGER_DURABLE)
    return int(info.num_pending + info.num_ack_pending)


async def desk_ingest(chunk: int, budget_s: float, max_rows: int) -> dict[str, Any]:
    """Chunks of ``chunk`` fills into a running ledger until ``budget_s`` or ``max_rows``: rate and lag per chunk."""
    chunks: list[dict[str, Any]] = []
    async with Desk(services=("ledger",)) as desk:
        assert desk.nc is not None
        rows = 0
        began = time.perf_counter()
        while rows < max_rows and time.perf_counter() - began < budget_s:
            t0 = time.perf_counter()
            publisher = asyncio.create_task(publish_reports(desk.nc, rows, chunk))
            max_lag = 0
            published_at = None
            while True:
                lag = await _pending(desk.nc)
                max_lag = max(max_lag, lag)
                if publisher.done() and published_at is None:
                    await publisher
                    published_at = time.perf_counter()
                    continue
                if published_at is not None and lag == 0:
                    break
                await asyncio.sleep(0.05)  # a bench samples the consumer's lag; not a test synchronisation
            done = time.perf_counter()
            rows += chunk
            chunks.append(
                {
                    "rows_after": rows,
                    "fills_per_s": chunk / (done - t0),
                    "max_lag_msgs": max_lag,
                    "drain_after_publish_s": done - published_at,
                }
            )
        with sqlite3.connect(f"file:{desk.db_path}?mode=ro", uri=True) as db:
            stored = db.execute("SELECT COUNT(*) FROM fills").fetchone()[0]
    return {"chunks": chunks, "published": rows, "stored": stored, "elapsed_s": time.perf_counter() - began}


async def bare_sqlite(path: str, rows: int) -> float:
    """Raw aiosqlite inserts, WAL + synchronous=FULL, one commit per BATCH rows: rows/s."""
    async with aiosqlite.connect(path, isolation_level=None) as db:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute(
            "CREATE TABLE fills (execution_id TEXT PRIMARY KEY, order_id TEXT, strategy_id TEXT, symbol TEXT,"
            " side TEXT, qty TEXT, price TEXT, fee TEXT, event_ns INTEGER)"
        )
        t0 = time.perf_counter()
        for start in range(0, rows, BATCH):
            await db.execute("BEGIN IMMEDIATE")
            await db.executemany(
                "INSERT INTO fills VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (f"x{i}", f"o{i}", "bench-0", "BENCH", "BUY", "1", "100.02", "0.01", i)
                    for i in range(start, min(rows, start + BATCH))
                ],
            )
            await db.execute("COMMIT")
        return rows / (time.perf_counter() - t0)


async def bare_pull(desk: Desk, rows: int) -> float:
    """A bare JetStream pull consumer: fetch BATCH, ack each (explicit acks): msgs/s."""
    assert desk.nc is not None
    js = desk.nc.jetstream()
    await js.add_stream(StreamConfig(name="BENCHPULL", subjects=["benchpull.>"]))
    body, headers = codec.encode(report(0))
    for i in range(rows):
        await desk.nc.publish("benchpull.x", body, headers=headers)
        if i % 1000 == 0:
            await desk.nc.flush()
    await desk.nc.flush()
    sub = await js.pull_subscribe(
        "benchpull.>",
        durable="bare",
        stream="BENCHPULL",
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=BATCH * 4),
    )
    got = 0
    t0 = time.perf_counter()
    while got < rows:
        msgs = await sub.fetch(BATCH, timeout=5)
        for msg in msgs:
            await msg.ack()
        got += len(msgs)
    await desk.nc.flush()
    rate = got / (time.perf_counter() - t0)
    await sub.unsubscribe()
    return rate


async def run(chunk: int, budget_s: float, max_rows: int) -> tuple[list[Figure], dict[str, Any]]:
    desk_result = await desk_ingest(chunk, budget_s, max_rows)
    async with Desk(services=()) as bare_desk:
        sqlite_rate = await bare_sqlite(str(bare_desk.dir / "bare.db"), max(chunk, 20000))
        pull_rate = await bare_pull(bare_desk, chunk)
    bare_rate = min(sqlite_rate, pull_rate)
    chunks = desk_result["chunks"]
    first = chunks[0]
    fill_rate = desk_result["published"] / sum(chunk / c["fills_per_s"] for c in chunks)
    lost = desk_result["published"] - desk_result["stored"]
    figures = [
        Figure(
            SECTION,
            "ingest, executions -> committed SQLite rows (durable)",
            "fills/s",
            fill_rate,
            bare_rate,
            Target("min", 20000),
            note=f"bare = min(raw aiosqlite WAL+FULL {sqlite_rate:,.0f}/s, bare JetStream pull {pull_rate:,.0f}/s)",
        ),
        Figure(SECTION, "lost fills (published - stored)", "fills", float(lost), None, Target("max", 0)),
        Figure(SECTION, f"max lag during the first {chunk:,} fills", "msgs", float(first["max_lag_msgs"])),
        Figure(SECTION, "drain time after the publisher stopped (first chunk)", "s", first["drain_after_publish_s"]),
        Figure(
            SECTION,
            f"ingest rate at {chunks[-1]['rows_after']:,} rows (last chunk)",
            "fills/s",
            chunks[-1]["fills_per_s"],
            bare_rate,
            note=(
                "1M rows did not fit the time bound; reached "
                f"{desk_result['published']:,} rows in {desk_result['elapsed_s']:.0f} s"
            )
            if desk_result["published"] < 1_000_000
            else "1M rows reached",
        ),
    ]
    return figures, {"desk": desk_result, "bare_sqlite_rows_per_s": sqlite_rate, "bare_pull_msgs_per_s": pull_rate}
