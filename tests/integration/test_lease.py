"""Active/standby behind a KV lease (desk.bus.lease, desk.bus.lifecycle), against a real nats-server:
the first instance acquires at once and a second waits registering nothing; renewals keep the lease past
its TTL; a holder killed with SIGKILL is taken over once its key expires; a holder whose key another
wrote steps down at once (its service exits 1); a server restart shorter than the step-down window is
ridden out (the renewal and the standby's create are retried), a longer one makes the holder step down;
under the desk's authorization each leased service's own NATS user may hold its lease, the ledger's not."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.kv import KeyValue

from desk.bus import auth, streams, subjects
from desk.bus import lease as leases
from desk.bus.lifecycle import ServiceRuntime, serve
from desk.bus.micro import add_service
from desk.bus.process import wait_until_serving
from desk.bus.settings import BusSettings
from desk.bus.testing import NatsServer, secured_server
from tests.cluster.instances import ServiceProcess, lease_holder, wait_holder
from tests.support import poll, watch_logs

TTL = 2.0  # seconds: short, so expiry is seen quickly (LEASE_TTL's least is 1)
BOUND = 30.0  # seconds any one wait may take


@pytest.fixture
async def bucket(nc: Client) -> AsyncIterator[tuple[KeyValue, float]]:
    """DESK_LEASES re-created with a TTL of 2 s (the declared one is 5 s)."""
    js = nc.jetstream()
    with contextlib.suppress(Exception):
        await js.delete_key_value(subjects.KV_LEASES)
    kv, ttl = await leases.open_bucket(js, TTL)
    assert ttl == pytest.approx(TTL)
    yield kv, ttl


def holder(instance: str) -> leases.Holder:
    return leases.Holder(service="svc", instance=instance, host="test", pid=1, since_ns=time.time_ns())


async def test_the_first_acquires_at_once_a_second_waits_and_takes_over_on_release(
    bucket: tuple[KeyValue, float],
) -> None:
    kv, ttl = bucket
    stop = asyncio.Event()
    a, b = leases.Lease(kv, "svc", ttl, holder("a")), leases.Lease(kv, "svc", ttl, holder("b"))
    began = time.monotonic()
    assert await asyncio.wait_for(a.acquire(stop), BOUND)
    print(f"\nacquire, lease free: {(time.monotonic() - began) * 1000:.1f} ms")
    keeping = asyncio.create_task(a.keep(stop))
    waiting = asyncio.create_task(b.acquire(stop))
    try:
        # a renews past two TTLs while b waits: b never gets it
        await poll(lambda: a.renewals >= 7, "seven renewals of a", timeout=BOUND)
        assert not waiting.done() and not keeping.done()
        current, revision = await leases.holder_of(kv, "svc")
        assert current == a.holder and revision == a.revision > 1
        await a.release()  # a clean stop hands over without waiting for the TTL
        released = time.monotonic()
        assert await asyncio.wait_for(waiting, BOUND)
        print(f"handover after a release: {(time.monotonic() - released) * 1000:.0f} ms (poll {b.poll:.2f} s)")
        assert (await leases.holder_of(kv, "svc"))[0] == b.holder
        with pytest.raises(leases.LeaseLost, match="held by svc instance b"):
            await a._update_once()  # a's old revision: someone else's key now
    finally:
        stop.set()
        for task in (keeping, waiting):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, BOUND)


async def test_a_holder_whose_key_another_wrote_steps_down_and_its_service_exits_1(
    nats_server: NatsServer, bucket: tuple[KeyValue, float], nc: Client
) -> None:
    kv, ttl = bucket
    settings = BusSettings(nats_url=nats_server.url, service_lease=True, lease_ttl=ttl, service_instance="one")
    started: list[str] = []

    async def start(runtime: ServiceRuntime) -> None:
        started.append(runtime.name)
        await add_service(runtime, "leased", "1.0.0", "a service behind a lease")

    first_ready, second_ready = asyncio.Event(), asyncio.Event()
    first_stop, second_stop = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(
        serve("leased", settings, start, install_signals=False, stop=first_stop, ready=first_ready, lease="leased")
    )
    await asyncio.wait_for(first_ready.wait(), BOUND)
    second_settings = settings.model_copy(update={"service_instance": "two"})
    with watch_logs() as logs:
        second = asyncio.create_task(
            serve(
                "leased",
                second_settings,
                start,
                install_signals=False,
                stop=second_stop,
                ready=second_ready,
                lease="leased",
            )
        )
        try:
            standby = await logs.wait_for("lease.standby", timeout=BOUND)
            assert "instance one" in standby["held_by"]
            assert started == ["leased"]  # the standby's start has not run: no endpoint, nothing consumed
            infos = await _micro_infos(nc, "leased")
            assert len(infos) == 1

            # someone else's write (as after our key expired and another instance took it)
            intruder = holder("intruder").encode()
            await overwrite(kv, "leased", intruder, "one")
            assert await asyncio.wait_for(first, BOUND) == 1  # stepped down at its next renewal
            lost = await logs.wait_for("service.task_failed", timeout=BOUND)
            assert "LeaseLost" in lost["error"] and "intruder" in lost["error"]
            # the intruder's key is not deleted by the one that lost it
            assert (await leases.holder_of(kv, "leased"))[0] == leases.Holder.decode(intruder)
            await kv.delete("leased")  # the intruder goes: the standby takes over
            await asyncio.wait_for(second_ready.wait(), BOUND)
            assert started == ["leased", "leased"]
            assert (await leases.holder_of(kv, "leased"))[0].instance == "two"  # type: ignore[union-attr]
        finally:
            second_stop.set()
            first_stop.set()
            assert await asyncio.wait_for(second, BOUND) == 0
    # a clean stop released the lease
    assert (await leases.holder_of(kv, "leased"))[0] is None


async def overwrite(kv: KeyValue, key: str, value: bytes, instance: str) -> None:
    """Write ``value`` over ``instance``'s key (asked again when it renewed between our read and write)."""

    async def once() -> bool:
        current, revision = await leases.holder_of(kv, key)
        assert current is not None and current.instance == instance, current
        try:
            await kv.update(key, value, last=revision)
            return True
        except nats.js.errors.KeyWrongLastSequenceError:
            return False

    await poll(once, f"{key} overwritten", timeout=BOUND, every=0.01)


