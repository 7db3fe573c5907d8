"""``/events``: the live feed as server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from services.dashboard.pages.site import Site

SSE_KEEPALIVE = 15.0


def routes(site: Site) -> list[BaseRoute]:
    async def events(request: Request) -> Response:
        # Subscribe before the response starts: once the page sees the stream open, it misses nothing.
        listener = site.live.listen()

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

    return [Route("/events", events)]
