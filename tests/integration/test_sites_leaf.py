"""A site's NATS leaf node (issue 14, strategies on a second machine), with real nats-servers: the desk's
(the hub, with its leaf port and the desk-leaf user) and a site's, started from deploy/nats/nats-leaf.conf
as compose.site.yaml starts it. The orchestrator's identities write the site's users; a strategy of the
site is a user there only, trades through the leaf node, and stays confined to its own subjects.

The site's leaf node is a local process here (the docker runtime reaches a container's through its
site's engine: tests/docker/test_compose_site.py); what is tested is the same users file, reload and wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client

from desk.bus import auth, subjects
from desk.bus.servers import open_connection
from desk.bus.testing import NatsServer, free_ports
from services.orchestrator.identities import NatsIdentities
from services.orchestrator.runtimes.docker import reload_counts
from tests.support import login_refused

ROOT = Path(__file__).resolve().parents[2]
BOUND = 20.0


class ProcessLeaf:
    """A site's leaf node run as a process: its users file written, SIGHUP, its reload line awaited."""

    def __init__(self, server: NatsServer, auth_file: Path, log_file: Path) -> None:
        self.server, self.auth_file, self.log_file = server, auth_file, log_file
        self.writes = 0

    def _reloads(self) -> int:
        return reload_counts(self.log_file.read_bytes())[0]

    def write_users(self, text: str, timeout: float = 15.0) -> None:
        before = self._reloads()
        auth.write_private(self.auth_file, text)
        assert self.server.process is not None
        os.kill(self.server.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self._reloads() <= before:
            if time.monotonic() > deadline:
                raise RuntimeError("the leaf node did not reload")
            time.sleep(0.05)
        self.writes += 1


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not check():
        assert time.monotonic() < deadline, f"not within {BOUND} s: {what}"
        time.sleep(0.05)


@dataclass
class Desk:
    hub: NatsServer
    leaf: NatsServer
    site: ProcessLeaf
    identities: NatsIdentities
    admin: dict[str, str]
    leaf_password: str


@pytest.fixture
def desk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    hub_dir, leaf_dir = tmp_path / "hub", tmp_path / "site"
    admin_password, leaf_password = auth.new_password(), auth.new_password()
    base = [
        auth.user_entry(auth.ADMIN_USER, auth.hash_password(admin_password)),
        auth.leaf_entry(auth.hash_password(leaf_password)),
    ]
    auth.write_private(hub_dir / "base-users.json", json.dumps(base))
    auth.write_private(hub_dir / "auth.conf", auth.render_users(base))
    [leaf_port] = free_ports(1)
    (hub_dir / "nats.conf").write_text(f'leafnodes {{\n  listen: 127.0.0.1:{leaf_port}\n}}\ninclude "auth.conf"\n')
    hub = NatsServer(store_dir=hub_dir / "store", config_file=hub_dir / "nats.conf").start()
    (hub_dir / "nats.pid").write_text(str(hub.process.pid if hub.process else 0))

    (leaf_dir / "auth").mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "nats" / "nats-leaf.conf", leaf_dir / "nats.conf")
    auth.write_private(leaf_dir / "auth" / "auth.conf", auth.placeholder_users())  # what site-init makes
    monkeypatch.setenv("LEAF_HUB_URL", f"nats-leaf://{auth.LEAF_USER}:{leaf_password}@127.0.0.1:{leaf_port}")
    monkeypatch.setenv("SITE_NAME", "lab")
    log_file = leaf_dir / "nats.log"
    leaf = NatsServer(config_file=leaf_dir / "nats.conf", jetstream=False, log_file=log_file).start()
    try:
        wait_until(lambda: "Leafnode connection created" in log_file.read_text(), "the leaf node joins the desk")
        site = ProcessLeaf(leaf, leaf_dir / "auth" / "auth.conf", log_file)
        identities = NatsIdentities(
            nats_url=hub.url,
            auth_file=hub_dir / "auth.conf",
            base_users_file=hub_dir / "base-users.json",
            pid_file=hub_dir / "nats.pid",
            sites={"lab": site},
        )
        yield Desk(hub, leaf, site, identities, {"user": auth.ADMIN_USER, "password": admin_password}, leaf_password)
    finally:
        leaf.cleanup()
        hub.cleanup()


@pytest_asyncio.fixture
async def admin(desk: Desk) -> AsyncIterator[Client]:
    nc = await nats.connect(desk.hub.url, **desk.admin)
    yield nc
    await nc.close()


async def login(url: str, creds: dict[str, str], errors: list[Exception] | None = None) -> Client:
    return await open_connection(
        url,
        forever=False,
        user=creds["NATS_USER"],
        password=creds["NATS_PASSWORD"],
        inbox_prefix=creds["NATS_INBOX_PREFIX"],
        errors=errors,
    )


