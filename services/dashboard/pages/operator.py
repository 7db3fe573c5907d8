"""The operator's actions (POST, JSON answers): ``/operator/risk/{halt|resume}`` (the kill switch) and
``/operator/strategy/{strategy_id}/{start|stop}``. Each needs the operator enabled, a session, the same
origin and the session's CSRF token; a refusal is logged and answered with its status."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from desk.bus import subjects
from desk.bus.logging import get_logger
from services.dashboard.auth import same_origin
from services.dashboard.pages.login import DISABLED
from services.dashboard.pages.site import Site
from services.dashboard.reader import Unavailable

log = get_logger("dashboard")
Action = Callable[[Request, dict[str, str]], Awaitable[dict[str, Any]]]


async def _refusal(site: Site, request: Request) -> tuple[tuple[int, str] | None, dict[str, str]]:
    """Why ``request`` may not act (status, reason), or None and its form."""
    session = site.session_of(request)
    if not site.auth.enabled:
        return (403, DISABLED), {}
    if session is None:
        return (401, "operator login required"), {}
    if not same_origin(request.headers.get("origin"), request.headers.get("host")):
        return (403, "cross-site request refused"), {}
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    token = request.headers.get("x-csrf-token") or form.get("csrf_token")
    if not site.auth.verify_csrf(session, token):
        return (403, "missing or wrong CSRF token"), form
    return None, form


def operator_action(site: Site, act: Action, name: str) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint that runs ``act`` for a logged-in operator (``name``: what the log calls it)."""

    async def endpoint(request: Request) -> Response:
        client = request.client.host if request.client else ""
        refusal, form = await _refusal(site, request)
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


def routes(site: Site) -> list[BaseRoute]:
    async def do_halt(request: Request, form: dict[str, str]) -> dict[str, Any]:
        action = str(request.path_params["action"])
        if action not in ("halt", "resume"):
            raise ValueError(f"unknown action {action!r}: halt or resume")
        resume = action == "resume"
        target = strategy_target(form.get("strategy_id", ""))
        reason = form.get("reason", "")[:200] or "dashboard"
        ack = await site.reader.halt(target, resume, requested_by="dashboard operator", reason=reason)
        return {
            "message": ack.message,
            "global_halted": ack.global_halted,
            "halted_strategies": list(ack.halted_strategies),
        }

    async def do_control(request: Request, form: dict[str, str]) -> dict[str, Any]:
        action = str(request.path_params["action"])
        if action not in ("start", "stop"):
            raise ValueError(f"unknown action {action!r}: start or stop")
        target = strategy_target(str(request.path_params["strategy_id"]))
        if not target:
            raise ValueError("a strategy id is required")
        reply = await site.reader.control(action, target)
        states = [(s.strategy_id, s.state) for s in reply.strategies]
        return {"message": f"{action} {target}", "strategies": json.dumps(states)}

    return [
        Route("/operator/risk/{action:str}", operator_action(site, do_halt, "risk"), methods=["POST"]),
        Route(
            "/operator/strategy/{strategy_id}/{action:str}",
            operator_action(site, do_control, "strategy"),
            methods=["POST"],
        ),
    ]