async def _micro_infos(nc: Client, name: str) -> list[bytes]:
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(f"$SRV.INFO.{name}", b"", reply=inbox)
    answers: list[bytes] = []
    with contextlib.suppress(TimeoutError):
        while True:
            answers.append((await sub.next_msg(timeout=1.0)).data)  # every responder answers within 1 s
    await sub.unsubscribe()
    return answers


async def test_a_killed_holder_is_taken_over_once_its_key_expires(
    nats_server: NatsServer, bucket: tuple[KeyValue, float], nc: Client, tmp_path: Path
) -> None:
    kv, ttl = bucket
    env = {"MD_FEED": "synthetic", "MD_SYMBOLS": "AAPL", "MD_INTERVAL": "0.1", "LEASE_TTL": str(ttl)}
    a = ServiceProcess("marketdata", "a", nats_server.url, tmp_path, env)
    b = ServiceProcess("marketdata", "b", nats_server.url, tmp_path, env)
    js = nc.jetstream()
    bars = await nc.subscribe("md.bar.AAPL")
    try:
        await a.start()
        await wait_holder(js, "marketdata", "a", BOUND)
        assert await wait_until_serving(nc, "marketdata", BOUND, a.exited), a.tail()
        await b.start()
        await poll(lambda: "lease.standby" in b.log.read_text(errors="replace"), "b standing by", timeout=BOUND)
        await bars.next_msg(timeout=BOUND)
        killed = time.monotonic()
        await a.kill()
        took_over = await wait_holder(js, "marketdata", "b", BOUND)
        # no bar from a dead feed: drain what was in flight, then the next bar is b's
        while bars.pending_msgs:
            await bars.next_msg(timeout=1)
        await bars.next_msg(timeout=BOUND)
        publishing = time.monotonic()
        print(
            f"\nkill -9 of the active: lease taken over after {took_over - killed:.2f} s, "
            f"bars again after {publishing - killed:.2f} s (TTL {ttl:g} s, poll {min(ttl / 5, 0.5):.2f} s)"
        )
        assert not b.exited(), b.tail()
        # the dead holder's key expired on its own: b created it afresh (revision moved on, a's term gone)
        current = await lease_holder(js, "marketdata")
        assert current is not None and current.instance == "b" and current.pid == b.pid
    finally:
        await bars.unsubscribe()
        assert await b.stop() == 0, b.tail()
        await a.stop()
    assert (await leases.holder_of(kv, "marketdata"))[0] is None  # b released it when stopped


