"""A strategy's page: ``/strategy/{strategy_id}`` and ``/api/strategy/{strategy_id}`` (404 for what is
not a strategy id, or a strategy the desk does not know), and its backtest report
``/strategy/{strategy_id}/backtest`` when one was written to the reports folder."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from services.dashboard.pages.site import Site, strategy_id_param

#: The report's own scripts are inline (it is a self-contained file): allowed for this response only,
#: in a sandbox (an opaque origin: no cookies, no same-origin requests to the dashboard).
REPORT_CSP = (
    "sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def routes(site: Site) -> list[BaseRoute]:
    async def strategy_page(request: Request) -> Response:
        strategy_id = strategy_id_param(request)
        if strategy_id is None:
            return site.not_found(request, "That is not a strategy name.")
        data = await site.reader.strategy(strategy_id)
        if data is None:
            return site.not_found(request, f"The desk has no strategy called {strategy_id!r}.")
        member = site.member_of(request)
        data["report"] = site.report_of(strategy_id) is not None
        data["can_control"] = bool(member and member.member == data["member_id"])
        return site.page("strategy.html", request, data)

    async def strategy_json(request: Request) -> Response:
        strategy_id = strategy_id_param(request)
        data = await site.reader.strategy(strategy_id) if strategy_id else None
        if data is None:
            return JSONResponse({"error": "no such strategy"}, status_code=404)
        return JSONResponse(data)

    async def backtest_report(request: Request) -> Response:
        strategy_id = strategy_id_param(request)
        path = site.report_of(strategy_id) if strategy_id else None
        if path is None:
            return site.not_found(request, "No backtest report for that strategy.")
        return FileResponse(path, media_type="text/html", headers={"content-security-policy": REPORT_CSP})

    return [
        Route("/strategy/{strategy_id}", strategy_page),
        Route("/strategy/{strategy_id}/backtest", backtest_report),
        Route("/api/strategy/{strategy_id}", strategy_json),
    ]
