"""The leaderboard: ``/`` and ``/api/leaderboard``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from services.dashboard.pages.site import Site


def routes(site: Site) -> list[BaseRoute]:
    async def leaderboard_page(request: Request) -> Response:
        return site.page("leaderboard.html", request, await site.reader.leaderboard())

    async def leaderboard_json(request: Request) -> Response:
        return JSONResponse(await site.reader.leaderboard())

    return [Route("/", leaderboard_page), Route("/api/leaderboard", leaderboard_json)]
