"""A strategy's page: ``/strategy/{strategy_id}`` and ``/api/strategy/{strategy_id}`` (404 for what is
not a strategy id)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from services.dashboard.pages.site import Site, strategy_id_param


def routes(site: Site) -> list[BaseRoute]:
    async def strategy_page(request: Request) -> Response:
        strategy_id = strategy_id_param(request)
        if strategy_id is None:
            return site.page("error.html", request, {"message": "not a strategy id"}, status=404)
        return site.page("strategy.html", request, await site.reader.strategy(strategy_id))

    async def strategy_json(request: Request) -> Response:
        strategy_id = strategy_id_param(request)
        if strategy_id is None:
            return JSONResponse({"error": "not a strategy id"}, status_code=404)
        return JSONResponse(await site.reader.strategy(strategy_id))

    return [Route("/strategy/{strategy_id}", strategy_page), Route("/api/strategy/{strategy_id}", strategy_json)]
