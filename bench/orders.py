"""Order round trip (SDK-style request -> router -> gateway (sim) -> ack / fill), throughput, replicas, memory."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import BENCH_SYMBOL, ROOT, Desk, Worker, _env, rss_mib
from bench.stats import Figure, Target, summarize
from desk.bus import codec, subjects
from desk.bus import kv as desk_kv
from desk.bus.request import request
from desk.v1 import common_pb2, orders_pb2, strategy_pb2

SECTION = "orders"
ORDER_BYTES = 80  # about one encoded OrderRequest; the bare hops carry as much


@dataclass(frozen=True)
class Plan:
    sequential: int
    warmup: int
    throughput_orders: int  # per load process
    load_processes: int
    concurrency: int  # in flight per load process
    replicas: tuple[int, ...]


async def _probe(desk: Desk, strategy_id: str, timeout: float = 15.0) -> None:
    """Until the router has seen the spec and the price (KV watches), an order is refused; wait it out."""
    assert desk.nc is not None
    deadline = time.monotonic() + timeout
    i = 0
    while True:
        i += 1
        req = orders_pb2.OrderRequest(
            strategy_id=strategy_id,
            client_order_id=f"probe{i}",
            symbol=BENCH_SYMBOL,
            side=common_pb2.SIDE_BUY,
            type=common_pb2.ORDER_TYPE_MARKET,
            time_in_force=common_pb2.TIME_IN_FORCE_DAY,
            qty="1",
        )
        with contextlib.suppress(Exception):
            ack = await request(desk.nc, subjects.order_submit(strategy_id), req, orders_pb2.OrderAck, timeout=2)
            if ack.accepted:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the router never accepted an order from {strategy_id}")
        await asyncio.sleep(0.1)  # the KV watch is on its way; bounded by ``timeout``


async def _run_load(
    desk: Desk, plan: Plan, tag: str, processes: int, n: int, concurrency: int, sample_rss: bool
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    workers = [
        Worker(
            "orders",
            {
                "url": desk.url,
                "strategy_id": f"bench-{p}",
                "symbol": BENCH_SYMBOL,
                "n": n,
                "concurrency": concurrency,
                "warmup": plan.warmup,
                "prefix": f"{tag}p{p}",
                "fill_timeout": 60.0,
            },
        )
        for p in range(processes)
    ]
    for w in workers:
        await w.start()
    peak: dict[str, float] = {}
    results_task = asyncio.gather(*(w.result() for w in workers))
    while sample_rss and not results_task.done():
        for name in desk.procs:
            for i, pid in enumerate(desk.pids(name)):
                rss = rss_mib(pid)
                key = name if i == 0 else f"{name}#{i}"
                if rss is not None:
                    peak[key] = max(peak.get(key, 0.0), rss)
        await asyncio.wait({results_task}, timeout=0.25)
    return list(await results_task), peak


async def bare_limits(plan: Plan) -> dict[str, Any]:
    """Two request/reply hops between separate processes: client -> relay -> echo, and back."""
    async with Desk(services=()) as desk:
        echo = await Worker("echo", {"url": desk.url, "subject": "bench.hop2"}).start(wait_ready=True)
        relay = await Worker("relay", {"url": desk.url, "subject": "bench.hop1", "next_subject": "bench.hop2"}).start(
            wait_ready=True
        )
        seq = await Worker(
            "requester",
            {
                "url": desk.url,
                "subject": "bench.hop1",
                "size": ORDER_BYTES,
                "n": plan.sequential,
                "concurrency": 1,
                "warmup": plan.warmup,
            },
        ).start()
        seq_result = await seq.result()
        loads = [
            Worker(
                "requester",
                {
                    "url": desk.url,
                    "subject": "bench.hop1",
                    "size": ORDER_BYTES,
                    "n": plan.throughput_orders,
                    "concurrency": plan.concurrency,
                    "warmup": plan.warmup,
                },
            )
            for _ in range(plan.load_processes)
        ]
        for w in loads:
            await w.start()
        load_results = await asyncio.gather(*(w.result() for w in loads))
        await relay.stop()
        await echo.stop()
    return {"seq": seq_result, "load": load_results}


def _throughput(results: list[dict[str, Any]], key: str = "elapsed_s", count: str = "count") -> float:
    total = sum(r[count] for r in results)
    elapsed = max((r[key] or 0.0) for r in results)
    return total / elapsed if elapsed else 0.0


async def strategy_footprint(desk: Desk) -> float | None:
    """RSS of a real ``python -m strategy_sdk run`` process once it heartbeats."""
    assert desk.nc is not None
    with tempfile.TemporaryDirectory(prefix="bench-strategy-") as tmp:
        folder = Path(tmp) / "bench-idle"
        folder.mkdir()
        (folder / "config.json").write_text(
            '{"user_id": "bench", "name": "idle", "description": "bench", "version": "1", "env": {},'
            ' "symbols": ["BENCH"]}'
        )
        (folder / "strategy.py").write_text(
            "from strategy_sdk import Bar, Strategy\n\n\nclass Idle(Strategy):\n"
            "    def on_bar(self, bar: Bar) -> None:\n        pass\n"
        )
        beat = asyncio.get_running_loop().create_future()

        async def on_hb(msg: Any) -> None:
            if not beat.done():
                beat.set_result(True)

        sub = await desk.nc.subscribe(subjects.heartbeat("bench-idle"), cb=on_hb)
        spec = strategy_pb2.StrategySpec(strategy_id="bench-idle", member_id="bench", initial_cash="100000")
        await desk_kv.put(desk.nc.jetstream(), subjects.KV_STRATEGIES, "bench-idle", spec)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "strategy_sdk",
            "run",
            str(folder),
            cwd=ROOT,
            env=_env({"NATS_URL": desk.url, "DESK_STRATEGY_ID": "bench-idle", "DESK_HEARTBEAT_INTERVAL": "0.5"}),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await asyncio.wait_for(beat, 30)
            return rss_mib(proc.pid)
        except TimeoutError:
            return None
        finally:
            await sub.unsubscribe()
            proc.terminate()
            await proc.wait()
        _ = codec  # keeps the import for the spec encoding convention


async def run(plan: Plan, suffix: str = "", with_bare: bool = True) -> tuple[list[Figure], dict[str, Any]]:
    """The orders figures; ``suffix`` names a comparison pass (no memory figures then)."""
    figures: list[Figure] = []
    raw: dict[str, Any] = {}
    bare = await bare_limits(plan) if with_bare else None
    if bare is not None:
        raw["bare"] = {"seq": summarize(bare["seq"]["latencies_ms"]).__dict__, "rate": _throughput(bare["load"])}
    async with Desk(services=("ledger", "broker_gateway", "order_router")) as desk:
        for p in range(max(plan.load_processes, 1)):
            await desk.register_strategy(f"bench-{p}")
        await desk.set_price()
        for p in range(max(plan.load_processes, 1)):
            await _probe(desk, f"bench-{p}")
        idle = {name: rss_mib(desk.pids(name)[0]) for name in desk.procs}
        cpu_per_order = await _sequential(desk, plan, suffix, bare, figures, raw)
        rss_load = await _throughput_runs(desk, plan, suffix, bare, figures, raw)
        if not suffix:
            await _resource_figures(desk, cpu_per_order, idle, rss_load, figures)
    return figures, raw


async def _sequential(
    desk: Desk, plan: Plan, suffix: str, bare: dict[str, Any] | None, figures: list[Figure], raw: dict[str, Any]
) -> dict[str, float]:
    """One order at a time: ack and fill latency percentiles, and each process's CPU per order."""
    cpu_before = desk.cpu()
    seq_results, _ = await _run_load(desk, plan, "s", 1, plan.sequential, 1, sample_rss=False)
    cpu_after = desk.cpu()
    seq = seq_results[0]
    orders_sent = plan.sequential + plan.warmup
    cpu_per_order = {
        name: (cpu_after[name] - cpu_before[name]) / orders_sent * 1e6
        for name in sorted(cpu_after)
        if name in cpu_before
    }
    raw["cpu_us_per_order"] = cpu_per_order
    ack = summarize(seq["latencies_ms"])
    fill = summarize(seq["fill_ms"]) if seq["fill_ms"] else None
    raw["seq"] = {"ack": ack.__dict__, "fill": fill.__dict__ if fill else None, "rejected": seq["rejected"]}
    bare_seq = summarize(bare["seq"]["latencies_ms"]) if bare else None
    targets = {"p50": Target("ratio_max", 2.0), "p90": None, "p99": Target("max", 5.0)}
    for pct, target in targets.items():
        figures.append(
            Figure(
                SECTION,
                f"ack latency {pct}, sequential{suffix}",
                "ms",
                getattr(ack, pct),
                getattr(bare_seq, pct) if bare_seq else None,
                target,
                note="strategy request -> router (validation, risk, route) -> OrderAck; bare: 2 req/reply hops",
            )
        )
    for pct in targets:
        figures.append(
            Figure(
                SECTION,
                f"fill latency {pct}, sequential{suffix}",
                "ms",
                getattr(fill, pct) if fill else None,
                getattr(bare_seq, pct) if bare_seq else None,
                note=f"submit -> FILL report on desk.exec.<id> via the sim gateway ({seq['fills']}/{seq['count']} filled)",
            )
        )
    return cpu_per_order


