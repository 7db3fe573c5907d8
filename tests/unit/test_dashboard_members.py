"""Member logins on the dashboard, the member and strategy pages, through the real Starlette app with
a fake NATS connector and a reader that answers from memory (no desk behind it): the NATS server's
verdict on a password is the connector's, the orchestrator's on a control is the faked request's."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest
from nats.aio.client import Client
from starlette.testclient import TestClient

from desk.bus.errors import DeskError
from desk.v1 import common_pb2, ledger_pb2, orders_pb2, strategy_pb2
from services.dashboard import members as members_module
from services.dashboard import metrics
from services.dashboard.app import create_app
from services.dashboard.auth import LoginThrottle, OperatorAuth
from services.dashboard.live import LiveFeed
from services.dashboard.members import DeskUnreachable, LoginRefused, MemberSessions
from services.dashboard.pages.site import MEMBER_COOKIE
from services.dashboard.reader import DeskReader, price_points, price_text, qty_text, split_traded, trade_points

BASE = "http://dashboard.test"
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}


class FakeNC:
    def __init__(self) -> None:
        self.is_closed = False

    async def close(self) -> None:
        self.is_closed = True


class Connector:
    """The NATS server's answer to a member's login: right password or an authorization violation."""

    def __init__(self, reachable: bool = True) -> None:
        self.reachable = reachable
        self.opened: list[FakeNC] = []

    async def __call__(self, member: str, password: str, errors: list[Exception]) -> Client:
        if not self.reachable:
            raise OSError("connection refused")
        if PASSWORDS.get(member) != password:
            errors.append(Exception("nats: 'Authorization Violation'"))
            raise ConnectionError("nats: no servers available for connection")
        nc = FakeNC()
        self.opened.append(nc)
        return nc  # type: ignore[return-value]


def row(strategy_id: str, member_id: str, fills: int, ret: str) -> ledger_pb2.PnlRow:
    return ledger_pb2.PnlRow(
        strategy_id=strategy_id, member_id=member_id, equity="100000", total_pnl="0", return_pct=ret, fills=fills
    )


class FakeReader(DeskReader):
    """Pages' data from memory: alice has ma_crossover; nothing else exists."""

    def __init__(self) -> None:
        super().__init__(Client(), LiveFeed(), timeout=1.0, service_names=[])

    async def strategy(self, strategy_id: str) -> dict[str, Any] | None:
        if strategy_id != "ma_crossover":
            return None
        return {
            "strategy_id": strategy_id,
            "member_id": "alice",
            "name": "MA",
            "description": "",
            "symbols": ["AAPL"],
            "status": {"state": "running", "restarts": 0, "last_error": "", "last_heartbeat_ns": 0},
            "heartbeat": None,
            "pnl": {},
            "max_drawdown_pct": "0.00",
            "sharpe": "",
            "benchmark_symbol": "AAPL",
            "equity": [[1.0, "100000"]],
            "drawdown": [[1.0, "0.000"]],
            "benchmark": [],
            "price": [[1.0, "187.12"]],
            "trades": [[1.0, "buy", "187.12", "1"]],
            "positions": [],
            "orders": [],
            "fills": [],
            "logs": ["hello"],
            "errors": [],
        }

    async def member(self, member_id: str) -> dict[str, Any] | None:
        if member_id != "alice":
            return None
        return {
            "member_id": "alice",
            "strategies": [{"strategy_id": "ma_crossover", "state": "running", "pnl": {}}],
            "pnl": {},
            "max_drawdown_pct": "0.00",
            "sharpe": "",
            "equity": [],
            "drawdown": [],
            "positions": [],
            "orders": [],
            "fills": [],
            "logs": {},
            "errors": [],
        }

    async def logs(self, strategy_id: str, tail: int = 60) -> list[str]:
        return [f"{strategy_id} operator-visible line"]


