"""``desk watch``, ``desk streams``, ``desk services``: look inside a running desk without the Go CLI.

* ``desk watch [SUBJECT ...]`` — live traffic (``nats sub``), each message decoded by its ``Desk-Type``
  header (:mod:`desk.bus.codec`'s registry) and printed as compact JSON; filters by type and strategy.
  A message without the header, with a type the desk does not know or with a body that does not
  parse is shown as ``undecoded`` with its size (``--raw``: and its bytes, base64), never a crash.
* ``desk streams`` — every JetStream stream, KV bucket and object store (``nats stream ls``,
  ``nats kv ls``, ``nats object ls``).
* ``desk services`` — the NATS micro services answering ``$SRV.INFO`` / ``$SRV.STATS``
  (``nats micro ls`` and ``nats micro stats``).

They connect as every ``desk`` command does (``--nats-url``, ``--credentials``, NATS_USER/NATS_PASSWORD)
and print ``--json`` by the CLI's rule (:mod:`desk.cli.render`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import nats
import nats.errors
import nats.js.errors
import typer
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from desk.bus import codec
from desk.bus.errors import DeskError
from desk.cli.render import console, err_console, json_ready, table

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.api import StreamInfo

#: What ``--type`` accepts to show only the messages that could not be decoded.
UNDECODED = "undecoded"
#: The server's page size of ``$JS.API.STREAM.LIST``; a shorter page is the last.
STREAM_PAGE = 256
#: The stream-name prefixes of KV buckets and object stores.
KV_PREFIX, OBJ_PREFIX = "KV_", "OBJ_"


def say(text: str) -> None:
    """A line on stderr, as written (no markup, not wrapped)."""
    err_console.print(text, highlight=False, markup=False, soft_wrap=True)


def _fail(message: str, code: int = 1) -> NoReturn:
    from rich.markup import escape

    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# ------------------------------------------------------------------------------------ connecting


@dataclass
class Session:
    """A connection and every error nats-py reported on it (permission violations arrive there)."""

    nc: Client
    errors: list[Exception]
    closed: asyncio.Event
    #: set on the first permission violation (the server may report one after a flush has returned)
    violated: asyncio.Event

    def denied(self) -> list[str]:
        """The server's permission violations so far, as it wrote them."""
        return [str(e).removeprefix("nats: ") for e in self.errors if "permissions violation" in str(e).lower()]

    def check_permitted(self, what: str) -> None:
        denied = self.denied()
        if denied:
            raise DeskError("NOT_PERMITTED", f"the NATS user may not {what}: {'; '.join(dict.fromkeys(denied))}")


async def _connect() -> Session:
    """Connect as the other ``desk`` commands do; a DeskError a person can act on when that fails."""
    from desk.cli import main as cli  # the app's options (imported late: main imports this module)

    seen: list[Exception] = []
    closed, violated = asyncio.Event(), asyncio.Event()

    async def on_closed() -> None:
        closed.set()

    async def on_error(exc: Exception) -> None:
        if "permissions violation" in str(exc).lower():
            violated.set()

    nc = await cli.cli_connection(errors=seen, error_cb=on_error, closed_cb=on_closed)
    return Session(nc, seen, closed, violated)


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except DeskError as err:
        _fail(f"{err.code}: {err.message}")
    except KeyboardInterrupt:  # Ctrl-C before the command was under way (connecting): no traceback
        raise typer.Exit(130) from None


def _url() -> str:
    from desk.cli import main as cli

    return cli.opts.nats_url


def _request_timeout() -> float:
    from desk.cli import main as cli

    return cli.opts.timeout


def _flush_timeout() -> int:
    """nats-py's flush takes whole seconds."""
    return max(1, math.ceil(_request_timeout()))


# ----------------------------------------------------------------------------------------- watch


@dataclass
class Decoded:
    """One message as ``desk watch`` understood it: its type and message, or why it is undecoded."""

    type_name: str | None
    message: Message | None
    reason: str = ""
    by_subject: bool = False


