"""Member logins on the dashboard: each logged-in member has a NATS connection of their own.

A member logs in with their name and the password of their credential file (``desk member add``).
The dashboard does not check that password itself: it opens a NATS connection as ``member-<name>``
with it, and the NATS server decides. The password is used for that connection only and never
kept. The member's controls (start/stop/restart and halt/resume of their strategies) and their logs are then asked
over that connection, on ``desk.ctl.m.<name>.<op>``: what the member may do is what the server and
the orchestrator allow (another member's strategy is refused with ``NOT_YOURS``), not what the page
shows. Logout, expiry and the dashboard's shutdown close the connection.

The session cookie is signed as the operator's (:mod:`services.dashboard.auth`):
``<expiry>.<nonce>.<member>.<HMAC>``, and valid only while its connection is open here.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.client import Client

from desk.bus import auth as bus_auth
from desk.bus import subjects
from desk.bus.errors import DeskError
from desk.bus.logging import get_logger
from desk.bus.request import request
from desk.bus.servers import server_list, tls_context
from desk.v1 import orders_pb2, strategy_pb2

log = get_logger("dashboard")
NS_PER_SECOND = 1_000_000_000
MEMBER_OPS = ("start", "stop", "restart")
HALT_OPS = ("halt", "resume")
MAX_PASSWORD = 200
Connector = Callable[[str, str, list[Exception]], Awaitable[Client]]


class LoginRefused(Exception):
    """The NATS server refused the member's name or password."""


class DeskUnreachable(Exception):
    """The NATS server could not be reached to check a member's login."""


