"""The dashboard's operator gate, through the real Starlette app (no desk behind it: every request
here is refused before the app would talk to the bus)."""

from __future__ import annotations

import time

from nats.aio.client import Client
from starlette.testclient import TestClient

from services.dashboard.app import create_app
from services.dashboard.auth import OperatorAuth
from services.dashboard.live import LiveFeed
from services.dashboard.pages.site import SESSION_COOKIE
from services.dashboard.reader import DeskReader

BASE = "http://dashboard.test"


def client(password: str | None) -> tuple[TestClient, OperatorAuth]:
    live = LiveFeed()
    auth = OperatorAuth(password, b"k" * 32, 3600)
    reader = DeskReader(Client(), live, timeout=1.0, service_names=[])  # never connected: never used here
    return TestClient(create_app(reader, live, auth), base_url=BASE), auth


def test_operator_actions_are_disabled_without_a_password() -> None:
    with client(None)[0] as c:
        response = c.post("/operator/risk/halt")
        assert response.status_code == 403
        assert "disabled" in response.json()["error"]
        assert c.post("/login", data={"password": ""}).status_code == 403


def test_an_unauthenticated_kill_switch_request_is_refused() -> None:
    with client("pw")[0] as c:
        response = c.post("/operator/risk/halt", data={"reason": "x"})
        assert response.status_code == 401
        assert response.json() == {"ok": False, "error": "operator login required"}
        assert c.post("/operator/strategy/ma_crossover/stop").status_code == 401


def test_a_forged_session_cookie_is_refused() -> None:
    with client("pw")[0] as c:
        forged = OperatorAuth("pw", b"another key", 3600).issue_session(time.time_ns())
        c.cookies.set(SESSION_COOKIE, forged)
        assert c.post("/operator/risk/halt").status_code == 401


def test_a_wrong_password_is_refused_and_sets_no_session() -> None:
    with client("pw")[0] as c:
        response = c.post("/login", data={"password": "nope"}, follow_redirects=False)
        assert response.status_code == 401
        assert SESSION_COOKIE not in response.cookies


def test_a_logged_in_request_without_the_csrf_token_or_from_another_site_is_refused() -> None:
    with client("pw")[0] as c:
        login = c.post("/login", data={"password": "pw"}, follow_redirects=False)
        assert login.status_code == 303
        assert "samesite=strict" in login.headers["set-cookie"].lower()
        assert "httponly" in login.headers["set-cookie"].lower()
        assert c.post("/operator/risk/halt").json()["error"] == "missing or wrong CSRF token"
        assert c.post("/operator/risk/halt", headers={"X-CSRF-Token": "0" * 64}).status_code == 403
        cross = c.post("/operator/risk/halt", headers={"Origin": "http://evil.example"})
        assert cross.status_code == 403
        assert cross.json()["error"] == "cross-site request refused"


def test_pages_carry_security_headers() -> None:
    with client("pw")[0] as c:
        response = c.get("/login")
        assert response.status_code == 200
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY"
        assert c.get("/strategy/..%2Fetc").status_code == 404
