"""A member's page: ``/members/{member}`` and ``/api/members/{member}`` (404 for a member with no
strategy on the desk). Their strategies' logs are shown to the member themself (read over their own
connection, as the orchestrator allows) and to the operator only."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from desk.bus.logging import get_logger
from services.dashboard.members import MemberRefused
from services.dashboard.pages.site import Site, member_param
from services.dashboard.reader import Unavailable

log = get_logger("dashboard")
MEMBER_LOG_LINES = 30


async def _logs(site: Site, request: Request, data: dict[str, Any]) -> dict[str, list[str]] | None:
    """The member's strategies' last log lines for the member themself or the operator; else None."""
    ids = [s["strategy_id"] for s in data["strategies"]]
    session = site.member_of(request)
    try:
        if site.session_of(request) is not None:
            found = await asyncio.gather(*(site.reader.logs(i, MEMBER_LOG_LINES) for i in ids))
        elif session is not None and session.member == data["member_id"]:
            found = await asyncio.gather(*(site.members.logs(session, i, MEMBER_LOG_LINES) for i in ids))
        else:
            return None
    except (Unavailable, MemberRefused) as exc:
        data["errors"].append(f"logs: {exc}")
        return {}
    return dict(zip(ids, found, strict=True))


def routes(site: Site) -> list[BaseRoute]:
    async def member_page(request: Request) -> Response:
        member = member_param(request)
        data = await site.reader.member(member) if member else None
        if data is None:
            return site.not_found(request, "No member of that name has a strategy on the desk.")
        logs = await _logs(site, request, data)
        data["show_logs"] = logs is not None
        data["logs"] = logs or {}
        session = site.member_of(request)
        data["can_control"] = bool(session and session.member == data["member_id"])
        return site.page("member.html", request, data)

    async def member_json(request: Request) -> Response:
        member = member_param(request)
        data = await site.reader.member(member) if member else None
        if data is None:
            return JSONResponse({"error": "no such member"}, status_code=404)
        return JSONResponse(data)

    return [Route("/members/{member}", member_page), Route("/api/members/{member}", member_json)]
