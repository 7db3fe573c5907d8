"""What every page shares: the reader, the live feed, the operator auth, the templates."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from desk.bus import subjects
from desk.specs import MEMBER_ID_RE
from services.dashboard.auth import OperatorAuth
from services.dashboard.live import LiveFeed
from services.dashboard.members import MemberSession, MemberSessions
from services.dashboard.reader import DeskReader

SESSION_COOKIE = "desk_operator"
MEMBER_COOKIE = "desk_member"


@dataclass(frozen=True)
class Site:
    """The dashboard's shared parts; pages render through :meth:`page` (Jinja2, autoescape on)."""

    reader: DeskReader
    live: LiveFeed
    auth: OperatorAuth
    templates: Jinja2Templates
    members: MemberSessions
    reports_dir: Path | None = None  # backtest reports: <reports_dir>/<strategy_id>.html

    def report_of(self, strategy_id: str) -> Path | None:
        """The backtest report of ``strategy_id`` (a strategy id: no path tricks), if there is one."""
        if self.reports_dir is None or not subjects.STRATEGY_ID_RE.match(strategy_id):
            return None
        path = self.reports_dir / f"{strategy_id}.html"
        return path if path.is_file() else None

    def session_of(self, request: Request) -> str | None:
        """The operator session of ``request``'s cookie, if it is a valid one."""
        token = request.cookies.get(SESSION_COOKIE)
        return token if self.auth.verify_session(token, time.time_ns()) else None

    def member_of(self, request: Request) -> MemberSession | None:
        """The logged-in member of ``request``'s cookie (a live session with an open connection)."""
        return self.members.session(request.cookies.get(MEMBER_COOKIE), time.time_ns())

    def operator_context(self, request: Request) -> dict[str, Any]:
        session = self.session_of(request)
        member = None if session else self.member_of(request)
        csrf = ""
        if session:
            csrf = self.auth.csrf_token(session)
        elif member:
            csrf = self.members.csrf_token(request.cookies.get(MEMBER_COOKIE, ""))
        return {
            "operator_enabled": self.auth.enabled,
            "operator": session is not None,
            "member_login": self.members.enabled,
            "member": member.member if member else "",
            "csrf_token": csrf,
        }

    def not_found(self, request: Request, message: str) -> Response:
        return self.page("error.html", request, {"message": message}, status=404)

    def page(self, name: str, request: Request, data: dict[str, Any], status: int = 200) -> Response:
        return self.templates.TemplateResponse(
            request, name, {"data": data, **self.operator_context(request)}, status_code=status
        )


def strategy_id_param(request: Request) -> str | None:
    """The ``strategy_id`` path parameter when it is a strategy id, else None."""
    strategy_id = str(request.path_params["strategy_id"])
    return strategy_id if subjects.STRATEGY_ID_RE.match(strategy_id) else None


def member_param(request: Request) -> str | None:
    """The ``member`` path parameter when it is a member name, else None."""
    member = str(request.path_params["member"])
    return member if MEMBER_ID_RE.match(member) else None