class HaltedReader(FakeReader):
    """The same desk with ma_crossover's kill switch on."""

    async def strategy(self, strategy_id: str) -> dict[str, Any] | None:
        data = await super().strategy(strategy_id)
        if data is not None:
            data["status"]["halted"] = True
        return data

    async def member(self, member_id: str) -> dict[str, Any] | None:
        data = await super().member(member_id)
        if data is not None:
            data["strategies"][0]["halted"] = True
        return data


def app_client(
    connector: Connector, throttle: LoginThrottle | None = None, reader: DeskReader | None = None
) -> tuple[TestClient, MemberSessions]:
    sessions = MemberSessions(["nats://127.0.0.1:1"], b"k" * 32, 3600, connector=connector)
    app = create_app(
        reader or FakeReader(),
        LiveFeed(),
        OperatorAuth("op", b"k" * 32, 3600),
        login_throttle=throttle,
        members=sessions,
    )
    return TestClient(app, base_url=BASE, follow_redirects=False), sessions


# -- MemberSessions -----------------------------------------------------------------------------------


async def test_a_login_is_the_nats_servers_verdict_and_its_token_is_signed() -> None:
    connector = Connector()
    sessions = MemberSessions(["nats://x:1"], b"k" * 32, 60, connector=connector)
    now = time.time_ns()
    token = await sessions.login("alice", "alice-pw", now)
    session = sessions.session(token, now)
    assert session is not None and session.member == "alice"
    expiry, nonce, _member, signature = token.split(".")
    assert sessions.session(f"{expiry}.{nonce}.bob.{signature}", now) is None  # another name: bad signature
    assert sessions.session(token, now + 61 * 10**9) is None  # expired
    with pytest.raises(LoginRefused):
        await sessions.login("alice", "wrong", now)
    with pytest.raises(LoginRefused):
        await sessions.login("Not A Name!", "alice-pw", now)
    await sessions.logout(token)
    assert connector.opened[0].is_closed and sessions.session(token, now) is None and len(sessions) == 0


async def test_an_unreachable_server_is_not_a_wrong_password() -> None:
    sessions = MemberSessions(["nats://x:1"], b"k" * 32, 60, connector=Connector(reachable=False))
    with pytest.raises(DeskUnreachable):
        await sessions.login("alice", "alice-pw", time.time_ns())


# -- through the app ------------------------------------------------------------------------------------


def test_a_member_logs_in_gets_a_session_cookie_and_sees_her_controls_only(monkeypatch: pytest.MonkeyPatch) -> None:
    async def orchestrator(nc: Any, subject: str, message: Any, reply_type: Any, timeout: float) -> Any:
        assert subject == "desk.ctl.m.alice.logs"  # her logs, asked as her
        return strategy_pb2.LogsReply(lines=["alice's own line"])

    monkeypatch.setattr(members_module, "request", orchestrator)
    client, _ = app_client(Connector())
    with client as c:
        wrong = c.post("/member/login", data={"name": "alice", "password": "nope"})
        assert wrong.status_code == 401 and "wrong member name or password" in wrong.text
        assert MEMBER_COOKIE not in wrong.cookies
        ok = c.post("/member/login", data={"name": "alice", "password": "alice-pw"})
        assert ok.status_code == 303 and ok.headers["location"] == "/members/alice"
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        page = c.get("/strategy/ma_crossover")
        assert page.status_code == 200 and 'data-url="/member/strategy/ma_crossover/stop"' in page.text
        mine = c.get("/members/alice")
        assert "alice's own line" not in mine.text  # escaped: the apostrophe is &#39;
        assert "alice&#39;s own line" in mine.text and "operator-visible" not in mine.text
        assert 'data-url="/member/strategy/ma_crossover/restart"' in mine.text