async def refused(url: str, creds: dict[str, str]) -> bool:
    return await login_refused(url, creds["NATS_USER"], creds["NATS_PASSWORD"])


async def until_answered(nc: Client, subject: str) -> bytes:
    """A request through the leaf node, asked again until the hub's interest has reached the leaf node."""
    deadline = asyncio.get_running_loop().time() + BOUND
    while True:
        try:
            return (await nc.request(subject, b"order", timeout=1.0)).data
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            assert asyncio.get_running_loop().time() < deadline, f"{subject}: no answer through the leaf node"


async def test_a_site_strategy_is_a_user_of_its_leaf_node_only_and_trades_through_it(desk: Desk, admin: Client) -> None:
    creds = await desk.identities.credentials("alpha", "lab")
    assert creds["NATS_USER"] == auth.strategy_user("alpha")
    assert desk.site.writes == 1
    users = desk.site.auth_file.read_text()
    assert auth.strategy_user("alpha") in users and creds["NATS_PASSWORD"] not in users  # a bcrypt hash only
    assert auth.strategy_user("alpha") not in (desk.hub.store_dir.parent / "auth.conf").read_text()
    assert await refused(desk.hub.url, creds), "the desk's own server must not know a site's strategy"

    async def router(msg: Any) -> None:
        await msg.respond(b"accepted:" + msg.data)

    await admin.subscribe(subjects.order_submit("alpha"), cb=router)
    await admin.flush()
    errors: list[Exception] = []
    strategy = await login(desk.leaf.url, creds, errors)
    try:
        assert await until_answered(strategy, subjects.order_submit("alpha")) == b"accepted:order"

        fills: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_fill(msg: Any) -> None:
            await fills.put(msg.data)

        await strategy.subscribe(subjects.execution("alpha"), cb=on_fill)
        await strategy.flush()
        deadline = asyncio.get_running_loop().time() + BOUND
        while fills.empty():  # the subscription's interest crosses the leaf connection asynchronously
            assert asyncio.get_running_loop().time() < deadline, "no execution reached the site's strategy"
            await admin.publish(subjects.execution("alpha"), b"fill")
            await admin.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fills.get(), 0.2)
                break

        # confined at its leaf node: another strategy's orders are refused there
        await strategy.publish(subjects.order_submit("bravo"), b"forged")
        await strategy.flush()
        wait_deadline = asyncio.get_running_loop().time() + BOUND
        while not any("permissions violation" in str(e).lower() for e in errors):
            assert asyncio.get_running_loop().time() < wait_deadline, f"no violation reported: {errors}"
            await asyncio.sleep(0.05)
    finally:
        await strategy.close()


async def test_the_leaf_user_carries_strategies_subjects_only(desk: Desk) -> None:
    """What a compromised site could do on the desk: any strategy's own subjects, nothing of services or
    members (no executions, no KV, no member's replies)."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    nc = await nats.connect(
        desk.hub.url, user=auth.LEAF_USER, password=desk.leaf_password, error_cb=on_error, allow_reconnect=False
    )
    try:
        await nc.publish(subjects.execution("alpha"), b"forged fill")
        await nc.publish("$KV.DESK_RISK.halt._global", b"halt")
        await nc.subscribe(f"{auth.member_inbox_prefix('alice')}.>")
        await nc.flush()
        deadline = asyncio.get_running_loop().time() + BOUND
        while not (
            sum("publish" in e and "permissions violation" in e for e in errors) >= 2
            and any("subscription" in e and "permissions violation" in e for e in errors)
        ):
            assert asyncio.get_running_loop().time() < deadline, f"violations not all reported: {errors}"
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def test_a_strategy_moved_off_a_site_loses_its_site_user_and_sync_clears_the_site(desk: Desk) -> None:
    on_site = await desk.identities.credentials("alpha", "lab")
    assert not await refused(desk.leaf.url, on_site)
    here = await desk.identities.credentials("alpha", "")  # its spec's site was removed: it runs on the desk
    assert here["NATS_PASSWORD"] != on_site["NATS_PASSWORD"]
    assert not await refused(desk.hub.url, here)
    assert await refused(desk.leaf.url, on_site), "the site must forget a strategy that left it"

    again = await desk.identities.credentials("beta", "lab")
    assert not await refused(desk.leaf.url, again)
    restarted = NatsIdentities(
        nats_url=desk.hub.url,
        auth_file=desk.identities.auth_file,
        base_users_file=desk.identities.base_users_file,
        pid_file=desk.identities.pid_file,
        sites={"lab": desk.site},
    )
    await restarted.sync()  # a new orchestrator: the earlier one's site users die with their passwords
    assert await refused(desk.leaf.url, again)


async def test_an_unknown_site_is_refused_before_anything_is_written(desk: Desk) -> None:
    with pytest.raises(RuntimeError, match="not one of this desk's sites"):
        await desk.identities.credentials("alpha", "elsewhere")
    assert desk.site.writes == 0
