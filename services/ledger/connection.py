"""One stdlib ``sqlite3`` connection on a thread of its own, owned by the ledger (the store opens two).

:meth:`SQLiteThread.run` hands ``fn(connection, *args)`` to the connection's thread and awaits the
result: one hop per call, however many statements ``fn`` runs. The thread runs one job at a time, in
the order they were handed over, so a job (a whole transaction) never interleaves with another on
the same connection. A job once handed over always runs to its end: if the awaiting task is
cancelled, the job still finishes (commits or rolls back) on the thread, and its result is dropped.
The connection is made, and closed, on its thread (``sqlite3``'s same-thread check stays on).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _connect(path: Path, pragmas: Sequence[str]) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)  # autocommit: transactions are explicit BEGIN ... COMMIT
    try:
        for pragma in pragmas:
            db.execute(pragma)
    except BaseException:
        db.close()
        raise
    return db


def _settle(waiter: asyncio.Future[Any], job: concurrent.futures.Future[Any]) -> None:
    """On the event loop: pass the job's outcome on, unless the waiter was cancelled meanwhile."""
    if waiter.done():
        return
    error = job.exception()
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(job.result())


class SQLiteThread:
    """A connection to one SQLite file and the single thread that uses it. ``open`` first, ``close`` after."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    async def open(self, path: Path, pragmas: Sequence[str] = ()) -> None:
        """Start the thread and connect on it (``isolation_level=None``), then run ``pragmas`` there."""
        executor = self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        self._db = await self._on_thread(executor, _connect, path, tuple(pragmas))

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on the connection's thread (one hop)."""
        if self._executor is None or self._db is None:
            raise RuntimeError("LedgerStore is not open")
        return await self._on_thread(self._executor, fn, self._db, *args)

    async def close(self) -> None:
        """Close the connection on its thread (after the jobs already handed over) and end the thread."""
        executor, db = self._executor, self._db
        self._executor = self._db = None
        if executor is None:
            return
        try:
            if db is not None:
                await self._on_thread(executor, db.close)
        finally:
            executor.shutdown(wait=False)  # idle by now: the thread ends without blocking the loop

    @staticmethod
    async def _on_thread(executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T] = loop.create_future()

        def done(job: concurrent.futures.Future[T]) -> None:  # on the worker thread (or here, if already done)
            try:
                loop.call_soon_threadsafe(_settle, waiter, job)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

        # Not asyncio.wrap_future / run_in_executor: cancelling those cancels a job not yet started.
        executor.submit(fn, *args).add_done_callback(done)
        return await waiter
