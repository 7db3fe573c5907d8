"""A member's ``/member/login`` (GET: the form; POST: name + password, checked by the NATS server,
throttled per client as the operator's login), ``/member/logout`` and the member's own controls
``/member/strategy/{strategy_id}/{start|stop|restart|halt|resume}``, sent over the member's own connection."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Collection

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from desk.bus.logging import get_logger
from services.dashboard.auth import LoginThrottle, client_address, same_origin
from services.dashboard.members import HALT_OPS, DeskUnreachable, LoginRefused, MemberRefused
from services.dashboard.pages.operator import strategy_target
from services.dashboard.pages.site import MEMBER_COOKIE, Site

log = get_logger("dashboard")


def control_endpoint(site: Site) -> Callable[[Request], Awaitable[Response]]:
    """The member's own start/stop/restart and halt/resume, over the member's own NATS connection."""

    async def control(request: Request) -> Response:
        token = request.cookies.get(MEMBER_COOKIE)
        session = site.member_of(request)
        action = str(request.path_params["action"])
        client = request.client.host if request.client else ""

        def refused(status: int, reason: str) -> Response:
            log.warning("member.refused", action=action, client=client, status=status, reason=reason)
            return JSONResponse({"ok": False, "error": reason}, status_code=status)

        if session is None or token is None:
            return refused(401, "member login required")
        if not same_origin(request.headers.get("origin"), request.headers.get("host")):
            return refused(403, "cross-site request refused")
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        if not site.members.verify_csrf(token, request.headers.get("x-csrf-token") or form.get("csrf_token")):
            return refused(403, "missing or wrong CSRF token")
        try:
            target = strategy_target(str(request.path_params["strategy_id"]))
            if action in HALT_OPS:
                ack = await site.members.halt(session, action, target)
            else:
                reply = await site.members.control(session, action, target)
        except ValueError as exc:
            return refused(400, str(exc))
        except MemberRefused as exc:
            return refused(exc.status, str(exc))
        log.warning("member.action", action=action, member=session.member, strategy=target, client=client)
        if action in HALT_OPS:
            message = f"{'halted' if action == 'halt' else 'resumed'} {target}"
            return JSONResponse({"ok": True, "message": message, "halted_strategies": list(ack.halted_strategies)})
        states = [(s.strategy_id, s.state) for s in reply.strategies]
        return JSONResponse({"ok": True, "message": f"{action} {target}", "strategies": json.dumps(states)})

    return control


def routes(
    site: Site, throttle: LoginThrottle, trusted_proxies: Collection[str], secure_cookie: bool
) -> list[BaseRoute]:
    proxies = frozenset(trusted_proxies)

    def form_page(request: Request, error: str, status: int, name: str = "") -> Response:
        return site.page("member_login.html", request, {"error": error, "name": name}, status=status)

    async def login_form(request: Request) -> Response:
        return form_page(request, "", 200)

    async def login(request: Request) -> Response:
        if not same_origin(request.headers.get("origin"), request.headers.get("host")):
            return form_page(request, "cross-site login refused", 403)
        form = await request.form()
        name, password = form.get("name"), form.get("password")
        name = name.strip() if isinstance(name, str) else ""
        client = client_address(
            request.client.host if request.client else None, request.headers.get("x-forwarded-for"), proxies
        )
        wait = throttle.retry_after(client)
        if wait:
            log.warning("login.throttled", client=client, count=throttle.failures(client), retry_after=wait)
            response = form_page(request, f"too many failed logins from your address; try again in {wait} s", 429, name)
            response.headers["Retry-After"] = str(wait)
            return response
        # Counted before the NATS server is asked (an await): parallel attempts cannot all pass the
        # check before the first failure is counted. A login that works clears the count.
        count = throttle.failed(client)
        try:
            token = await site.members.login(name, password if isinstance(password, str) else "", time.time_ns())
        except LoginRefused as exc:
            wait = throttle.retry_after(client)
            log.warning("login.failed", client=client, member=name[:64], count=count, retry_after=wait)
            message = str(exc) + (f"; too many failed logins from your address; try again in {wait} s" if wait else "")
            response = form_page(request, message, 401, name)
            if wait:
                response.headers["Retry-After"] = str(wait)
            return response
        except DeskUnreachable as exc:
            return form_page(request, str(exc), 502, name)
        throttle.succeeded(client)
        log.info("member.logged_in", client=client, member=name)
        response = RedirectResponse(f"/members/{name}", status_code=303)
        response.set_cookie(MEMBER_COOKIE, token, httponly=True, samesite="strict", secure=secure_cookie, path="/")
        return response

    async def logout(request: Request) -> Response:
        await site.members.logout(request.cookies.get(MEMBER_COOKIE))
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(MEMBER_COOKIE, path="/")
        return response

    return [
        Route("/member/login", login_form, methods=["GET"]),
        Route("/member/login", login, methods=["POST"]),
        Route("/member/logout", logout, methods=["POST"]),
        Route("/member/strategy/{strategy_id}/{action:str}", control_endpoint(site), methods=["POST"]),
    ]