def test_failed_member_logins_are_throttled_like_the_operators() -> None:
    now = [0.0]
    client, _ = app_client(Connector(), LoginThrottle(clock=lambda: now[0]))
    with client as c:
        codes = [c.post("/member/login", data={"name": "alice", "password": "x"}).status_code for _ in range(7)]
        assert codes == [401] * 5 + [429] * 2
        refused = c.post("/member/login", data={"name": "alice", "password": "alice-pw"})
        assert refused.status_code == 429 and "Retry-After" in refused.headers  # the right password too
        now[0] += 10
        assert c.post("/member/login", data={"name": "alice", "password": "alice-pw"}).status_code == 303


def test_a_control_of_another_members_strategy_is_the_desks_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, str]] = []

    async def orchestrator(nc: Any, subject: str, message: Any, reply_type: Any, timeout: float) -> Any:
        if subject.endswith(".logs"):
            return reply_type()
        sent.append((subject, message.strategy_id))
        if message.strategy_id != "ma_crossover":
            raise DeskError("NOT_YOURS", f"strategy {message.strategy_id!r} is not yours (alice)", status=403)
        return reply_type()

    monkeypatch.setattr(members_module, "request", orchestrator)
    client, _ = app_client(Connector())
    with client as c:
        c.post("/member/login", data={"name": "alice", "password": "alice-pw"})
        page = c.get("/members/alice")
        csrf = page.text.split('name="csrf-token" content="')[1].split('"')[0]
        assert c.post("/member/strategy/mean_reversion/stop").status_code == 403  # no CSRF token
        refused = c.post("/member/strategy/mean_reversion/stop", headers={"X-CSRF-Token": csrf})
        assert refused.status_code == 403 and "NOT_YOURS" in refused.json()["error"]
        ok = c.post("/member/strategy/ma_crossover/stop", headers={"X-CSRF-Token": csrf})
        assert ok.status_code == 200 and ok.json()["message"] == "stop ma_crossover"
        assert sent == [("desk.ctl.m.alice.stop", "mean_reversion"), ("desk.ctl.m.alice.stop", "ma_crossover")]
        c.post("/member/logout")
        assert c.post("/member/strategy/ma_crossover/stop", headers={"X-CSRF-Token": csrf}).status_code == 401


def test_a_member_halts_and_resumes_her_own_strategy_and_the_desk_refuses_anothers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[tuple[str, str]] = []

    async def orchestrator(nc: Any, subject: str, message: Any, reply_type: Any, timeout: float) -> Any:
        if subject.endswith(".logs"):
            return reply_type()
        sent.append((subject, message.strategy_id))
        if message.strategy_id != "ma_crossover":
            raise DeskError("NOT_YOURS", f"strategy {message.strategy_id!r} is not yours (alice)", status=403)
        assert reply_type is orders_pb2.HaltAck
        return orders_pb2.HaltAck(halted_strategies=["ma_crossover"] if subject.endswith(".halt") else [])

    monkeypatch.setattr(members_module, "request", orchestrator)
    client, _ = app_client(Connector())
    with client as c:
        c.post("/member/login", data={"name": "alice", "password": "alice-pw"})
        page = c.get("/members/alice")
        for action in ("halt", "resume"):
            assert f'data-url="/member/strategy/ma_crossover/{action}"' in page.text
        csrf = page.text.split('name="csrf-token" content="')[1].split('"')[0]
        assert c.post("/member/strategy/ma_crossover/halt").status_code == 403  # no CSRF token
        refused = c.post("/member/strategy/mean_reversion/halt", headers={"X-CSRF-Token": csrf})
        assert refused.status_code == 403 and "NOT_YOURS" in refused.json()["error"]
        halted = c.post("/member/strategy/ma_crossover/halt", headers={"X-CSRF-Token": csrf})
        assert halted.status_code == 200, halted.text
        assert halted.json()["message"] == "halted ma_crossover"
        assert halted.json()["halted_strategies"] == ["ma_crossover"]
        resumed = c.post("/member/strategy/ma_crossover/resume", headers={"X-CSRF-Token": csrf})
        assert resumed.status_code == 200 and resumed.json()["message"] == "resumed ma_crossover"
        assert sent == [
            ("desk.ctl.m.alice.halt", "mean_reversion"),
            ("desk.ctl.m.alice.halt", "ma_crossover"),
            ("desk.ctl.m.alice.resume", "ma_crossover"),
        ]
    anonymous, _ = app_client(Connector())
    with anonymous as c:  # a visitor sees the state, not the controls
        page = c.get("/strategy/ma_crossover")
        assert 'id="halt-state" class="trading">open<' in page.text
        assert "/member/strategy/ma_crossover/halt" not in page.text


