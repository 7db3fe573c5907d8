"""Errors the desk answers with: a code a program can branch on and a message a person can read."""

from __future__ import annotations


class DeskError(Exception):
    """A refusal with a specific reason, answered to the caller and counted; never a crash.

    ``status`` is the NATS micro error code (HTTP-like: 400 bad input, 404 unknown, 409 conflict,
    413 too large, 503 unavailable), ``code`` a stable machine-readable reason such as
    ``"MALFORMED"``, ``message`` the explanation.
    """

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
