"""Per-strategy NATS identities: the orchestrator hands each deployed strategy its own user.

On a strategy's first start the orchestrator makes a password, adds the strategy's user (bcrypt hash
and confined permissions, see desk.bus.auth) to the users file the NATS server includes, asks the
server to reload it (SIGHUP to the pid in its pid file), and proves the new user works by connecting
with it before the strategy starts. The plain password goes only into the strategy's environment.
Restarts reuse the same credentials; a new orchestrator makes new ones.

Members (people, from their own laptops: ``desk member add``) are users too, kept (bcrypt hashes
only) in a members file that outlives restarts (``<data dir>/nats/members.json`` in the embedded
desk); the users file is always the base users + the members + the strategies. A desk made by an
earlier release has no members file: it opens with no members.

A cluster (``desk up --cluster 3``): every node includes the same users file, the pid file lists one
pid per node (one a line) and every node is reloaded; a new user is proven on every node that answers
(a node that is down reads the users file when it starts again). That works only where the orchestrator
can signal every node and they share one file (one machine); across machines decentralized JWT users
(signed by an account key the orchestrator holds) would be the next step: docs/cluster.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from desk.bus import auth
from desk.bus.auth import is_bcrypt, read_members
from desk.bus.logging import get_logger
from desk.bus.servers import open_connection, server_list

log = get_logger("orchestrator")


class SiteUsers(Protocol):
    """A site's leaf node (services.orchestrator.runtimes.docker.DockerRuntime of that site)."""

    def write_users(self, text: str, timeout: float = ...) -> None:
        """Make ``text`` its users file and return once it is applied (RuntimeError when not)."""


