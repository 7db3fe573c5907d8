"""Operator sessions and CSRF tokens: pure, no I/O (the clock is passed in).

The dashboard is read-only for everyone. Operator actions (kill switch, strategy start/stop) need a
login with ``DASHBOARD_OPERATOR_PASSWORD``; a successful login sets a session cookie holding
``<expiry>.<nonce>.<signature>`` (HMAC-SHA256 with the dashboard's secret key), HttpOnly and
SameSite=Strict. Every state-changing request must also carry a CSRF token bound to that session
(``HMAC(key, "csrf:" + session)``) in a form field or the ``X-CSRF-Token`` header, and its ``Origin``
(when sent) must be the dashboard's own. With no password set, operator actions are disabled.

Logins are throttled per client address (:class:`LoginThrottle`): a few failures are free, then each
further attempt waits a doubling delay, and a refused attempt never reaches the password check.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from urllib.parse import urlsplit

NS_PER_SECOND = 1_000_000_000
FIRST_DELAY = 1.0  # seconds refused after the last free failure; doubles with every further failure


class OperatorAuth:
    """Checks the operator password, issues and verifies session and CSRF tokens."""

    def __init__(self, password: str | None, secret_key: bytes, session_seconds: float) -> None:
        self._password = password or None
        self._key = secret_key
        self._session_ns = int(session_seconds * NS_PER_SECOND)

    @property
    def enabled(self) -> bool:
        """Operator actions are possible only when a password is configured."""
        return self._password is not None

    def check_password(self, given: str) -> bool:
        if self._password is None:
            return False
        # Compare digests of equal length so the comparison time says nothing about the password.
        expected = hashlib.sha256(self._password.encode()).digest()
        return hmac.compare_digest(expected, hashlib.sha256(given.encode()).digest())

    def _sign(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def issue_session(self, now_ns: int) -> str:
        payload = f"{now_ns + self._session_ns}.{secrets.token_hex(16)}"
        return f"{payload}.{self._sign(payload)}"

    def verify_session(self, token: str | None, now_ns: int) -> bool:
        """A session is valid when operator actions are enabled, the signature matches and it has not expired."""
        if not self.enabled or not token:
            return False
        payload, _, signature = token.rpartition(".")
        expiry, _, nonce = payload.partition(".")
        if not (expiry.isdigit() and nonce and signature):
            return False
        if not hmac.compare_digest(self._sign(payload), signature):
            return False
        return int(expiry) > now_ns

    def csrf_token(self, session: str) -> str:
        return self._sign("csrf:" + session)

    def verify_csrf(self, session: str | None, token: str | None) -> bool:
        if not session or not token:
            return False
        return hmac.compare_digest(self.csrf_token(session), token)


def same_origin(origin: str | None, host: str | None) -> bool:
    """True when ``origin`` (the request's Origin header) names ``host`` (its Host header), or is absent.

    Browsers send Origin on every cross-site POST, so a missing Origin is a same-site navigation or
    a non-browser client (which still needs the session cookie and the CSRF token).
    """
    if origin is None:
        return True
    if not host or origin == "null":
        return False
    return urlsplit(origin).netloc.lower() == host.lower()


@dataclass
class _Failures:
    count: int
    last: float  # clock time of the latest failure
    locked_until: float  # clock time from which the next attempt is allowed


class LoginThrottle:
    """Failed logins per client, and how long a client must wait before its next attempt.

    The first ``free_attempts`` failures cost nothing. After that, every failure locks the client
    out for a delay that doubles from 1 s (1, 2, 4 ... s, at most ``max_delay``); an attempt during
    the lockout is refused without looking at the password. A client's count is forgotten
    ``window`` seconds after its latest failure (after its lockout ends, when it is locked out), or
    at its next successful login. At most ``max_clients`` clients are tracked; when a new one comes, the one whose latest
    failure is oldest is forgotten, so rotating addresses costs bounded memory.

    Pure: ``clock`` (seconds, monotonic) is injected; no locks, so call :meth:`retry_after`,
    :meth:`failed` and :meth:`succeeded` for one attempt without an ``await`` in between.
    """

    def __init__(
        self,
        free_attempts: int = 5,
        window: float = 900.0,
        max_delay: float = 300.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if free_attempts < 1 or window <= 0 or max_delay < FIRST_DELAY or max_clients < 1:
            raise ValueError("free_attempts >= 1, window > 0, max_delay >= 1 s and max_clients >= 1 are required")
        self.free_attempts = free_attempts
        self.window = window
        self.max_delay = max_delay
        self.max_clients = max_clients
        self._clock = clock
        self._clients: OrderedDict[str, _Failures] = OrderedDict()  # oldest latest-failure first

    def __len__(self) -> int:
        return len(self._clients)

    def _stale(self, entry: _Failures, now: float) -> bool:
        # locked_until >= last: without a lockout this is `window` after the latest failure.
        return now >= entry.locked_until + self.window

    def _current(self, client: str, now: float) -> _Failures | None:
        entry = self._clients.get(client)
        if entry is not None and self._stale(entry, now):
            del self._clients[client]
            return None
        return entry

    def delay(self, count: int) -> float:
        """Seconds a client is refused after its ``count``-th failure."""
        if count < self.free_attempts:
            return 0.0
        return min(self.max_delay, FIRST_DELAY * 2.0 ** min(count - self.free_attempts, 64))

    def failures(self, client: str) -> int:
        entry = self._current(client, self._clock())
        return entry.count if entry else 0

    def retry_after(self, client: str) -> int:
        """Whole seconds (rounded up) before ``client`` may try again; 0 = it may try now."""
        now = self._clock()
        entry = self._current(client, now)
        if entry is None or now >= entry.locked_until:
            return 0
        return max(1, math.ceil(entry.locked_until - now))

    def failed(self, client: str) -> int:
        """Count a wrong password from ``client``; returns its failures so far (this one included)."""
        now = self._clock()
        entry = self._current(client, now)
        if entry is None:
            entry = self._clients[client] = _Failures(0, now, now)
        entry.count += 1
        entry.last = now
        entry.locked_until = now + self.delay(entry.count)
        self._clients.move_to_end(client)
        self._evict(now)
        return entry.count

    def succeeded(self, client: str) -> None:
        """A correct password: forget the client's failures."""
        self._clients.pop(client, None)

    def _evict(self, now: float) -> None:
        # Oldest first: drop the stale ones, then as many more as the bound needs.
        while self._clients:
            oldest = next(iter(self._clients.values()))
            if len(self._clients) <= self.max_clients and not self._stale(oldest, now):
                break
            self._clients.popitem(last=False)


def _normalise_address(value: str) -> str:
    value = value.strip()
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value


def client_address(peer: str | None, forwarded_for: str | None, trusted_proxies: Collection[str]) -> str:
    """The address a login is counted against.

    The TCP peer, unless the peer is one of ``trusted_proxies``: then the right-most
    ``X-Forwarded-For`` entry that is not itself a trusted proxy (entries to its left were written
    by the client and prove nothing). With no trusted proxies (the default) headers are ignored.
    """
    address = _normalise_address(peer) if peer else "unknown"
    if not forwarded_for or address not in trusted_proxies:
        return address
    hops = [_normalise_address(hop) for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if hop not in trusted_proxies:
            return hop
    return hops[0] if hops else address
