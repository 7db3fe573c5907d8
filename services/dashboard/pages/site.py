"""What every page shares: the reader, the live feed, the operator auth, the templates."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from desk.bus import subjects
from services.dashboard.auth import OperatorAuth
from services.dashboard.live import LiveFeed
from services.dashboard.reader import DeskReader

SESSION_COOKIE = "desk_operator"


@dataclass(frozen=True)
class Site:
    """The dashboard's shared parts; pages render through :meth:`page` (Jinja2, autoescape on)."""

    reader: DeskReader
    live: LiveFeed
    auth: OperatorAuth
    templates: Jinja2Templates

    def session_of(self, request: Request) -> str | None:
        """The operator session of ``request``'s cookie, if it is a valid one."""
        token = request.cookies.get(SESSION_COOKIE)
        return token if self.auth.verify_session(token, time.time_ns()) else None

    def operator_context(self, request: Request) -> dict[str, Any]:
        session = self.session_of(request)
        return {
            "operator_enabled": self.auth.enabled,
            "operator": session is not None,
            "csrf_token": self.auth.csrf_token(session) if session else "",
        }

    def page(self, name: str, request: Request, data: dict[str, Any], status: int = 200) -> Response:
        return self.templates.TemplateResponse(
            request, name, {"data": data, **self.operator_context(request)}, status_code=status
        )


def strategy_id_param(request: Request) -> str | None:
    """The ``strategy_id`` path parameter when it is a strategy id, else None."""
    strategy_id = str(request.path_params["strategy_id"])
    return strategy_id if subjects.STRATEGY_ID_RE.match(strategy_id) else None