class MemberRefused(Exception):
    """The desk refused a member's request (``status``: the HTTP status to answer with)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class MemberSession:
    member: str
    nc: Client
    expiry_ns: int
    errors: list[Exception] = field(default_factory=list)


def _auth_error(errors: Sequence[Exception]) -> bool:
    return any("authorization" in str(e).lower() or "authentication" in str(e).lower() for e in errors)


def _permission_error(errors: Sequence[Exception]) -> str:
    for e in reversed(errors):
        if "permissions violation" in str(e).lower():
            return str(e)
    return ""


class MemberSessions:
    """The logged-in members: a signed session token each, and the member's own NATS connection."""

    def __init__(
        self,
        servers: Sequence[str],
        secret_key: bytes,
        session_seconds: float,
        *,
        tls_ca: str | None = None,
        timeout: float = 5.0,
        connector: Connector | None = None,
    ) -> None:
        self.servers = list(servers)
        self._key = secret_key
        self._session_ns = int(session_seconds * NS_PER_SECOND)
        self.tls_ca = tls_ca
        self.timeout = timeout
        self._connector = connector or self._connect
        self._sessions: dict[str, MemberSession] = {}  # nonce -> session

    @property
    def enabled(self) -> bool:
        return bool(self.servers)

    def __len__(self) -> int:
        return len(self._sessions)

    def _sign(self, payload: str) -> str:
        return hmac.new(self._key, ("member:" + payload).encode(), hashlib.sha256).hexdigest()

    async def _connect(self, member: str, password: str, errors: list[Exception]) -> Client:
        """The member's connection (as :func:`desk.bus.servers.open_connection` with ``forever=False``,
        but closed again when the server refuses it, so a failed login leaves no socket behind)."""

        async def record(exc: Exception) -> None:
            errors.append(exc)

        nc = Client()
        # nats-py types these as int; it takes seconds as floats (open_connection passes them so too).
        options: dict[str, Any] = {"connect_timeout": self.timeout, "reconnect_time_wait": 0.2}
        context = tls_context(self.tls_ca)
        if context is not None:
            options["tls"] = context
        try:
            await nc.connect(
                servers=server_list(self.servers),
                name=f"dashboard member {member}",
                error_cb=record,
                max_reconnect_attempts=1,
                user=bus_auth.member_user(member),
                password=password,
                inbox_prefix=bus_auth.member_inbox_prefix(member),
                **options,
            )
        except BaseException:
            await _close(nc)
            raise
        return nc

    async def login(self, member: str, password: str, now_ns: int) -> str:
        """Open ``member``'s connection with ``password``; the session token, or LoginRefused /
        DeskUnreachable."""
        if not subjects.MEMBER_LOGIN_RE.match(member) or not password or len(password) > MAX_PASSWORD:
            raise LoginRefused("wrong member name or password")
        await self.expire(now_ns)
        errors: list[Exception] = []
        try:
            nc = await self._connector(member, password, errors)
        except Exception as exc:  # noqa: BLE001 - nats-py raises several kinds; the errors list says which
            errors.append(exc)
            if _auth_error(errors):
                raise LoginRefused("wrong member name or password") from None
            raise DeskUnreachable(f"the desk could not be reached to check the login ({exc!r})") from None
        payload = f"{now_ns + self._session_ns}.{secrets.token_hex(16)}.{member}"
        session = MemberSession(member, nc, now_ns + self._session_ns, errors)
        self._sessions[payload.split(".")[1]] = session
        return f"{payload}.{self._sign(payload)}"

    def session(self, token: str | None, now_ns: int) -> MemberSession | None:
        """The live session of ``token``: signed by us, not expired, its connection still open."""
        if not token or token.count(".") != 3:
            return None
        payload, _, signature = token.rpartition(".")
        expiry, nonce, member = payload.split(".")
        if not (expiry.isdigit() and nonce and member) or not hmac.compare_digest(self._sign(payload), signature):
            return None
        found = self._sessions.get(nonce)
        if found is None or found.member != member:
            return None
        if int(expiry) <= now_ns or found.nc.is_closed:
            return None
        return found

    def csrf_token(self, token: str) -> str:
        return self._sign("csrf:" + token)

    def verify_csrf(self, token: str | None, given: str | None) -> bool:
        if not token or not given:
            return False
        return hmac.compare_digest(self.csrf_token(token), given)

    async def logout(self, token: str | None) -> None:
        if not token or token.count(".") != 3:
            return
        nonce = token.split(".")[1]
        found = self._sessions.get(nonce)
        if found is not None and hmac.compare_digest(self._sign(token.rpartition(".")[0]), token.rpartition(".")[2]):
            del self._sessions[nonce]
            await _close(found.nc)
            log.info("member.logged_out", member=found.member)

    async def expire(self, now_ns: int) -> None:
        """Close the connections of expired sessions (and forget closed ones)."""
        for nonce, s in list(self._sessions.items()):
            if s.expiry_ns <= now_ns or s.nc.is_closed:
                del self._sessions[nonce]
                await _close(s.nc)

    async def close_all(self) -> None:
        for s in list(self._sessions.values()):
            await _close(s.nc)
        self._sessions.clear()

    # -- the member's requests, over their own connection ----------------------------------------

    async def ask(self, session: MemberSession, op: str, message: Any, reply_type: Any) -> Any:
        """``message`` on the member's own ``desk.ctl.m.<member>.<op>``; MemberRefused with the desk's
        reason (403 for NOT_YOURS or a permissions violation)."""
        del session.errors[:-20]  # what nats-py reported on the connection: the latest are enough
        try:
            return await request(
                session.nc, subjects.member_ctl(session.member, op), message, reply_type, timeout=self.timeout
            )
        except DeskError as err:
            status = 403 if err.code in ("NOT_YOURS", "FORBIDDEN") or err.status == 403 else 400
            if err.status == 404 or err.code == "NOT_FOUND":
                status = 404
            raise MemberRefused(f"refused by the desk: {err.code}: {err.message}", status) from err
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as err:
            violation = _permission_error(session.errors)
            if violation:
                raise MemberRefused(f"refused by the NATS server: {violation}", 403) from err
            raise MemberRefused("the orchestrator did not answer", 502) from err
        except nats.errors.ConnectionClosedError as err:
            raise MemberRefused("your desk connection was closed: log in again", 401) from err

    async def control(self, session: MemberSession, op: str, strategy_id: str) -> strategy_pb2.StrategyStatusList:
        if op not in MEMBER_OPS:
            raise ValueError(f"unknown action {op!r}: start, stop or restart")
        reply: strategy_pb2.StrategyStatusList = await self.ask(
            session, op, strategy_pb2.StrategyControl(strategy_id=strategy_id), strategy_pb2.StrategyStatusList
        )
        return reply

    async def halt(self, session: MemberSession, op: str, strategy_id: str) -> orders_pb2.HaltAck:
        """The kill switch of one of the member's own strategies (the orchestrator checks whose it is)."""
        if op not in HALT_OPS:
            raise ValueError(f"unknown action {op!r}: halt or resume")
        reply: orders_pb2.HaltAck = await self.ask(
            session, op, strategy_pb2.StrategyControl(strategy_id=strategy_id), orders_pb2.HaltAck
        )
        return reply

    async def logs(self, session: MemberSession, strategy_id: str, tail: int) -> list[str]:
        reply: strategy_pb2.LogsReply = await self.ask(
            session, "logs", strategy_pb2.LogsRequest(strategy_id=strategy_id, tail=tail), strategy_pb2.LogsReply
        )
        return list(reply.lines)


async def _close(nc: Client) -> None:
    if nc.is_closed:
        return
    try:
        await nc.close()
    except Exception as exc:  # noqa: BLE001 - closing a broken connection: nothing left to do
        log.debug("member.close_failed", error=repr(exc))
