"""The web app (Starlette): pages, JSON for the scripts, server-sent events, operator actions.

Pages are Jinja2 templates with autoescape, and the scripts build the DOM with ``textContent``, so a
strategy name or a log line a member controls is always shown as text. Everything is read-only
unless an operator logged in (see :mod:`services.dashboard.auth`).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from desk.bus import subjects
from desk.bus.logging import get_logger
from services.dashboard.auth import LoginThrottle, OperatorAuth, client_address, same_origin
from services.dashboard.live import LiveFeed
from services.dashboard.reader import DeskReader, Unavailable

log = get_logger("dashboard")
HERE = Path(__file__).parent
SESSION_COOKIE = "desk_operator"
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
SSE_KEEPALIVE = 15.0


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
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(
    reader: DeskReader,
    live: LiveFeed,
    auth: OperatorAuth,
    *,
    secure_cookie: bool = False,
    login_throttle: LoginThrottle | None = None,
    trusted_proxies: Collection[str] = (),
) -> Starlette:
    """``login_throttle``: defaults to :class:`LoginThrottle`'s defaults; ``trusted_proxies``: peers
    whose ``X-Forwarded-For`` names the login's client (none by default: headers are ignored)."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))  # .html: autoescape on
    throttle = login_throttle if login_throttle is not None else LoginThrottle()
    proxies = frozenset(trusted_proxies)

    def session_of(request: Request) -> str | None:
        token = request.cookies.get(SESSION_COOKIE)
        return token if auth.verify_session(token, time.time_ns()) else None

    def operator_context(request: Request) -> dict[str, Any]:
        session = session_of(request)
        return {
            "operator_enabled": auth.enabled,
            "operator": session is not None,
            "csrf_token": auth.csrf_token(session) if session else "",
        }

    def page(name: str, request: Request, data: dict[str, Any], status: int = 200) -> Response:
        return templates.TemplateResponse(request, name, {"data": data, **operator_context(request)}, status_code=status)

    async def leaderboard_page(request: Request) -> Response:
        return page("leaderboard.html", request, await reader.leaderboard())

    async def strategy_page(request: Request) -> Response:
        strategy_id = str(request.path_params["strategy_id"])
        if not subjects.STRATEGY_ID_RE.match(strategy_id):
            return page("error.html", request, {"message": "not a strategy id"}, status=404)
        return page("strategy.html", request, await reader.strategy(strategy_id))

    async def desk_page(request: Request) -> Response:
        return page("desk.html", request, await reader.desk())

    async def leaderboard_json(request: Request) -> Response:
        return JSONResponse(await reader.leaderboard())

    async def strategy_json(request: Request) -> Response:
        strategy_id = str(request.path_params["strategy_id"])
        if not subjects.STRATEGY_ID_RE.match(strategy_id):
            return JSONResponse({"error": "not a strategy id"}, status_code=404)
        return JSONResponse(await reader.strategy(strategy_id))

    async def desk_json(request: Request) -> Response:
        return JSONResponse(await reader.desk())

    async def events(request: Request) -> Response:
        # Subscribe before the response starts: once the page sees the stream open, it misses nothing.
        listener = live.listen()

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n: connected\n\n"
                async for event in listener:
                    yield f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"
            finally:
                listener.close()

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )

    # -- operator ---------------------------------------------------------------------------------

    async def login_form(request: Request) -> Response:
        return page("login.html", request, {"error": ""})

    async def login(request: Request) -> Response:
        if not same_origin(request.headers.get("origin"), request.headers.get("host")):
            return page("login.html", request, {"error": "cross-site login refused"}, status=403)
        if not auth.enabled:
            return page("login.html", request, {"error": "operator actions are disabled (DASHBOARD_OPERATOR_PASSWORD is not set)"}, status=403)
        form = await request.form()
        password = form.get("password")
        client = client_address(
            request.client.host if request.client else None, request.headers.get("x-forwarded-for"), proxies
        )
        # No await from here on: throttle check, password check and count update are one step, so
        # concurrent requests cannot all pass the check before the first failure is counted.
        wait = throttle.retry_after(client)
        if wait:
            # Refused before the password is looked at: during a lockout a right password fails too.
            log.warning("login.throttled", client=client, count=throttle.failures(client), retry_after=wait)
            message = f"too many failed logins from your address; try again in {wait} s"
            response = page("login.html", request, {"error": message}, status=429)
            response.headers["Retry-After"] = str(wait)
            return response
        if not isinstance(password, str) or not auth.check_password(password):
            count = throttle.failed(client)
            wait = throttle.retry_after(client)
            log.warning("login.failed", client=client, count=count, retry_after=wait)
            message = "wrong password"
            if wait:
                message += f"; too many failed logins from your address; try again in {wait} s"
            response = page("login.html", request, {"error": message}, status=401)
            if wait:
                response.headers["Retry-After"] = str(wait)
            return response
        throttle.succeeded(client)
        log.info("operator.logged_in", client=client)
        response = RedirectResponse("/desk", status_code=303)
        response.set_cookie(
            SESSION_COOKIE, auth.issue_session(time.time_ns()), httponly=True, samesite="strict",
            secure=secure_cookie, path="/",
        )
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    def operator_action(
        act: Callable[[Request, dict[str, str]], Awaitable[dict[str, Any]]], name: str
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            client = request.client.host if request.client else ""
            refusal: tuple[int, str] | None = None
            form: dict[str, str] = {}
            session = session_of(request)
            if not auth.enabled:
                refusal = (403, "operator actions are disabled (DASHBOARD_OPERATOR_PASSWORD is not set)")
            elif session is None:
                refusal = (401, "operator login required")
            elif not same_origin(request.headers.get("origin"), request.headers.get("host")):
                refusal = (403, "cross-site request refused")
            else:
                form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
                token = request.headers.get("x-csrf-token") or form.get("csrf_token")
                if not auth.verify_csrf(session, token):
                    refusal = (403, "missing or wrong CSRF token")
            if refusal is not None:
                log.warning("operator.refused", action=name, client=client, status=refusal[0], reason=refusal[1])
                return JSONResponse({"ok": False, "error": refusal[1]}, status_code=refusal[0])
            try:
                result = await act(request, form)
            except ValueError as exc:
                return JSONResponse({"ok": False, "error": str(exc)}, status_code=400)
            except Unavailable as exc:
                return JSONResponse({"ok": False, "error": str(exc)}, status_code=502)
            log.warning("operator.action", action=name, client=client, **{k: str(v) for k, v in result.items()})
            return JSONResponse({"ok": True, **result})

        return endpoint

    def strategy_target(value: str) -> str:
        if value and not subjects.STRATEGY_ID_RE.match(value):
            raise ValueError("not a strategy id")
        return value

    async def do_halt(request: Request, form: dict[str, str]) -> dict[str, Any]:
        action = str(request.path_params["action"])
        if action not in ("halt", "resume"):
            raise ValueError(f"unknown action {action!r}: halt or resume")
        resume = action == "resume"
        target = strategy_target(form.get("strategy_id", ""))
        ack = await reader.halt(target, resume, requested_by="dashboard operator", reason=form.get("reason", "")[:200] or "dashboard")
        return {"message": ack.message, "global_halted": ack.global_halted, "halted_strategies": list(ack.halted_strategies)}

    async def do_control(request: Request, form: dict[str, str]) -> dict[str, Any]:
        action = str(request.path_params["action"])
        if action not in ("start", "stop"):
            raise ValueError(f"unknown action {action!r}: start or stop")
        target = strategy_target(str(request.path_params["strategy_id"]))
        if not target:
            raise ValueError("a strategy id is required")
        reply = await reader.control(action, target)
        states = [(s.strategy_id, s.state) for s in reply.strategies]
        return {"message": f"{action} {target}", "strategies": json.dumps(states)}

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    routes = [
        Route("/favicon.ico", favicon),
        Route("/", leaderboard_page),
        Route("/strategy/{strategy_id}", strategy_page),
        Route("/desk", desk_page),
        Route("/api/leaderboard", leaderboard_json),
        Route("/api/strategy/{strategy_id}", strategy_json),
        Route("/api/desk", desk_json),
        Route("/events", events),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/operator/risk/{action:str}", operator_action(do_halt, "risk"), methods=["POST"]),
        Route("/operator/strategy/{strategy_id}/{action:str}", operator_action(do_control, "strategy"), methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(SecurityHeaders)
    return app