class NatsIdentities:
    def __init__(
        self,
        *,
        nats_url: str,
        auth_file: Path,
        base_users_file: Path,
        pid_file: Path | None = None,
        reload: Callable[[], None] | None = None,
        members_file: Path | None = None,
        sites: dict[str, SiteUsers] | None = None,
    ) -> None:
        """``reload`` asks the server to re-read its users (default: SIGHUP to the pid in ``pid_file``;
        in compose, a SIGHUP through the Docker engine). ``sites``: each site's leaf node, whose users
        file holds that site's strategies (and only theirs: the desk's own servers do not know them)."""
        self.nats_url = nats_url
        self.auth_file = auth_file
        self.base_users_file = base_users_file
        self.pid_file = pid_file
        self._reload_fn = reload
        self.members_file = members_file if members_file is not None else auth_file.parent / "members.json"
        self._passwords: dict[str, str] = {}
        self._entries: dict[str, dict[str, Any]] = {}
        self.sites = sites or {}
        self._site_of: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def credentials(self, strategy_id: str, site: str = "") -> dict[str, str]:
        """The environment that gives ``strategy_id`` its own NATS identity (made on first use, and
        anew when it moves to another site): a user of the desk's servers, or of ``site``'s leaf node."""
        async with self._lock:
            if strategy_id not in self._passwords or self._site_of.get(strategy_id, "") != site:
                if site and site not in self.sites:
                    raise RuntimeError(f"site {site!r} is not one of this desk's sites")
                password = auth.new_password()
                hashed = await asyncio.to_thread(auth.hash_password, password)
                was = self._site_of.get(strategy_id) if strategy_id in self._entries else None
                self._entries[strategy_id] = auth.strategy_entry(strategy_id, hashed)
                self._site_of[strategy_id] = site
                if was is not None and was != site:  # it moved: its old user goes from where it was
                    await self._apply(was)
                await self._apply(site)
                if not site:
                    await self._prove(strategy_id, password)
                self._passwords[strategy_id] = password
                log.info(
                    "strategy.identity_issued",
                    strategy_id=strategy_id,
                    user=auth.strategy_user(strategy_id),
                    site=site or "-",
                )
        return {
            "NATS_USER": auth.strategy_user(strategy_id),
            "NATS_PASSWORD": self._passwords[strategy_id],
            "NATS_INBOX_PREFIX": auth.strategy_inbox_prefix(strategy_id),
        }

    # -- members -------------------------------------------------------------------------------

    def members(self) -> dict[str, str]:
        """Member -> bcrypt hash, from the members file (none when it does not exist yet)."""
        return read_members(self.members_file)

    async def sync(self) -> None:
        """At start: make sure the server knows the members (the users file may hold only the base),
        and every site's leaf node knows no strategy yet (an earlier orchestrator's users go: their
        passwords died with it). A site that cannot be reached is logged; its strategies' starts fail
        until it can."""
        async with self._lock:
            if self.members():
                await self._apply("")
            for site in self.sites:
                try:
                    await self._apply(site)
                except Exception as exc:  # noqa: BLE001 - a site down must not keep the desk from starting
                    log.error("site.users_unwritten", site=site, error=repr(exc))

    async def _apply(self, site: str) -> None:
        """Write the users file of ``site`` ("": the desk's own servers) and have it applied."""
        if not site:
            await asyncio.to_thread(self._write)
            self._reload()
            return
        users = [e for sid, e in sorted(self._entries.items()) if self._site_of.get(sid) == site]
        await asyncio.to_thread(self.sites[site].write_users, auth.site_users(users))

    async def set_member(self, member: str, password_hash: str) -> None:
        async with self._lock:
            members = self.members()
            members[member] = password_hash
            await asyncio.to_thread(self._save_members, members)
            self._reload()
        log.info("member.added", member=member, user=auth.member_user(member))

    async def remove_member(self, member: str) -> bool:
        async with self._lock:
            members = self.members()
            if members.pop(member, None) is None:
                return False
            await asyncio.to_thread(self._save_members, members)
            self._reload()  # the server closes the removed user's connections
        log.info("member.removed", member=member)
        return True

    def _save_members(self, members: dict[str, str]) -> None:
        auth.write_private(
            self.members_file, json.dumps([{"member": m, "password": h} for m, h in sorted(members.items())])
        )
        self._write()

    def _write(self) -> None:
        members = [auth.member_entry(m, h) for m, h in sorted(self.members().items())]
        own = [e for sid, e in sorted(self._entries.items()) if not self._site_of.get(sid)]
        users = auth.read_users(self.base_users_file) + members + own
        auth.write_private(self.auth_file, auth.render_users(users))

    def _reload(self) -> None:
        if self._reload_fn is not None:
            self._reload_fn()
            return
        if self.pid_file is None:
            raise RuntimeError("no way to reload NATS: set ORCH_NATS_PID_FILE or ORCH_NATS_RELOAD=docker")
        reload_pids(self.pid_file)

    async def _prove(self, strategy_id: str, password: str, timeout: float = 10.0) -> None:
        """Until every server of NATS_URL that answers accepts the new user (a reload is asynchronous);
        a cluster node that is down is skipped (it reads the users file when it starts), but at least
        one server must accept it."""
        servers = server_list(self.nats_url)
        results = await asyncio.gather(*(self._prove_on(s, strategy_id, password, timeout) for s in servers))
        if not any(results):
            raise RuntimeError(f"NATS did not accept the new user of {strategy_id}: no server of {self.nats_url}")

    @staticmethod
    async def _prove_on(server: str, strategy_id: str, password: str, timeout: float) -> bool:
        """True once ``server`` accepts the user; False when it was unreachable until the deadline (a
        node down: no word about authorization); RuntimeError when it still refuses the user then. A
        slow answer (a busy machine) is asked again, never taken for a node down at once."""

        async def quiet(exc: Exception) -> None:
            pass

        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            seen: list[Exception] = []
            try:
                # bounded: nats-py adds the nodes a server advertises to its pool anew on every INFO,
                # so a login refused by a cluster would be tried again and again
                nc = await asyncio.wait_for(
                    open_connection(
                        server,
                        forever=False,
                        user=auth.strategy_user(strategy_id),
                        password=password,
                        error_cb=quiet,
                        errors=seen,
                    ),
                    max(deadline - asyncio.get_running_loop().time(), 1.0),
                )
                await nc.close()
                return True
            except Exception as exc:  # noqa: BLE001 - not applied yet, or slow; bounded by the deadline
                refused = any(_is_authorization(e) for e in [*seen, exc])
                if asyncio.get_running_loop().time() > deadline:
                    if not refused:  # unreachable the whole time, never refusing the user: a node down
                        log.warning(
                            "strategy.identity_unproven", strategy_id=strategy_id, server=server, error=repr(exc)
                        )
                        return False
                    raise RuntimeError(
                        f"NATS at {server} did not accept the new user of {strategy_id}: {exc!r}"
                    ) from None
                # a refusal: the reload is not applied yet; no answer: a busy or restarting server
                await asyncio.sleep(0.1)


def _is_authorization(exc: BaseException) -> bool:
    import nats.errors

    return isinstance(exc, nats.errors.AuthorizationError) or "authorization" in str(exc).lower()


def _is_nats_server(pid: int) -> bool:
    """Whether ``pid`` is a nats-server now (Linux: /proc; elsewhere assumed): a node killed since the
    pid file was written may have left its pid to another process, which must not get a SIGHUP."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "nats-server"
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return False


def reload_pids(pid_file: Path) -> list[int]:
    """SIGHUP to every nats-server whose pid is in ``pid_file`` (one server's, or a cluster's: one pid
    a line): each re-reads its config and so the users file. A pid that is gone (a node down) is
    skipped with a warning; RuntimeError when no server could be signalled. Returns the pids reloaded."""
    pids = [int(token) for token in pid_file.read_text().split()]
    reloaded = []
    for pid in pids:
        if not _is_nats_server(pid):
            log.warning("nats.reload_skipped", pid=pid, reason="not a running nats-server (a node down?)")
            continue
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            log.warning("nats.reload_skipped", pid=pid, reason="no such process (a node down?)")
            continue
        reloaded.append(pid)
    if not reloaded:
        raise RuntimeError(f"no nats-server to reload: none of the pids in {pid_file} ({pids}) runs")
    return reloaded


__all__ = ["NatsIdentities", "is_bcrypt", "read_members", "reload_pids"]
