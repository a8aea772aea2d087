"""One thread for the run's disk and SQLite work, so none of it holds the event loop.

The answer cache, the run's answer store and the answers file all do their IO here, one
job after another in submission order: a read submitted after a write sees it, and the
writes of many answers can be batched into one transaction or one fsync. The thread is
made on first use and lives as long as the process; a normal exit waits for what is
queued (that is what makes it written). What a crash catches queued is what it loses,
which the answer cache and the answers file are each built to survive.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_executor: concurrent.futures.ThreadPoolExecutor | None = None


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="symoe-io")
        return _executor


def submit(fn: Callable[..., T], *args: object) -> concurrent.futures.Future[T]:
    """Queue ``fn(*args)`` on the IO thread; the future holds its result or error."""
    return _pool().submit(fn, *args)


async def run(fn: Callable[..., T], *args: object) -> T:
    """Run ``fn(*args)`` on the IO thread and wait for it without holding the loop.

    A cancelled wait does not cancel the job: it runs when its turn comes (a close or a
    write skipped because its caller was cancelled would lose what it was to write); its
    result, or error, is then dropped."""
    job = asyncio.wrap_future(submit(fn, *args))
    job.add_done_callback(_retrieved)  # an error nobody waits for any more is not logged as lost
    return await asyncio.shield(job)


def _retrieved(job: asyncio.Future) -> None:
    if not job.cancelled():
        job.exception()


def wait(fn: Callable[..., T], *args: object) -> T:
    """Run ``fn(*args)`` on the IO thread and block until it is done; called from the IO
    thread itself, it runs at once (waiting for its own queue would never end)."""
    if in_io_thread():
        return fn(*args)
    return submit(fn, *args).result()


def in_io_thread() -> bool:
    return threading.current_thread().name.startswith("symoe-io")


class WriteQueue(Generic[T]):
    """Items waiting for one write on the IO thread. ``add`` queues an item and, unless a
    write is queued already (it will take this item too), queues ``write``; ``write`` calls
    ``take`` for everything queued so far, and ``put_back`` what it could not write, which
    then goes first. Under load, many items share one commit or one fsync."""

    def __init__(self, write: Callable[[], None]):
        self._write = write
        self._lock = threading.Lock()
        self._items: list[T] = []
        self._queued = False

    def add(self, item: T) -> None:
        with self._lock:
            self._items.append(item)
            if self._queued:
                return
            self._queued = True
        submit(self._write)

    def take(self) -> list[T]:
        with self._lock:
            items, self._items = self._items, []
            self._queued = False
            return items

    def put_back(self, items: list[T]) -> None:
        with self._lock:
            self._items[:0] = items

    def kick(self) -> None:
        """Queue a write for items that wait with none queued (a retry after a failure)."""
        with self._lock:
            if self._queued or not self._items:
                return
            self._queued = True
        submit(self._write)

    def waiting(self) -> list[T]:
        """A copy of what waits."""
        with self._lock:
            return list(self._items)