def test_a_halted_strategy_is_shown_halted_on_its_page_and_its_members() -> None:
    client, _ = app_client(Connector(), reader=HaltedReader())
    with client as c:
        page = c.get("/strategy/ma_crossover")
        assert 'id="halt-state" class="halted">HALTED<' in page.text
        member = c.get("/members/alice")
        assert '<td class="halt-state halted">halted</td>' in member.text


def test_unknown_names_are_404_pages() -> None:
    client, _ = app_client(Connector())
    with client as c:
        for path in ("/strategy/nope", "/members/nobody", "/strategy/Bad!", "/api/strategy/nope", "/api/members/x"):
            response = c.get(path)
            assert response.status_code == 404, path
        assert "no strategy called" in c.get("/strategy/nope").text


def test_the_operator_sees_a_members_logs_and_anonymous_visitors_do_not() -> None:
    client, _ = app_client(Connector())
    with client as c:
        assert "operator-visible" not in c.get("/members/alice").text
        assert c.post("/login", data={"password": "op"}).status_code == 303
        assert "operator-visible" in c.get("/members/alice").text


# -- what the pages show --------------------------------------------------------------------------------


def test_prices_round_to_the_cent_and_quantities_lose_trailing_zeros() -> None:
    assert price_text("187.123456") == "187.12" and price_text("") == "" and price_text("-0.001") == "0.00"
    assert qty_text("10.000000") == "10" and qty_text("0.5000") == "0.5" and qty_text("3") == "3"
    assert qty_text("0.000") == "0"


def test_only_what_has_traded_is_ranked() -> None:
    def perf(key: str, ret: str, trades: int) -> metrics.Performance:
        return metrics.Performance(key, "m", Decimal(100), Decimal(0), Decimal(ret), Decimal(0), None, trades)

    ranked, apart = split_traded([perf("idle", "0", 0), perf("loser", "-0.01", 3), perf("winner", "0.02", 1)])
    assert [(r["key"], r["rank"]) for r in ranked] == [("winner", 1), ("loser", 2)]
    assert [r["key"] for r in apart] == ["idle"]


def test_drawdown_price_path_and_trade_markers() -> None:
    curve = [(1, Decimal(100)), (2, Decimal(120)), (3, Decimal(90)), (4, Decimal(130))]
    assert [dd for _, dd in metrics.drawdown_series(curve)] == [0, 0, Decimal("0.25"), 0]
    path = [(i * 10**9, Decimal("100.123")) for i in range(5000)]
    points = price_points(path)
    assert len(points) <= 1501 and points[-1][0] == 4999.0 and points[0][1] == "100.12"
    fills = [
        ledger_pb2.Fill(symbol="AAPL", side=common_pb2.SIDE_SELL, price="101.5", qty="2.000", event_ns=2 * 10**9),
        ledger_pb2.Fill(symbol="AAPL", side=common_pb2.SIDE_BUY, price="100", qty="2", event_ns=10**9),
        ledger_pb2.Fill(symbol="MSFT", side=common_pb2.SIDE_BUY, price="300", qty="1", event_ns=10**9),
    ]
    assert trade_points(fills, "AAPL") == [[1.0, "buy", "100.00", "2"], [2.0, "sell", "101.50", "2"]]
