"""The operator's ``/login`` (GET: the form; POST: the password, throttled per client) and ``/logout``."""

from __future__ import annotations

import time
from collections.abc import Collection

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from desk.bus.logging import get_logger
from services.dashboard.auth import LoginThrottle, client_address, same_origin
from services.dashboard.pages.site import SESSION_COOKIE, Site

log = get_logger("dashboard")
DISABLED = "operator actions are disabled (DASHBOARD_OPERATOR_PASSWORD is not set)"


def routes(
    site: Site, throttle: LoginThrottle, trusted_proxies: Collection[str], secure_cookie: bool
) -> list[BaseRoute]:
    """``trusted_proxies``: peers whose ``X-Forwarded-For`` names the login's client."""
    proxies = frozenset(trusted_proxies)

    def throttled(request: Request, client: str, wait: int) -> Response:
        # Refused before the password is looked at: during a lockout a right password fails too.
        log.warning("login.throttled", client=client, count=throttle.failures(client), retry_after=wait)
        message = f"too many failed logins from your address; try again in {wait} s"
        response = site.page("login.html", request, {"error": message}, status=429)
        response.headers["Retry-After"] = str(wait)
        return response

    def wrong_password(request: Request, client: str) -> Response:
        count = throttle.failed(client)
        wait = throttle.retry_after(client)
        log.warning("login.failed", client=client, count=count, retry_after=wait)
        message = "wrong password"
        if wait:
            message += f"; too many failed logins from your address; try again in {wait} s"
        response = site.page("login.html", request, {"error": message}, status=401)
        if wait:
            response.headers["Retry-After"] = str(wait)
        return response

    def logged_in(client: str) -> Response:
        throttle.succeeded(client)
        log.info("operator.logged_in", client=client)
        response = RedirectResponse("/desk", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            site.auth.issue_session(time.time_ns()),
            httponly=True,
            samesite="strict",
            secure=secure_cookie,
            path="/",
        )
        return response

    async def login_form(request: Request) -> Response:
        return site.page("login.html", request, {"error": ""})

    async def login(request: Request) -> Response:
        if not same_origin(request.headers.get("origin"), request.headers.get("host")):
            return site.page("login.html", request, {"error": "cross-site login refused"}, status=403)
        if not site.auth.enabled:
            return site.page("login.html", request, {"error": DISABLED}, status=403)
        form = await request.form()
        password = form.get("password")
        client = client_address(
            request.client.host if request.client else None, request.headers.get("x-forwarded-for"), proxies
        )
        # No await from here on: throttle check, password check and count update are one step, so
        # concurrent requests cannot all pass the check before the first failure is counted.
        wait = throttle.retry_after(client)
        if wait:
            return throttled(request, client, wait)
        if not isinstance(password, str) or not site.auth.check_password(password):
            return wrong_password(request, client)
        return logged_in(client)

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    return [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
