"""One thread for the run's disk and SQLite work, so none of it holds the event loop.

The answer cache, the run's answer store and the answers file all do their IO here, one
job after another in submission order: a read submitted after a write sees it, and the
writes of many answers can be batched into one transaction or one fsync. The thread is
made on first use and lives as long as the process (it is a daemon: an exit never waits
for it; what it had not written is what a crash would lose, which the answer cache and
the answers file are each built to survive).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import TypeVar

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

    A cancelled wait does not undo the job: it runs to its end (a write half done would be
    worse), and its error, if any, is dropped with it."""
    return await asyncio.wrap_future(submit(fn, *args))


def in_io_thread() -> bool:
    return threading.current_thread().name.startswith("symoe-io")
