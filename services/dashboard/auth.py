"""Operator sessions and CSRF tokens: pure, no I/O (the clock is passed in).

The dashboard is read-only for everyone. Operator actions (kill switch, strategy start/stop) need a
login with ``DASHBOARD_OPERATOR_PASSWORD``; a successful login sets a session cookie holding
``<expiry>.<nonce>.<signature>`` (HMAC-SHA256 with the dashboard's secret key), HttpOnly and
SameSite=Strict. Every state-changing request must also carry a CSRF token bound to that session
(``HMAC(key, "csrf:" + session)``) in a form field or the ``X-CSRF-Token`` header, and its ``Origin``
(when sent) must be the dashboard's own. With no password set, operator actions are disabled.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

NS_PER_SECOND = 1_000_000_000


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