async def _throughput_runs(
    desk: Desk, plan: Plan, suffix: str, bare: dict[str, Any] | None, figures: list[Figure], raw: dict[str, Any]
) -> dict[str, float]:
    """Orders in flight from several processes, per router replica count; the peak RSS of the 1-router run."""
    bare_rate = _throughput(bare["load"]) if bare else None
    rss_load: dict[str, float] = {}
    for replicas in plan.replicas:
        while len(desk.procs["order_router"]) < replicas:
            await desk.spawn("order_router")
        results, peak = await _run_load(
            desk,
            plan,
            f"t{replicas}r",
            plan.load_processes,
            plan.throughput_orders,
            plan.concurrency,
            sample_rss=replicas == 1,
        )
        if replicas == 1:
            rss_load = peak
        rate = _throughput(results)
        fill_rate = _throughput(results, key="fills_elapsed_s", count="fills")
        raw.setdefault("throughput", {})[replicas] = {
            "acks_per_s": rate,
            "fills_per_s": fill_rate,
            "failures": sum(r["failures"] for r in results),
            "rejected": [r["rejected"] for r in results],
        }
        in_flight = plan.load_processes * plan.concurrency
        figures.append(
            Figure(
                SECTION,
                f"throughput, {replicas} router(s), 1 sim gateway{suffix}",
                "orders/s",
                rate,
                bare_rate,
                Target("min", 5000) if replicas == 1 else None,
                note=f"{in_flight} in flight from {plan.load_processes} processes; fills/s {fill_rate:,.0f}",
            )
        )
        figures.append(
            Figure(
                SECTION,
                f"fill throughput, {replicas} router(s){suffix}",
                "fills/s",
                fill_rate,
                bare_rate,
                note="FILL reports reaching the strategies",
            )
        )
    return rss_load


async def _resource_figures(
    desk: Desk,
    cpu_per_order: dict[str, float],
    idle: dict[str, float | None],
    rss_load: dict[str, float],
    figures: list[Figure],
) -> None:
    """CPU per order and memory (idle, under load, one strategy process)."""
    for name, micros in cpu_per_order.items():
        figures.append(
            Figure(
                "cpu",
                f"{name} CPU per order, sequential",
                "us",
                micros,
                note="CPU time (user + system) each process spent per order of the sequential run, "
                "its fill and booking included",
            )
        )
    for name, mib in idle.items():
        figures.append(Figure("memory", f"{name} RSS idle", "MiB", mib))
    for name, mib in sorted(rss_load.items()):
        figures.append(Figure("memory", f"{name} RSS peak under order load", "MiB", mib))
    figures.append(Figure("memory", "strategy process (SDK, idle strategy) RSS", "MiB", await strategy_footprint(desk)))
