"""Alpaca's historical stock bars (market data v2 REST), faked: ``GET /v2/stocks/bars`` and
``GET /v2/stocks/{symbol}/bars``, served by :class:`~tests.fakes.alpaca.server.FakeAlpaca`'s HTTP server
(point ``StockHistoricalDataClient(url_override=fake.rest_url)`` at it).

Query parameters as alpaca-py sends them: ``symbols`` (comma list; the path symbol for the single-symbol
route), ``timeframe`` (``{1-59}Min``, ``{1-23}Hour``, ``1Day``, ``1Week``, ``{1,2,3,4,6,12}Month``; the
short forms T/H/D/W/M too), ``start``, ``end`` (RFC 3339 or a date; both inclusive), ``limit`` (1..10000,
default 1000), ``page_token``, ``feed`` (iex|sip|otc|boats), ``adjustment`` (raw|split|dividend|all),
``sort`` (asc|desc), ``asof``, ``currency``.

Bars are deterministic: each (symbol, New York date) seeds its own generator, so a day's minute bars are
the same whatever range or page they are asked in; coarser timeframes aggregate those minutes (regular
session 09:30-16:00 New York, Monday to Friday; no holidays). A day bar is stamped at midnight New
York as Alpaca's are. Multi-symbol responses are ordered by symbol, then time, and a page holds at most
``limit`` bars over all symbols (``max_page`` can make pages smaller to test paging); the response
is ``{"bars": {SYM: [{"t","o","h","l","c","v","n","vw"}]}, "next_page_token": str|null}`` (the
single-symbol route: ``{"bars": [...], "symbol": SYM, "next_page_token": ...}``).

Errors in Alpaca's shape ``{"code": int, "message": str}``: 422 (42210000) for an invalid parameter,
403 (40310000) "subscription does not permit querying recent SIP data" for ``feed=sip`` ending within the
last 15 minutes, and 429 (42910000) when :attr:`HistoricalBars.rate_limit` requests have been served
(a test control; ``None`` = unlimited).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import random
import re
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")
UTC = dt.UTC
MAX_LIMIT = 10_000
_TIMEFRAME_RE = re.compile(r"^(\d+)(Min|T|Hour|H|Day|D|Week|W|Month|M)$")
_UNIT_LIMITS = {"Min": 59, "Hour": 23, "Day": 1, "Week": 1, "Month": 12}
_UNITS = {"T": "Min", "H": "Hour", "D": "Day", "W": "Week", "M": "Month"}
_SESSION_OPEN = dt.time(9, 30)
_SESSION_MINUTES = 390


class HistoricalError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _bad(message: str) -> HistoricalError:
    return HistoricalError(422, 42210000, message)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(name: str, text: str) -> dt.datetime:
    try:
        if len(text) == 10:
            return dt.datetime.combine(dt.date.fromisoformat(text), dt.time(0), UTC)
        moment = dt.datetime.fromisoformat(text.replace(" ", "+") if text.count(" ") == 1 else text)
    except ValueError:
        raise _bad(f"invalid {name}: {text!r} is not an RFC-3339 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _timeframe(text: str) -> tuple[int, str]:
    match = _TIMEFRAME_RE.match(text or "")
    if not match:
        raise _bad(f"invalid timeframe: {text!r}")
    amount, unit = int(match.group(1)), _UNITS.get(match.group(2), match.group(2))
    if not 1 <= amount <= _UNIT_LIMITS[unit] or (unit == "Month" and amount not in (1, 2, 3, 4, 6, 12)):
        raise _bad(f"invalid timeframe: {text!r}")
    return amount, unit


def _minutes(symbol: str, day: dt.date) -> list[dict[str, Any]]:
    """The regular session's minute bars of ``symbol`` on ``day`` (New York), the same on every call."""
    if day.weekday() >= 5:
        return []
    seed = int.from_bytes(hashlib.sha256(f"{symbol}:{day.isoformat()}".encode()).digest()[:8], "big")
    rng = random.Random(seed)
    base = 20 + int.from_bytes(hashlib.sha256(symbol.encode()).digest()[:2], "big") % 480
    price = round(base * (1 + rng.uniform(-0.05, 0.05)), 2)
    start = dt.datetime.combine(day, _SESSION_OPEN, NEW_YORK).astimezone(UTC)
    out = []
    for i in range(_SESSION_MINUTES):
        open_ = price
        close = round(max(0.01, open_ * (1 + rng.uniform(-0.0015, 0.0015))), 2)
        high = round(max(open_, close) * (1 + rng.uniform(0, 0.0008)), 2)
        low = round(min(open_, close) * (1 - rng.uniform(0, 0.0008)), 2)
        volume = rng.randint(100, 20_000)
        trades = max(1, volume // rng.randint(50, 200))
        vwap = round((high + low + close) / 3, 4)
        out.append(
            {
                "t": start + dt.timedelta(minutes=i),
                "o": open_,
                "h": high,
                "l": low,
                "c": close,
                "v": volume,
                "n": trades,
                "vw": vwap,
            }
        )
        price = close
    return out


def _aggregate(group: list[dict[str, Any]], stamp: dt.datetime) -> dict[str, Any]:
    volume = sum(b["v"] for b in group)
    vwap = round(sum(b["vw"] * b["v"] for b in group) / volume, 4) if volume else group[-1]["c"]
    return {
        "t": stamp,
        "o": group[0]["o"],
        "h": max(b["h"] for b in group),
        "l": min(b["l"] for b in group),
        "c": group[-1]["c"],
        "v": volume,
        "n": sum(b["n"] for b in group),
        "vw": vwap,
    }


def bars_for_day(symbol: str, day: dt.date, amount: int, unit: str) -> list[dict[str, Any]]:
    """Bars of one New York day in a timeframe (Min/Hour aggregate the minutes; Day is one bar)."""
    minutes = _minutes(symbol, day)
    if not minutes:
        return []
    if unit == "Day":
        return [_aggregate(minutes, dt.datetime.combine(day, dt.time(0), NEW_YORK).astimezone(UTC))]
    width = amount if unit == "Min" else amount * 60
    buckets: dict[dt.datetime, list[dict[str, Any]]] = {}
    midnight = dt.datetime.combine(day, dt.time(0), NEW_YORK).astimezone(UTC)
    for bar in minutes:
        offset = int((bar["t"] - midnight).total_seconds() // 60) // width * width
        buckets.setdefault(midnight + dt.timedelta(minutes=offset), []).append(bar)
    return [_aggregate(group, stamp) for stamp, group in sorted(buckets.items())]


class HistoricalBars:
    """State and routing of the historical endpoint (lives on the fake's event loop)."""

    def __init__(self, now: Callable[[], dt.datetime] = lambda: dt.datetime.now(UTC)) -> None:
        self.now = now
        self.max_page = MAX_LIMIT  # a page never holds more than this (tests make it small to force paging)
        self.rate_limit: int | None = None  # after this many bar requests, 429 (None: never)
        self.served = 0  # bar requests answered (200)
        self.queries: list[dict[str, str]] = []  # the query of every bar request, as received

    def handles(self, path: str) -> bool:
        return path.startswith("/v2/stocks/") and path.endswith("/bars")

    def route(self, method: str, path: str, query: dict[str, str]) -> tuple[int, Any]:
        if method != "GET":
            raise HistoricalError(405, 40510000, "method not allowed")
        self.queries.append(dict(query))
        if self.rate_limit is not None and len(self.queries) > self.rate_limit:
            raise HistoricalError(429, 42910000, "too many requests")
        if path == "/v2/stocks/bars":
            raw = query.get("symbols", "")
            if not raw:
                raise _bad("missing symbols")
            symbols = raw.split(",")
            single = None
        else:
            single = path.removeprefix("/v2/stocks/").removesuffix("/bars")
            symbols = [single]
        for symbol in symbols:
            if not re.match(r"^[A-Z][A-Z0-9.]{0,15}$", symbol):
                raise _bad(f"invalid symbol: {symbol!r}")
        body = self._bars(sorted(set(symbols)), query)
        self.served += 1
        if single is not None:
            return 200, {
                "bars": body["bars"].get(single, []),
                "symbol": single,
                "next_page_token": body["next_page_token"],
            }
        return 200, body

    def _bars(self, symbols: list[str], query: dict[str, str]) -> dict[str, Any]:
        amount, unit = _timeframe(query.get("timeframe", ""))
        if unit in ("Week", "Month"):
            raise _bad("this fake serves Min, Hour and Day bars only")
        now = self.now()
        start = (
            _parse_time("start", query["start"])
            if query.get("start")
            else dt.datetime.combine(now.astimezone(NEW_YORK).date(), dt.time(0), NEW_YORK)
        )
        end = _parse_time("end", query["end"]) if query.get("end") else now
        if end < start:
            raise _bad("end should not be before start")
        feed = query.get("feed", "sip")
        if feed not in ("iex", "sip", "otc", "boats", "delayed_sip"):
            raise _bad(f"invalid feed: {feed!r}")
        if feed == "sip" and end > now - dt.timedelta(minutes=15):
            raise HistoricalError(403, 40310000, "subscription does not permit querying recent SIP data")
        if query.get("adjustment", "raw") not in ("raw", "split", "dividend", "all"):
            raise _bad(f"invalid adjustment: {query['adjustment']!r}")
        sort = query.get("sort", "asc")
        if sort not in ("asc", "desc"):
            raise _bad(f"invalid sort: {sort!r}")
        try:
            limit = int(query.get("limit", "1000"))
        except ValueError:
            raise _bad(f"invalid limit: {query['limit']!r}") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise _bad(f"invalid limit: must be between 1 and {MAX_LIMIT}")
        limit = min(limit, self.max_page)
        after: tuple[str, str] | None = None
        if query.get("page_token"):
            try:
                symbol_, stamp = base64.urlsafe_b64decode(query["page_token"]).decode().split("|")
            except (ValueError, UnicodeDecodeError):
                raise _bad("invalid page_token") from None
            after = (symbol_, stamp)
        out: dict[str, list[dict[str, Any]]] = {}
        count = 0
        next_token: str | None = None
        first_day = start.astimezone(NEW_YORK).date()
        last_day = end.astimezone(NEW_YORK).date()
        for symbol in symbols:
            if after is not None and symbol < after[0]:
                continue
            days = [first_day + dt.timedelta(days=i) for i in range((last_day - first_day).days + 1)]
            if sort == "desc":
                days.reverse()
            for day in days:
                bars = [b for b in bars_for_day(symbol, day, amount, unit) if start <= b["t"] <= end]
                if sort == "desc":
                    bars.reverse()
                for bar in bars:
                    stamp = _iso(bar["t"])
                    if (
                        after is not None
                        and symbol == after[0]
                        and ((stamp <= after[1]) if sort == "asc" else (stamp >= after[1]))
                    ):
                        continue  # up to and including the last bar of the previous page
                    if count == limit:
                        last_symbol, last_bar = next(reversed(out.items()))
                        next_token = base64.urlsafe_b64encode(f"{last_symbol}|{last_bar[-1]['t']}".encode()).decode()
                        return {"bars": out, "next_page_token": next_token}
                    out.setdefault(symbol, []).append({**bar, "t": stamp})
                    count += 1
        return {"bars": out, "next_page_token": None}