def decode_message(subject: str, data: bytes, headers: dict[str, str] | None, by_subject: bool = False) -> Decoded:
    """Decode ``data`` by its ``Desk-Type`` header (or, with ``by_subject`` and no header, by the
    subject's type, as ``desk decode`` does); never raises: what cannot be decoded says why."""
    sent = (headers or {}).get(codec.DESK_TYPE, "")
    guessed = False
    if sent:
        message_type = codec.MESSAGE_TYPES.get(sent)
        if message_type is None:
            return Decoded(None, None, f"unknown type {sent[:80]!r}")
    elif by_subject and (mapped := codec.type_for_subject(subject)) is not None:
        message_type, guessed = mapped, True
    else:
        return Decoded(None, None, "no Desk-Type header")
    try:
        message = codec.decode(data, message_type, headers)
    except DeskError as err:
        return Decoded(None, None, f"{err.code}: {err.message}"[:200])
    except Exception as exc:  # noqa: BLE001 - whatever protobuf makes of garbage, the watch goes on
        return Decoded(None, None, f"not a valid {codec.type_name(message_type)}: {exc!r}"[:200])
    return Decoded(codec.type_name(message_type), message, by_subject=guessed)


def strategy_of(message: Message) -> str:
    """The message's ``strategy_id``, or that of its first nested message that has one (a
    RoutedOrder's request...); "" when none has."""
    fields = message.DESCRIPTOR.fields_by_name
    if "strategy_id" in fields and fields["strategy_id"].type == FieldDescriptor.TYPE_STRING:
        own = str(message.strategy_id)  # type: ignore[attr-defined]
        if own:
            return own
    for f in message.DESCRIPTOR.fields:
        if f.type == FieldDescriptor.TYPE_MESSAGE and not f.is_repeated and message.HasField(f.name):
            found = strategy_of(getattr(message, f.name))
            if found:
                return found
    return ""


