"""The gateway's outbox: execution reports on their way to EXECUTIONS, in order, none lost.

Every report goes through one FIFO outbox: it is published to ``desk.exec.<strategy_id>`` with
``Nats-Msg-Id`` = execution id; a report whose publish fails stays in it, ahead of everything after
it, and is retried (same execution id, so JetStream deduplicates). Reports are published in *waves*
without awaiting each PubAck in turn (:func:`next_wave`): a wave holds at most one report per order,
so a later report of an order (FILL) is only sent once its earlier one (NEW) is stored, whatever
fails; and fills keep their outbox order.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation

import structlog
from nats.js import JetStreamContext
from nats.js.api import PubAck

from desk.bus import codec, subjects
from desk.bus.logging import get_logger
from desk.core.orders import Reports
from desk.v1 import executions_pb2

MSG_ID = "Nats-Msg-Id"
PUBLISH_TIMEOUT = 5.0
RETRY_PAUSE = 1.0
MAX_WAVE = 256  # reports published at once without awaiting a PubAck (publish_async allows 4,000)

log = get_logger("broker_gateway")  # the service's NAME (service.py imports this module)

#: One line per report; NEW at debug (the router already logged the order as accepted, and a log line
#: costs the gateway ~7 % of its time per order under load: docs/performance.md).
_EXEC_EVENTS = {
    executions_pb2.EXEC_TYPE_NEW: ("order.new", "debug"),
    executions_pb2.EXEC_TYPE_PARTIAL_FILL: ("order.partially_filled", "info"),
    executions_pb2.EXEC_TYPE_FILL: ("order.filled", "info"),
    executions_pb2.EXEC_TYPE_CANCELED: ("order.canceled", "info"),
    executions_pb2.EXEC_TYPE_EXPIRED: ("order.expired", "info"),
    executions_pb2.EXEC_TYPE_REJECTED: ("order.rejected", "warning"),
    executions_pb2.EXEC_TYPE_CANCEL_REJECTED: ("order.cancel_rejected", "warning"),
}


def _carries_fill(report: executions_pb2.ExecutionReport) -> bool:
    if report.exec_type in (executions_pb2.EXEC_TYPE_FILL, executions_pb2.EXEC_TYPE_PARTIAL_FILL):
        return True
    try:
        return Decimal(report.fill_qty or "0") != 0
    except InvalidOperation:
        return True  # unreadable: treated as a fill (kept in order)


def next_wave(
    outbox: Iterable[executions_pb2.ExecutionReport], limit: int = MAX_WAVE
) -> list[executions_pb2.ExecutionReport]:
    """The reports of ``outbox`` to publish together now, in outbox order.

    A wave holds at most one report per order (strategy id, order id): a report whose order already
    has one in the wave, or one held back, is held back too, so the reports of one order reach the
    stream in outbox order even if a publish fails (NEW before FILL). A fill is also held back once
    any fill is, so fills of different orders keep their outbox order (positions and realized P&L
    are booked in that order). Only reports without a fill (NEW, CANCELED, ...) of other orders may
    go ahead of held-back ones. The sim's batch ``NEW1 FILL1 NEW2 FILL2 ...`` goes out as two
    waves: every NEW, then every FILL.
    """
    wave: list[executions_pb2.ExecutionReport] = []
    taken: set[tuple[str, str]] = set()
    held: set[tuple[str, str]] = set()
    holding_fill = False
    for report in outbox:
        if len(wave) >= limit:
            break
        key = (report.strategy_id, report.order_id)
        fill = _carries_fill(report)
        if key in taken or key in held or (fill and holding_fill):
            held.add(key)
            holding_fill = holding_fill or fill
            continue
        wave.append(report)
        taken.add(key)
    return wave


class ExecutionOutbox:
    """The FIFO of reports owed to EXECUTIONS. ``js`` is set once the service is connected;
    ``counts`` (the service's counters) gets ``reports_published`` and ``publish_failures``."""

    def __init__(self, counts: collections.Counter[str], clock: Callable[[], int]) -> None:
        self.js: JetStreamContext | None = None
        self.counts = counts
        self._clock = clock
        self._reports: collections.deque[executions_pb2.ExecutionReport] = collections.deque()
        self._lock = asyncio.Lock()
        self._flushes: set[asyncio.Task[bool]] = set()

    def __len__(self) -> int:
        return len(self._reports)

    def extend(self, reports: Iterable[executions_pb2.ExecutionReport]) -> None:
        """Queue ``reports`` after everything already owed (published by the next :meth:`flush`)."""
        self._reports.extend(reports)

    def emit(self, reports: Reports) -> asyncio.Task[bool] | None:
        """A streaming broker's sink: queue the reports in order, publish them soon; the returned task
        is True once they are stored (a broker that must not act before they are awaits it)."""
        if not reports:
            return None
        self._reports.extend(reports)
        task = asyncio.create_task(self._flush_soon(), name="gateway.flush")
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)
        return task

    async def wait_for_emits(self, timeout: float = PUBLISH_TIMEOUT) -> None:
        """Let the publishes :meth:`emit` started finish (bounded), before the last flush at stop."""
        if self._flushes:
            await asyncio.wait(set(self._flushes), timeout=timeout)

    async def _flush_soon(self, attempts: int = 10) -> bool:
        """Publish what a streaming broker emitted; a failed publish is retried (same ids, deduplicated)."""
        for _ in range(attempts):
            if await self.flush():
                return True
            await asyncio.sleep(RETRY_PAUSE)  # a retry pause, not synchronisation
        log.error("execution.unpublished", count=len(self._reports))  # the next order's flush retries them
        return False

    async def flush(self) -> bool:
        """Publish the whole outbox, wave by wave (:func:`next_wave`); False if a publish failed.

        The reports of a wave are sent in order without awaiting each PubAck; a confirmed report
        leaves the outbox, a failed one stays where it was (retried with the same ``Nats-Msg-Id``
        before anything after it) and the flush stops there.
        """
        async with self._lock:
            while self._reports:
                wave = next_wave(self._reports)
                confirmed, ok = await self._publish_wave(wave)
                if confirmed:
                    remaining = [r for r in self._reports if id(r) not in confirmed]
                    self._reports.clear()
                    self._reports.extend(remaining)
                if not ok:
                    return False
        return True

    async def _publish_wave(self, wave: list[executions_pb2.ExecutionReport]) -> tuple[set[int], bool]:
        """Send ``wave`` in order, then await all PubAcks; the ids of the confirmed reports, and all ok."""
        sent, ok = await self._send(wave)
        if sent:
            await asyncio.wait([future for _, future in sent], timeout=PUBLISH_TIMEOUT)
        confirmed: set[int] = set()
        for report, future in sent:
            if not future.done():
                future.cancel()
                self._publish_failed(report, TimeoutError(f"no PubAck within {PUBLISH_TIMEOUT} s"))
                ok = False
            elif future.cancelled() or future.exception() is not None:
                self._publish_failed(report, future.exception() if not future.cancelled() else None)
                ok = False
            else:
                ack = future.result()
                confirmed.add(id(report))
                self.counts["reports_published"] += 1
                _log_report(report, ack.seq, bool(ack.duplicate))
        return confirmed, ok

    async def _send(
        self, wave: list[executions_pb2.ExecutionReport]
    ) -> tuple[list[tuple[executions_pb2.ExecutionReport, asyncio.Future[PubAck]]], bool]:
        """Publish ``wave`` in order without awaiting the PubAcks; stops at the first failed send."""
        assert self.js is not None
        sent: list[tuple[executions_pb2.ExecutionReport, asyncio.Future[PubAck]]] = []
        for report in wave:
            report.report_ns = self._clock()
            data, headers = codec.encode(report)
            headers[MSG_ID] = report.execution_id
            try:
                future = await self.js.publish_async(subjects.execution(report.strategy_id), data, headers=headers)
            except Exception as exc:  # noqa: BLE001 - kept in the outbox and retried
                self._publish_failed(report, exc)
                return sent, False
            sent.append((report, future))
        return sent, True

    def _publish_failed(self, report: executions_pb2.ExecutionReport, exc: BaseException | None) -> None:
        self.counts["publish_failures"] += 1
        log.warning("execution.publish_failed", execution_id=report.execution_id, error=repr(exc))


def _log_report(report: executions_pb2.ExecutionReport, seq: int, duplicate: bool) -> None:
    with structlog.contextvars.bound_contextvars(
        strategy_id=report.strategy_id, client_order_id=report.client_order_id, execution_id=report.execution_id
    ):
        log.debug("execution.published", stream_seq=seq, duplicate=duplicate)
        event, level = _EXEC_EVENTS.get(report.exec_type, ("order.event", "info"))
        getattr(log, level)(
            event,
            symbol=report.symbol,
            status=executions_pb2.OrderStatus.Name(report.status),
            fill_qty=report.fill_qty,
            fill_price=report.fill_price,
            cum_qty=report.cum_qty,
            leaves_qty=report.leaves_qty,
            fee=report.fee,
            text=report.text,
        )
