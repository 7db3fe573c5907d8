"""``desk leases``: who is active — the holders of the leases in ``DESK_LEASES`` (desk.bus.lease).

Active/standby services (``SERVICE_LEASE=true``: market data, each venue's gateway, the orchestrator)
hold one key each; order routers hold one ``router-p<i>`` per partition they answer and a
``router-live-<term>`` presence key. What a key holds is shown as the holder wrote it, never trusted:
a value that is not a holder is listed as such.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import nats.js.errors
import typer

from desk.bus import subjects
from desk.bus.errors import DeskError
from desk.bus.lease import Holder
from desk.cli.inspect_cmd import _connect, _request_timeout, _run, _url
from desk.cli.render import console, table


async def _leases() -> list[dict[str, Any]]:
    session = await _connect()
    try:
        js = session.nc.jetstream(timeout=_request_timeout())
        try:
            kv = await js.key_value(subjects.KV_LEASES)
        except nats.js.errors.BucketNotFoundError:
            return []
        except (TimeoutError, nats.errors.TimeoutError):
            session.check_permitted(f"read {subjects.KV_LEASES}")
            raise DeskError("TIMEOUT", f"JetStream at {_url()} did not answer within {_request_timeout():g}s") from None
        try:
            keys = sorted(await kv.keys())
        except nats.js.errors.NoKeysError:
            return []
        rows = []
        now = time.time_ns()
        for key in keys:
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                continue  # expired or released between the listing and the read
            holder = Holder.decode(entry.value)
            rows.append(_row(key, entry.revision or 0, holder, now))
        return rows
    finally:
        await session.nc.close()


def _row(key: str, revision: int, holder: Holder | None, now_ns: int) -> dict[str, Any]:
    if holder is None:
        return {"key": key, "revision": revision, "holder": None}
    return {
        "key": key,
        "revision": revision,
        "holder": {
            "service": holder.service,
            "instance": holder.instance,
            "host": holder.host,
            "pid": holder.pid,
            "since_ns": holder.since_ns,
        },
        "held_s": round(max(0, now_ns - holder.since_ns) / 1e9, 1),
    }


def leases(as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """Who is active: every lease in DESK_LEASES and its holder (service, instance, host, pid, held for).

    Keys: marketdata, gateway-<venue> and orchestrator for services run with SERVICE_LEASE=true;
    router-p<i> for the router partitions and router-live-<term> for each live router.
    --json: a list sorted by key, each {key, revision, holder: {service, instance, host, pid,
    since_ns} or null when the value is not a holder, held_s}.

    Example: desk leases --json | jq '.[] | select(.key == "gateway-sim") | .holder.instance'
    """
    rows: list[dict[str, Any]] = _run(_leases())
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    if not rows:
        console.print("[dim]no leases held (no service runs with SERVICE_LEASE=true and no router is up)[/dim]")
        return
    table(
        "leases",
        ["key", "service", "instance", "host", "pid", "held for", "revision"],
        [
            [r["key"], "(not a holder)", "", "", "", "", r["revision"]]
            if r["holder"] is None
            else [
                r["key"],
                r["holder"]["service"],
                r["holder"]["instance"],
                r["holder"]["host"],
                r["holder"]["pid"],
                f"{r['held_s']:g} s",
                r["revision"],
            ]
            for r in rows
        ],
    )