def _pruned(value: Any) -> Any:
    """``value`` less its empty parts (``""``, 0, False, None, [], {}), for a readable line."""
    if isinstance(value, dict):
        out = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in ("", 0, False, None, [], {})}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def _printable(text: str) -> str:
    """``text`` safe for a terminal: a subject may hold control characters (a hostile strategy's
    escape sequences), shown escaped."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _short(type_name: str) -> str:
    return type_name.removeprefix("desk.v1.")


def _full_type(name: str) -> str:
    if name.lower() == UNDECODED:
        return UNDECODED
    full = name if "." in name else f"desk.v1.{name}"
    if full not in codec.MESSAGE_TYPES:
        known = ", ".join(sorted(_short(n) for n in codec.MESSAGE_TYPES))
        _fail(f"--type {name!r} is not a desk message type; known: {known}, or {UNDECODED}", 2)
    return full


def _check_subject(subject: str) -> None:
    tokens = subject.split(".")
    if (
        not subject
        or any(c.isspace() for c in subject)
        or "" in tokens
        or ">" in tokens[:-1]
        or any(("*" in t or ">" in t) and len(t) > 1 for t in tokens)
    ):
        _fail(f"{subject!r} is not a NATS subject (tokens separated by dots; * one token, > the rest, last)", 2)


@dataclass
class WatchStats:
    shown: int = 0
    undecoded: int = 0
    filtered: int = 0
    slow: int = 0

    def summary(self) -> str:
        return (
            f"{self.shown} message{'s' if self.shown != 1 else ''} shown ({self.undecoded} undecoded), "
            f"{self.filtered} filtered out" + (f"; {self.slow} slow-consumer warnings" if self.slow else "")
        )


@dataclass
class Watch:
    """What to show and how (the options of ``desk watch``)."""

    types: set[str] = field(default_factory=set)
    strategies: set[str] = field(default_factory=set)
    raw: bool = False
    as_json: bool = False
    headers: bool = False
    by_subject: bool = False
    stats: WatchStats = field(default_factory=WatchStats)

    def line(self, msg: Msg, received_ns: int) -> str | None:
        """The line to print for ``msg``, or None when a filter leaves it out."""
        data = bytes(msg.data or b"")
        headers = dict(msg.headers or {})
        decoded = decode_message(msg.subject, data, headers, self.by_subject)
        if self.types and (decoded.type_name or UNDECODED) not in self.types:
            return None
        if self.strategies and (decoded.message is None or strategy_of(decoded.message) not in self.strategies):
            return None
        if decoded.message is None:
            self.stats.undecoded += 1
        if self.as_json:
            return json.dumps(
                {
                    "received_ns": received_ns,
                    "subject": msg.subject,
                    "reply": msg.reply or "",
                    "type": decoded.type_name,
                    "by_subject": decoded.by_subject,
                    "size": len(data),
                    "headers": headers,
                    "message": json_ready(decoded.message) if decoded.message is not None else None,
                    "undecoded": decoded.reason or None,
                    "data_base64": base64.b64encode(data).decode() if self.raw and decoded.message is None else None,
                },
                separators=(",", ":"),
            )
        moment = datetime.fromtimestamp(received_ns / 1e9, tz=UTC).strftime("%H:%M:%S.%f")[:-3]
        parts = [moment, _printable(msg.subject)]
        if msg.reply and self.headers:
            parts.append(f"(reply {_printable(msg.reply)})")
        if decoded.message is not None and decoded.type_name is not None:
            parts.append(_short(decoded.type_name) + ("?" if decoded.by_subject else ""))
        else:
            parts.append(f"{UNDECODED} {len(data)} bytes ({decoded.reason})")
        if self.headers:
            parts.append("headers=" + json.dumps(headers, separators=(",", ":")))
        if decoded.message is not None:
            parts.append(json.dumps(_pruned(json_ready(decoded.message)), separators=(",", ":")))
        elif self.raw:
            parts.append(base64.b64encode(data).decode() or '""')
        return " ".join(parts)


async def _watch(subjects: list[str], watch: Watch, count: int, timeout: float | None) -> int:
    session = await _connect()
    nc = session.nc
    done = asyncio.Event()
    broken: list[bool] = []

    async def on_message(msg: Msg) -> None:
        if done.is_set():
            return
        try:
            line = watch.line(msg, time.time_ns())
        except Exception as exc:  # noqa: BLE001 - a bug here must not end the watch on one odd message
            line = f"{msg.subject} {UNDECODED} {len(msg.data or b'')} bytes (cannot show: {exc!r})"
        if line is None:
            watch.stats.filtered += 1
            return
        watch.stats.shown += 1
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except BrokenPipeError:  # desk watch | head: the reader has gone
            broken.append(True)
            done.set()
            return
        if count and watch.stats.shown >= count:
            done.set()

    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    try:
        for subject in subjects:
            await nc.subscribe(subject, cb=on_message)
        await nc.flush(timeout=_flush_timeout())
        session.check_permitted(f"subscribe to {', '.join(subjects)}")
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not on this platform/thread
                loop.add_signal_handler(sig, done.set)
                handled.append(sig)
        say(f"watching {' '.join(subjects)} on {_url()} (Ctrl-C ends)")
        closed = asyncio.create_task(session.closed.wait())
        ended = asyncio.create_task(done.wait())
        refused = asyncio.create_task(session.violated.wait())
        finished, _ = await asyncio.wait({closed, ended, refused}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for task in (closed, ended, refused):
            task.cancel()
        session.check_permitted(f"subscribe to {', '.join(subjects)}")
        if broken:
            with contextlib.suppress(OSError):  # Python flushes stdout at exit: let that go nowhere
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        if closed in finished and not done.is_set():
            say(watch.stats.summary())
            raise DeskError("CONNECTION_LOST", f"the connection to NATS at {_url()} closed")
        code = 0
        if not finished and count and watch.stats.shown < count:
            say(f"timed out after {timeout:g}s with {watch.stats.shown} of {count} messages")
            code = 1
        say(watch.stats.summary())
        return code
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        if not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()


def watch(
    subjects: Annotated[
        list[str] | None,
        typer.Argument(help="Subjects to watch (wildcards * and >); default desk.>", show_default=False),
    ] = None,
    types: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            "-t",
            help="Only messages of this type (OrderRequest, desk.v1.Heartbeat, or 'undecoded'); repeat for several.",
            show_default=False,
        ),
    ] = None,
    strategies: Annotated[
        list[str] | None,
        typer.Option(
            "--strategy",
            "-s",
            help="Only messages whose strategy_id (or a nested message's) is this; repeat for several.",
            show_default=False,
        ),
    ] = None,
    count: Annotated[
        int, typer.Option("--count", "-n", min=0, help="Stop after this many messages (0: no limit).")
    ] = 0,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            min=0.0,
            help="Stop after this many seconds in all (default: never); with --count, exit 1 if fewer messages came.",
            show_default=False,
        ),
    ] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Show undecoded bodies too, base64.")] = False,
    headers: Annotated[bool, typer.Option("--headers", help="Show each message's headers.")] = False,
    by_subject: Annotated[
        bool,
        typer.Option(
            "--by-subject",
            help="Decode messages without a Desk-Type header (KV values) by their "
            "subject's type, as `desk decode` does; shown as Type?.",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line (subject, type, headers, message...).")
    ] = False,
) -> None:
    """Show live bus traffic, decoded: time received (UTC), subject, type, the message as JSON.

    The type comes from the message's Desk-Type header.
    A message without one, of a type the desk does not know, or whose body does not parse is shown
    as 'undecoded' with its size (--raw: and its bytes).
    JetStream subjects (desk.exec.>, $KV.>) are watched as plain subscriptions, as `nats sub` does.
    Lines leave out empty fields; --json writes every field (the CLI's --json rule), one object a line
    with the keys received_ns, subject, reply, type, by_subject, size, headers, message, undecoded,
    data_base64.
    Ctrl-C ends; a summary goes to stderr.

    Example: desk watch 'desk.order.>' 'desk.exec.>' -s ma_crossover --count 10
    """
    chosen = list(subjects or ["desk.>"])
    for subject in chosen:
        _check_subject(subject)
    spec = Watch(
        types={_full_type(t) for t in types or []},
        strategies=set(strategies or []),
        raw=raw,
        as_json=as_json,
        headers=headers,
        by_subject=by_subject,
    )
    raise typer.Exit(_run(_watch(chosen, spec, count, timeout)))


# --------------------------------------------------------------------------------------- streams


def _storage(info: StreamInfo) -> str:
    storage = info.config.storage
    return str(getattr(storage, "value", storage) or "file")


def stream_row(info: StreamInfo) -> dict[str, Any]:
    c, s = info.config, info.state
    return {
        "name": c.name or "",
        "description": c.description or "",
        "subjects": list(c.subjects or []),
        "messages": s.messages,
        "bytes": s.bytes,
        "first_seq": s.first_seq,
        "last_seq": s.last_seq,
        "consumers": s.consumer_count,
        "replicas": c.num_replicas or 1,
        "storage": _storage(info),
        "retention": str(getattr(c.retention, "value", c.retention) or "limits"),
    }


def bucket_row(info: StreamInfo) -> dict[str, Any]:
    c, s = info.config, info.state
    return {
        "name": (c.name or "").removeprefix(KV_PREFIX),
        "description": c.description or "",
        "values": s.messages,
        "bytes": s.bytes,
        "history": c.max_msgs_per_subject or 1,
        "ttl_seconds": c.max_age or 0,
        "replicas": c.num_replicas or 1,
        "storage": _storage(info),
    }


def object_store_row(info: StreamInfo) -> dict[str, Any]:
    c, s = info.config, info.state
    return {
        "name": (c.name or "").removeprefix(OBJ_PREFIX),
        "description": c.description or "",
        "messages": s.messages,
        "bytes": s.bytes,
        "sealed": bool(c.sealed),
        "replicas": c.num_replicas or 1,
        "storage": _storage(info),
    }


async def _stream_infos() -> list[StreamInfo]:
    session = await _connect()
    try:
        js = session.nc.jetstream(timeout=_request_timeout())
        infos: list[StreamInfo] = []
        try:
            for _ in range(1000):  # bounded: 256 000 streams
                page = await js.streams_info(offset=len(infos))
                infos.extend(page)
                if len(page) < STREAM_PAGE:
                    break
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
            raise DeskError("NO_JETSTREAM", f"JetStream is not enabled on NATS at {_url()}") from None
        except (TimeoutError, nats.errors.TimeoutError):
            session.check_permitted("list JetStream streams")
            raise DeskError("TIMEOUT", f"JetStream at {_url()} did not answer within {_request_timeout():g}s") from None
        except nats.js.errors.APIError as exc:
            raise DeskError("JETSTREAM", f"JetStream refused to list streams: {exc}") from None
        return infos
    finally:
        await session.nc.close()


def _seconds(value: float) -> str:
    if not value:
        return "-"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if value >= size and value % size == 0:
            return f"{value / size:g}{unit}"
    return f"{value:g}s"


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} B"


def streams(as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False) -> None:
    """List JetStream's streams, KV buckets and object stores.

    What `nats stream ls`, `nats kv ls` and `nats object ls` show: for a stream its subjects,
    messages, bytes, first and last sequence, consumers, replicas and storage; for a bucket its values,
    bytes, history and TTL.
    --json: an object with the lists streams, buckets and object_stores, each sorted by name
    (ttl_seconds 0: no TTL).

    Example: desk streams --json | jq '.streams[] | {name, messages}'
    """
    infos = sorted(_run(_stream_infos()), key=lambda i: i.config.name or "")
    names = [(i.config.name or "") for i in infos]
    result = {
        "streams": [
            stream_row(i) for i, n in zip(infos, names, strict=True) if not n.startswith((KV_PREFIX, OBJ_PREFIX))
        ],
        "buckets": [bucket_row(i) for i, n in zip(infos, names, strict=True) if n.startswith(KV_PREFIX)],
        "object_stores": [object_store_row(i) for i, n in zip(infos, names, strict=True) if n.startswith(OBJ_PREFIX)],
    }
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    _stream_tables(result)


STREAM_COLUMNS = [
    "name",
    "subjects",
    "messages",
    "bytes",
    "first seq",
    "last seq",
    "consumers",
    "replicas",
    "storage",
    "retention",
]
BUCKET_COLUMNS = ["name", "values", "bytes", "history", "TTL", "replicas", "storage", "description"]
OBJECT_COLUMNS = ["name", "messages", "bytes", "sealed", "replicas", "storage", "description"]


def _stream_tables(result: dict[str, list[dict[str, Any]]]) -> None:
    """`desk streams` as tables: streams, KV buckets, and object stores when there are any."""
    streams_rows = (
        [
            r["name"],
            ", ".join(r["subjects"]),
            f"{r['messages']:,}",
            _bytes(r["bytes"]),
            r["first_seq"],
            r["last_seq"],
            r["consumers"],
            r["replicas"],
            r["storage"],
            r["retention"],
        ]
        for r in result["streams"]
    )
    table(
        "streams",
        STREAM_COLUMNS,
        streams_rows,
        numeric=["messages", "bytes", "first seq", "last seq", "consumers", "replicas"],
    )
    bucket_rows = (
        [
            r["name"],
            f"{r['values']:,}",
            _bytes(r["bytes"]),
            r["history"],
            _seconds(r["ttl_seconds"]),
            r["replicas"],
            r["storage"],
            r["description"],
        ]
        for r in result["buckets"]
    )
    table("KV buckets", BUCKET_COLUMNS, bucket_rows, numeric=["values", "bytes", "history", "replicas"])
    if result["object_stores"]:
        object_rows = (
            [
                r["name"],
                f"{r['messages']:,}",
                _bytes(r["bytes"]),
                "yes" if r["sealed"] else "no",
                r["replicas"],
                r["storage"],
                r["description"],
            ]
            for r in result["object_stores"]
        )
        table("object stores", OBJECT_COLUMNS, object_rows, numeric=["messages", "bytes", "replicas"])


# -------------------------------------------------------------------------------------- services


async def _gather(session: Session, subjects: list[str], wait: float) -> dict[str, list[Any]]:
    """Ask ``subjects`` at once and collect every reply (parsed JSON) that arrives within ``wait``
    seconds: micro services answer discovery requests one reply per instance, so there is no last one."""
    nc = session.nc
    replies: dict[str, list[Any]] = {s: [] for s in subjects}
    unreadable: list[int] = []
    subs = []
    for subject in subjects:
        inbox = nc.new_inbox()

        async def collect(msg: Msg, into: list[Any] = replies[subject]) -> None:
            if not msg.data and (msg.headers or {}).get("Status") == "503":
                return  # the server's "no responders": no service at all
            try:
                into.append(json.loads(msg.data))
            except ValueError:
                unreadable.append(len(msg.data or b""))

        subs.append(await nc.subscribe(inbox, cb=collect))
        await nc.publish(subject, b"", reply=inbox)
    await nc.flush(timeout=_flush_timeout())
    session.check_permitted(f"ask {' and '.join(subjects)}")
    with contextlib.suppress(TimeoutError):  # a collection window (see the docstring), not a synchronisation
        await asyncio.wait_for(session.violated.wait(), wait)
    session.check_permitted(f"ask {' and '.join(subjects)}")
    for sub in subs:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    if unreadable:
        say(f"warning: {len(unreadable)} replies were not JSON and are left out")
    return replies


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _counts(value: Any) -> dict[str, int]:
    return {str(k): _int(v) for k, v in value.items()} if isinstance(value, dict) else {}


def service_rows(infos: list[Any], stats: list[Any]) -> list[dict[str, Any]]:
    """One row per service instance (by id), from its INFO and STATS replies; replies that are not
    micro's objects are skipped (anyone allowed to may answer ``$SRV.*``)."""
    by_id: dict[str, dict[str, Any]] = {}
    for info in infos:
        if isinstance(info, dict) and _text(info.get("id")):
            by_id[info["id"]] = {"info": info, "stats": {}}
    for stat in stats:
        if isinstance(stat, dict) and _text(stat.get("id")):
            by_id.setdefault(stat["id"], {"info": stat, "stats": {}})["stats"] = stat
    rows = []
    for sid, both in by_id.items():
        info, stat = both["info"], both["stats"]
        endpoint_stats = {_text(e.get("name")): e for e in stat.get("endpoints") or [] if isinstance(e, dict)}
        endpoints: list[dict[str, Any]] = []
        for e in info.get("endpoints") or stat.get("endpoints") or []:
            if not isinstance(e, dict):
                continue
            name = _text(e.get("name"))
            s: dict[str, Any] = endpoint_stats.get(name) or {}
            data: dict[str, Any] = s["data"] if isinstance(s.get("data"), dict) else {}
            endpoints.append(
                {
                    "name": name,
                    "subject": _text(e.get("subject")),
                    "queue_group": _text(e.get("queue_group")),
                    "num_requests": _int(s.get("num_requests")),
                    "num_errors": _int(s.get("num_errors")),
                    "refused": _counts(data.get("errors")),
                    "dropped": _counts(data.get("dropped")),
                    "processing_time_ns": _int(s.get("processing_time")),
                    "average_processing_time_ns": _int(s.get("average_processing_time")),
                    "last_error": _text(s.get("last_error")),
                }
            )
        requests = sum(e["num_requests"] for e in endpoints)
        total_ns = sum(e["processing_time_ns"] for e in endpoints)
        rows.append(
            {
                "name": _text(info.get("name")),
                "id": sid,
                "version": _text(info.get("version")),
                "description": _text(info.get("description")),
                "metadata": {str(k): _text(v) for k, v in (info.get("metadata") or {}).items()}
                if isinstance(info.get("metadata"), dict)
                else {},
                "started": _text(stat.get("started")),
                "num_requests": requests,
                "num_errors": sum(e["num_errors"] for e in endpoints),
                "refused": sum(sum(e["refused"].values()) for e in endpoints),
                "dropped": sum(sum(e["dropped"].values()) for e in endpoints),
                "average_processing_time_ns": total_ns // requests if requests else 0,
                "endpoints": endpoints,
            }
        )
    return sorted(rows, key=lambda r: (r["name"], r["id"]))


async def _services(name: str, wait: float) -> list[dict[str, Any]]:
    session = await _connect()
    try:
        suffix = f".{name}" if name else ""
        replies = await _gather(session, [f"$SRV.INFO{suffix}", f"$SRV.STATS{suffix}"], wait)
        return service_rows(replies[f"$SRV.INFO{suffix}"], replies[f"$SRV.STATS{suffix}"])
    finally:
        await session.nc.close()


def _duration(ns: int) -> str:
    if not ns:
        return "-"
    if ns < 1_000_000:
        return f"{ns / 1000:.0f}µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f}ms"
    return f"{ns / 1e9:.2f}s"


def _iter_endpoints(rows: list[dict[str, Any]]) -> Iterator[list[Any]]:
    for r in rows:
        for e in r["endpoints"]:
            refused = ", ".join(
                f"{k} {v}"
                for k, v in sorted({**e["refused"], **{f"dropped {k}": v for k, v in e["dropped"].items()}}.items())
            )
            yield [
                r["name"],
                r["id"],
                e["name"],
                e["subject"],
                f"{e['num_requests']:,}",
                e["num_errors"],
                refused,
                _duration(e["average_processing_time_ns"]),
                e["last_error"],
            ]


def services(
    name: Annotated[str, typer.Argument(help="Only the services of this name.", show_default=False)] = "",
    wait: Annotated[
        float,
        typer.Option("--wait", min=0.05, max=60.0, help="Seconds to collect replies (every instance answers once)."),
    ] = 1.0,
    endpoints: Annotated[bool, typer.Option("--endpoints", "-e", help="Also a table of every endpoint.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """List the NATS micro services (every desk service is one), as `nats micro ls` and stats do.

    Every instance that answers $SRV.INFO and $SRV.STATS within --wait is a row: name, id, version,
    endpoints, requests, errors and average processing time.
    'errors' are micro's (a handler that raised); 'refused' are the desk's refusals (MALFORMED,
    UNKNOWN_SYMBOL...: per reason with --endpoints); 'dropped' the requests dropped unanswered.
    --json: a list of services sorted by name and id, each with its endpoints; times in ns.

    Example: desk services order_router --endpoints
    """
    rows: list[dict[str, Any]] = _run(_services(name, wait))
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    elif not rows:
        console.print(f"[dim]no micro service{' named ' + name if name else ''} answered within {wait:g}s[/dim]")
    else:
        table(
            "services",
            ["name", "id", "version", "endpoints", "requests", "errors", "refused", "dropped", "average"],
            (
                [
                    r["name"],
                    r["id"],
                    r["version"],
                    ", ".join(e["name"] for e in r["endpoints"]),
                    f"{r['num_requests']:,}",
                    r["num_errors"],
                    r["refused"],
                    r["dropped"],
                    _duration(r["average_processing_time_ns"]),
                ]
                for r in rows
            ),
            numeric=["requests", "errors", "refused", "dropped", "average"],
        )
        if endpoints:
            table(
                "endpoints",
                ["service", "id", "endpoint", "subject", "requests", "errors", "refused", "average", "last error"],
                _iter_endpoints(rows),
                numeric=["requests", "errors", "average"],
            )
    if name and not rows:
        raise typer.Exit(1)
