"""The web app (Starlette): pages, JSON for the scripts, server-sent events, operator actions.

Pages are Jinja2 templates with autoescape, and the scripts build the DOM with ``textContent``, so a
strategy name or a log line a member controls is always shown as text. Everything is read-only
unless an operator logged in (see :mod:`services.dashboard.auth`). The routes live in
:mod:`services.dashboard.pages`, one module per page; :func:`create_app` assembles them.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.dashboard.auth import LoginThrottle, OperatorAuth
from services.dashboard.live import LiveFeed
from services.dashboard.members import MemberSessions
from services.dashboard.pages import desk, events, leaderboard, login, member, member_login, operator, strategy
from services.dashboard.pages.site import Site
from services.dashboard.reader import DeskReader

HERE = Path(__file__).parent
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        (
            b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            b"connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
        ),
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    """Adds the security headers to every response (a plain ASGI middleware: streams stay streams)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                own = {name.lower() for name, _ in headers}  # a response's own CSP (the backtest report) stays
                message["headers"] = [*headers, *(h for h in SECURITY_HEADERS if h[0] not in own)]
            await send(message)

        await self.app(scope, receive, with_headers)


async def favicon(request: Request) -> Response:
    return Response(status_code=204)


def create_app(
    reader: DeskReader,
    live: LiveFeed,
    auth: OperatorAuth,
    *,
    secure_cookie: bool = False,
    login_throttle: LoginThrottle | None = None,
    trusted_proxies: Collection[str] = (),
    members: MemberSessions | None = None,
    reports_dir: Path | None = None,
) -> Starlette:
    """``login_throttle``: defaults to :class:`LoginThrottle`'s defaults; ``trusted_proxies``: peers
    whose ``X-Forwarded-For`` names the login's client (none by default: headers are ignored);
    ``members``: member logins (none without it); ``reports_dir``: where backtest reports are found
    (``<strategy_id>.html``). The operator's and the members' logins share one throttle."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))  # .html: autoescape on
    if members is None:
        members = MemberSessions([], b"", 1.0)  # no servers: member logins disabled
    site = Site(reader=reader, live=live, auth=auth, templates=templates, members=members, reports_dir=reports_dir)
    throttle = login_throttle if login_throttle is not None else LoginThrottle()
    routes: list[BaseRoute] = [
        Route("/favicon.ico", favicon),
        *leaderboard.routes(site),
        *strategy.routes(site),
        *member.routes(site),
        *desk.routes(site),
        *events.routes(site),
        *login.routes(site, throttle, trusted_proxies, secure_cookie),
        *operator.routes(site),
        *member_login.routes(site, throttle, trusted_proxies, secure_cookie),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(SecurityHeaders)
    return app
