"""The dashboard's login throttle: pure with a fake clock, then through the real Starlette app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from nats.aio.client import Client
from starlette.applications import Starlette
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from services.dashboard.app import create_app
from services.dashboard.auth import LoginThrottle, OperatorAuth, client_address
from services.dashboard.live import LiveFeed
from services.dashboard.pages.site import SESSION_COOKIE
from services.dashboard.reader import DeskReader
from services.dashboard.settings import Settings

BASE = "http://dashboard.test"
A, B = "192.0.2.1", "192.0.2.2"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def throttle(clock: FakeClock, **kwargs: Any) -> LoginThrottle:
    return LoginThrottle(clock=clock, **kwargs)


def fail(t: LoginThrottle, client: str, times: int) -> None:
    for _ in range(times):
        assert t.retry_after(client) == 0
        t.failed(client)


# -- the throttle -----------------------------------------------------------------------------------


def test_five_failures_are_free_and_the_sixth_attempt_waits_one_second() -> None:
    clock = FakeClock()
    t = throttle(clock)
    fail(t, A, 4)
    assert t.retry_after(A) == 0
    t.failed(A)  # the fifth
    assert t.failures(A) == 5
    assert t.retry_after(A) == 1
    assert t.retry_after(B) == 0  # per client
    clock.advance(0.5)
    assert t.retry_after(A) == 1  # rounded up
    clock.advance(0.5)
    assert t.retry_after(A) == 0


def test_the_delay_doubles_per_further_failure_up_to_the_cap() -> None:
    clock = FakeClock()
    t = throttle(clock, max_delay=300)
    fail(t, A, 5)
    seen = []
    for _ in range(12):
        wait = t.retry_after(A)
        seen.append(wait)
        clock.advance(wait)
        t.failed(A)
    assert seen == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    assert t.delay(10_000) == 300  # no overflow however long it goes on


def test_a_success_resets_the_count() -> None:
    clock = FakeClock()
    t = throttle(clock)
    fail(t, A, 5)
    clock.advance(1)
    t.succeeded(A)
    assert t.failures(A) == 0
    fail(t, A, 5)  # five free ones again
    assert t.retry_after(A) == 1


def test_failures_are_forgotten_after_the_window_without_one() -> None:
    clock = FakeClock()
    t = throttle(clock, window=900)
    fail(t, A, 4)
    clock.advance(899)
    t.failed(A)
    assert t.retry_after(A) == 1  # the window counts from the latest failure
    clock.advance(900)
    assert t.failures(A) == 5  # ... or from the end of its lockout (1 s)
    clock.advance(1)
    assert t.failures(A) == 0
    assert t.retry_after(A) == 0
    assert len(t) == 0


def test_the_window_starts_when_a_lockout_ends_so_delays_longer_than_it_keep_doubling() -> None:
    clock = FakeClock()
    t = throttle(clock, window=10, max_delay=60, free_attempts=1)
    seen = []
    for _ in range(8):
        wait = t.retry_after(A)
        seen.append(wait)
        clock.advance(wait)
        t.failed(A)
    assert seen == [0, 1, 2, 4, 8, 16, 32, 60]
    clock.advance(30)
    assert t.retry_after(A) == 30
    clock.advance(30 + 9.9)
    assert t.failures(A) == 8
    clock.advance(0.1)
    assert t.failures(A) == 0


def test_tracked_clients_are_bounded_and_the_oldest_is_forgotten() -> None:
    clock = FakeClock()
    t = throttle(clock, max_clients=100)
    fail(t, A, 5)
    for i in range(1000):
        clock.advance(0.001)
        t.failed(f"10.0.{i // 256}.{i % 256}")
        assert len(t) <= 100
    assert len(t) == 100
    assert t.failures(A) == 0  # evicted: the oldest
    assert t.failures("10.0.3.231") == 1  # the newest is kept


def test_stale_clients_are_dropped_before_anyone_is_evicted() -> None:
    clock = FakeClock()
    t = throttle(clock, max_clients=3, window=60)
    t.failed("old")
    clock.advance(61)
    fail(t, A, 1)
    assert len(t) == 1


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        LoginThrottle(free_attempts=0)
    with pytest.raises(ValueError):
        LoginThrottle(max_clients=0)


def test_the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() -> None:
    assert client_address(A, "203.0.113.9", ()) == A  # no trusted proxy: header ignored
    assert client_address(A, "203.0.113.9", {"127.0.0.1"}) == A  # peer is not the proxy
    assert client_address("127.0.0.1", "203.0.113.9", {"127.0.0.1"}) == "203.0.113.9"
    # Left entries are the client's own words; the right-most untrusted hop is what the proxy saw.
    assert client_address("127.0.0.1", "1.1.1.1, 203.0.113.9", {"127.0.0.1"}) == "203.0.113.9"
    assert client_address("127.0.0.1", "203.0.113.9, 10.0.0.2", {"127.0.0.1", "10.0.0.2"}) == "203.0.113.9"
    assert client_address("127.0.0.1", None, {"127.0.0.1"}) == "127.0.0.1"
    assert client_address(None, None, ()) == "unknown"
    assert client_address("::ffff:0:1", None, ()) == "::ffff:0:1"


def test_settings_build_the_throttle_and_check_proxy_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    assert defaults.trusted_proxies == frozenset()
    t = defaults.login_throttle()
    assert (t.free_attempts, t.window, t.max_delay, t.max_clients) == (5, 900, 300, 10_000)
    monkeypatch.setenv("DASHBOARD_LOGIN_FREE_ATTEMPTS", "3")
    monkeypatch.setenv("DASHBOARD_LOGIN_MAX_DELAY", "60")
    monkeypatch.setenv("DASHBOARD_TRUSTED_PROXIES", "127.0.0.1, ::1")
    s = Settings()
    assert s.login_throttle().free_attempts == 3
    assert s.login_throttle().max_delay == 60
    assert s.trusted_proxies == {"127.0.0.1", "::1"}
    monkeypatch.setenv("DASHBOARD_TRUSTED_PROXIES", "proxy.example")
    with pytest.raises(ValueError):
        Settings()


# -- through the app --------------------------------------------------------------------------------


def app(clock: FakeClock, trusted_proxies: tuple[str, ...] = ()) -> Starlette:
    live = LiveFeed()
    auth = OperatorAuth("pw", b"k" * 32, 3600)
    reader = DeskReader(Client(), live, timeout=1.0, service_names=[])  # never connected: never used here
    return create_app(reader, live, auth, login_throttle=LoginThrottle(clock=clock), trusted_proxies=trusted_proxies)


def test_after_five_failures_login_is_refused_with_429_even_with_the_right_password() -> None:
    clock = FakeClock()
    with TestClient(app(clock), base_url=BASE) as c, capture_logs() as logs:
        for _ in range(5):
            assert c.post("/login", data={"password": "nope"}, follow_redirects=False).status_code == 401
        refused = c.post("/login", data={"password": "pw"}, follow_redirects=False)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert SESSION_COOKIE not in refused.cookies
        assert "too many failed logins from your address; try again in 1 s" in refused.text
        assert "frame-ancestors" in refused.headers["content-security-policy"]

        clock.advance(1)
        assert c.post("/login", data={"password": "nope"}, follow_redirects=False).status_code == 401
        again = c.post("/login", data={"password": "pw"}, follow_redirects=False)
        assert (again.status_code, again.headers["retry-after"]) == (429, "2")

        clock.advance(2)
        ok = c.post("/login", data={"password": "pw"}, follow_redirects=False)
        assert ok.status_code == 303
        assert SESSION_COOKIE in ok.cookies
        c.cookies.clear()
        assert c.post("/login", data={"password": "nope"}, follow_redirects=False).status_code == 401  # count reset

    failed = [e for e in logs if e["event"] == "login.failed"]
    assert [e["count"] for e in failed] == [1, 2, 3, 4, 5, 6, 1]
    assert all(e["client"] == "testclient" and e["log_level"] == "warning" for e in failed)
    throttled = [e for e in logs if e["event"] == "login.throttled"]
    assert [(e["client"], e["retry_after"]) for e in throttled] == [("testclient", 1), ("testclient", 2)]


def test_the_session_and_csrf_gate_still_applies_after_a_throttled_login() -> None:
    clock = FakeClock()
    with TestClient(app(clock), base_url=BASE) as c:
        for _ in range(5):
            c.post("/login", data={"password": "nope"})
        assert c.post("/operator/risk/halt").status_code == 401
        clock.advance(1)
        assert c.post("/login", data={"password": "pw"}, follow_redirects=False).status_code == 303
        assert c.post("/operator/risk/halt").json()["error"] == "missing or wrong CSRF token"


def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() -> None:
    clock = FakeClock()
    with TestClient(app(clock), base_url=BASE) as c:
        for i in range(5):  # a rotating header does not make new clients
            c.post("/login", data={"password": "nope"}, headers={"X-Forwarded-For": f"203.0.113.{i}"})
        assert c.post("/login", data={"password": "pw"}, headers={"X-Forwarded-For": "198.51.100.7"}).status_code == 429
    with TestClient(app(clock, trusted_proxies=("testclient",)), base_url=BASE) as c:
        for _ in range(5):
            c.post("/login", data={"password": "nope"}, headers={"X-Forwarded-For": "203.0.113.1"})
        assert c.post("/login", data={"password": "pw"}, headers={"X-Forwarded-For": "203.0.113.1"}).status_code == 429
        other = c.post(
            "/login", data={"password": "pw"}, headers={"X-Forwarded-For": "203.0.113.2"}, follow_redirects=False
        )
        assert other.status_code == 303


async def slow_body() -> AsyncIterator[bytes]:
    yield b"password="
    await asyncio.sleep(0)  # the app waits for the rest: every request is in flight at once
    yield b"nope"


async def test_concurrent_wrong_passwords_do_not_slip_past_the_throttle() -> None:
    transport = httpx2.ASGITransport(app=app(FakeClock()), client=(A, 4321))
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    async with httpx2.AsyncClient(transport=transport, base_url=BASE) as c:
        responses = await asyncio.gather(*(c.post("/login", content=slow_body(), headers=form) for _ in range(50)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [401] * 5 + [429] * 45
