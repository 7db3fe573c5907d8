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
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from desk.bus import auth
from desk.bus.auth import is_bcrypt, read_members
from desk.bus.logging import get_logger
from desk.bus.servers import open_connection

log = get_logger("orchestrator")


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
    ) -> None:
        """``reload`` asks the server to re-read its users (default: SIGHUP to the pid in ``pid_file``;
        in compose, a SIGHUP through the Docker engine)."""
        self.nats_url = nats_url
        self.auth_file = auth_file
        self.base_users_file = base_users_file
        self.pid_file = pid_file
        self._reload_fn = reload
        self.members_file = members_file if members_file is not None else auth_file.parent / "members.json"
        self._passwords: dict[str, str] = {}
        self._entries: dict[str, dict[str, Any]] = {}
        self._lock = asyncio.Lock()

    async def credentials(self, strategy_id: str) -> dict[str, str]:
        """The environment that gives ``strategy_id`` its own NATS identity (made on first use)."""
        async with self._lock:
            if strategy_id not in self._passwords:
                password = auth.new_password()
                hashed = await asyncio.to_thread(auth.hash_password, password)
                self._entries[strategy_id] = auth.strategy_entry(strategy_id, hashed)
                await asyncio.to_thread(self._write)
                self._reload()
                await self._prove(strategy_id, password)
                self._passwords[strategy_id] = password
                log.info("strategy.identity_issued", strategy_id=strategy_id, user=auth.strategy_user(strategy_id))
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
        """At start: make sure the server knows the members (the users file may hold only the base)."""
        async with self._lock:
            if self.members():
                await asyncio.to_thread(self._write)
                self._reload()

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
        users = auth.read_users(self.base_users_file) + members + list(self._entries.values())
        auth.write_private(self.auth_file, auth.render_users(users))

    def _reload(self) -> None:
        if self._reload_fn is not None:
            self._reload_fn()
            return
        if self.pid_file is None:
            raise RuntimeError("no way to reload NATS: set ORCH_NATS_PID_FILE or ORCH_NATS_RELOAD=docker")
        pid = int(self.pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)

    async def _prove(self, strategy_id: str, password: str, timeout: float = 10.0) -> None:
        """Until the reloaded server accepts the new user (the reload is asynchronous)."""

        async def quiet(exc: Exception) -> None:
            pass

        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                nc = await open_connection(
                    self.nats_url,
                    forever=False,
                    user=auth.strategy_user(strategy_id),
                    password=password,
                    error_cb=quiet,
                )
                await nc.close()
                return
            except Exception as exc:  # noqa: BLE001 - not applied yet; bounded by the deadline
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"NATS did not accept the new user of {strategy_id}: {exc!r}") from None
                await asyncio.sleep(0.1)


__all__ = ["NatsIdentities", "is_bcrypt", "read_members"]