async def test_a_server_restart_inside_the_step_down_window_is_ridden_out(nats_server: NatsServer, nc: Client) -> None:
    js = nc.jetstream()
    with contextlib.suppress(Exception):
        await js.delete_key_value(subjects.KV_LEASES)
    kv, ttl = await leases.open_bucket(js, 30.0)  # step-down ~30 s after the last renewal
    stop = asyncio.Event()
    a = leases.Lease(kv, "svc", ttl, holder("a"))
    assert await a.acquire(stop)
    a.renew_interval = 0.5  # renew often, keep the 30 s TTL: the restart falls inside the window
    keeping = asyncio.create_task(a.keep(stop))
    try:
        with watch_logs() as logs:
            await asyncio.to_thread(nats_server.stop)
            retried = await logs.wait_for("retry", timeout=BOUND)  # a renewal failed with the server down
            assert "renew lease svc" in retried["what"]
            await asyncio.to_thread(nats_server.start)  # same port, same store
            renewed = a.renewals
            await poll(lambda: a.renewals >= renewed + 2, "renewals after the restart", timeout=BOUND)
        assert not keeping.done()
        assert (await leases.holder_of(kv, "svc"))[0] == a.holder
    finally:
        stop.set()
        await asyncio.wait_for(keeping, BOUND)


async def test_a_server_down_longer_than_the_window_makes_the_holder_step_down(
    nats_server: NatsServer, bucket: tuple[KeyValue, float], nc: Client
) -> None:
    kv, ttl = bucket
    stop = asyncio.Event()
    a, b = leases.Lease(kv, "svc", ttl, holder("a")), leases.Lease(kv, "svc", ttl, holder("b"))
    assert await a.acquire(stop)
    keeping = asyncio.create_task(a.keep(stop))
    try:
        await asyncio.to_thread(nats_server.stop)
        down = time.monotonic()
        with pytest.raises(leases.LeaseLost, match=r"not renewed|renewal failed"):
            await asyncio.wait_for(keeping, BOUND)
        stepped_down = time.monotonic()
        # it stepped down no later than its step-down time (2*TTL/3 after its last confirmed renewal)
        assert stepped_down <= a.step_down_at + a.renew_interval
        print(f"\nserver down: the holder stepped down after {stepped_down - down:.2f} s (TTL {ttl:g} s)")
        await asyncio.to_thread(nats_server.start)
        # the standby's create is refused while a's key lives, then succeeds once it has expired
        assert await asyncio.wait_for(b.acquire(stop), BOUND)
        assert (await leases.holder_of(kv, "svc"))[0] == b.holder
    finally:
        stop.set()


async def test_under_the_desks_authorization_each_leased_service_may_hold_its_lease(tmp_path: Path) -> None:
    leased = ("marketdata", "broker_gateway", "orchestrator")
    users = [auth.service_entry(name, auth.hash_password(f"{name}-pw")) for name in (*leased, "ledger")]
    users.append(auth.user_entry(auth.ADMIN_USER, auth.hash_password("admin-pw")))
    server = secured_server(tmp_path / "secured", users)
    clients: list[Client] = []
    try:
        admin = await nats.connect(server.url, user=auth.ADMIN_USER, password="admin-pw")
        clients.append(admin)
        await streams.provision(admin.jetstream(), log_actions=False)
        stop = asyncio.Event()
        for name in leased:
            nc = await nats.connect(server.url, user=auth.service_user(name), password=f"{name}-pw")
            clients.append(nc)
            kv, ttl = await leases.open_bucket(nc.jetstream(), 5.0)
            lease = leases.Lease(kv, name, ttl, holder(name))
            assert await asyncio.wait_for(lease.acquire(stop), BOUND), name
            await asyncio.wait_for(lease.renew(), BOUND)
            assert lease.renewals == 1
            assert await lease.release(), name
        # a service that has no lease (the ledger: replicas) may not write the bucket
        errors: asyncio.Queue[str] = asyncio.Queue()

        async def record(exc: Exception) -> None:
            errors.put_nowait(str(exc))

        ledger = await nats.connect(server.url, user=auth.service_user("ledger"), password="ledger-pw", error_cb=record)
        clients.append(ledger)
        await ledger.publish(f"$KV.{subjects.KV_LEASES}.marketdata", b"x")
        refused = await asyncio.wait_for(errors.get(), BOUND)
        assert "permissions violation" in refused.lower() and subjects.KV_LEASES.lower() in refused.lower()
    finally:
        for nc in clients:
            await nc.close()
        server.cleanup()


def test_a_holders_value_is_read_untrusted() -> None:
    good = holder("a")
    assert leases.Holder.decode(good.encode()) == good
    for bad in (None, b"", b"not json", b"[]", b'{"service": "x"}', b'{"pid": "NaN"}', b"{" + b" " * 2000 + b"}"):
        assert leases.Holder.decode(bad) is None, bad
    with pytest.raises(ValueError, match="not a valid KV key"):
        leases.Lease(None, "a.*", 5.0, good)  # type: ignore[arg-type]
