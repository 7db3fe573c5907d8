"""The desk page (service health, the kill switch): ``/desk`` and ``/api/desk``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from services.dashboard.pages.site import Site


def routes(site: Site) -> list[BaseRoute]:
    async def desk_page(request: Request) -> Response:
        return site.page("desk.html", request, await site.reader.desk())

    async def desk_json(request: Request) -> Response:
        return JSONResponse(await site.reader.desk())

    return [Route("/desk", desk_page), Route("/api/desk", desk_json)]
