"""Swap-aware micro-batching for ``symoe serve``: live requests gathered into windows.

A request joins the queue (bounded: ``serve.max_queue``; beyond it ``QueueFull``, which
the HTTP layer answers 429 with ``Retry-After``). An idle scheduler holds the first request
for ``serve.max_wait_s`` to gather others; a window then takes the queue's oldest
``serve.max_window`` requests and runs them as one batch per method through the same
controller as ``symoe solve``: one grouped schedule, so each model is loaded at most once
per window and serves every request of the window that needs it before it is swapped out.
Requests that arrive while a window runs wait for the next one, which starts as soon as
this one ends. Every window serves every model its requests need, so no model starves.

Servers stay up between windows (``Controller.resident``): a stage that does not need a
server sleeps it where the backend can (the config's ``schedule.sleep``), else stops it;
a server unused for ``serve.idle_release_s`` is stopped. Nothing is stopped while a
window runs except by the window's own stages, between groups, so a model with requests in
flight is never stopped.

Requests sent to a pool model by its own name (``Relay``) take their turn in the window
too: the ones whose model is already up go first, the rest after the window's batches.

An asker that leaves (a client that disconnects) is dropped: out of the queue if it is
still there, else its calls not yet sent are skipped and it gets no record; the window's
other requests go on. Shutdown fails what is queued at once, gives the window in progress
``serve.shutdown_grace_s`` to finish, then cancels it and fails what it had not answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .cache import AnswerCache
from .config import Config, OpenAIModel
from .controller import Controller
from .errors import SymoeError
from .events import Event, EventLog
from .methods import Method
from .records import Question, QuestionResult
from symoe_agents.servers import Endpoint, ServerManager


class QueueFull(Exception):
    """The queue holds ``serve.max_queue`` requests: come back after ``retry_after`` s."""

    def __init__(self, retry_after: int):
        super().__init__(f"symoe serve's queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The server is stopping: no new request is taken, and a request it could not finish
    fails with this."""


class WindowFailed(Exception):
    """The window running a request stopped with an error (a full disk under the cache, a
    stuck cache); the message says what."""


_ids = itertools.count(1)


@dataclass(eq=False)
class Ask:
    """One request for a method of the ensemble. ``progress`` (streamed requests) receives
    ("stage", text) as the window's groups start and ("token", text) as the aggregator writes."""

    method: Method
    question: Question
    progress: Callable[[str, str], None] | None = None
    arrived: float = field(default_factory=time.monotonic)
    started: float | None = None  # when its window began
    done: asyncio.Future[QuestionResult] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    gone: bool = False

    @staticmethod
    def new_id() -> str:
        return f"req-{next(_ids)}"


@dataclass(eq=False)
class Relay:
    """One request sent straight to pool model ``model``: ``turn`` gives the endpoint when
    the model is up; the caller sets ``finished`` when its exchange with the model is over
    (the model is not released before)."""

    model: str
    arrived: float = field(default_factory=time.monotonic)
    started: float | None = None
    turn: asyncio.Future[Endpoint] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    gone: bool = False


Item = Ask | Relay


@dataclass
class WindowStats:
    """Counters since the start, for /health and the benchmark."""

    windows: int = 0
    requests: int = 0
    loads: int = 0
    longest_wait_s: float = 0.0
    last_window_s: float = 0.0
    window_s_total: float = 0.0


class WindowScheduler:
    def __init__(self, config: Config, manager: ServerManager, events: EventLog, cache: AnswerCache | None = None,
                 controller: Controller | None = None):  # fmt: skip
        self.config = config
        self.opts = config.serve
        self.manager = manager
        self.events = events
        self.controller = controller or Controller(config, manager, events, None, cache)
        self.controller.resident = True
        self.stats = WindowStats()
        self._queue: deque[Item] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._window: list[Item] = []
        self._dropped: set[str] = set()
        self._last_used: dict[str, float] = {}
        self.events.listen(self._on_event)

    # -- the asker's side --------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def closing(self) -> bool:
        return self._closing

    def submit(self, item: Item) -> None:
        """Queue a request, or raise ``ShuttingDown`` / ``QueueFull``."""
        if self._closing:
            raise ShuttingDown("symoe serve is shutting down and takes no new request")
        if len(self._queue) >= self.opts.max_queue:
            raise QueueFull(self.retry_after())
        self._queue.append(item)
        self._wake.set()

    def retry_after(self) -> int:
        """Seconds until a full queue has likely room: the windows needed to drain it, at
        the mean window time so far (one window's wait when there is no history)."""
        mean = self.stats.window_s_total / self.stats.windows if self.stats.windows else 1.0
        windows = math.ceil(len(self._queue) / self.opts.max_window)
        return max(1, math.ceil(self.opts.max_wait_s + mean * windows))

    def drop(self, item: Item) -> None:
        """The asker has gone: out of the queue, or, in a running window, its unsent calls skipped."""
        item.gone = True
        with contextlib.suppress(ValueError):
            self._queue.remove(item)
            return
        if isinstance(item, Ask):
            self._dropped.add(item.question.id)
        else:
            item.finished.set()

    # -- the loop ------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="symoe-serve-windows")

    async def _loop(self) -> None:
        while True:
            await self._gather()
            take = min(len(self._queue), self.opts.max_window)
            window = [self._queue.popleft() for _ in range(take)]
            window = [w for w in window if not w.gone]
            if window:
                await self._run_window(window)

    async def _gather(self) -> None:
        """Wait for a request (stopping idle servers meanwhile), then, if the window is not
        full, hold it up to ``max_wait_s`` for others."""
        while not self._queue:
            self._wake.clear()
            timeout = await self._release_idle()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
        deadline = self._queue[0].arrived + self.opts.max_wait_s
        while len(self._queue) < self.opts.max_window and not self._closing:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._wake.wait()

    async def _release_idle(self) -> float | None:
        """Stop servers unused for ``idle_release_s``; the seconds until the next one is due."""
        now = time.monotonic()
        due: float | None = None
        for key in self.manager.running_keys():
            last = self._last_used.setdefault(key, now)
            if now - last >= self.opts.idle_release_s:
                self._last_used.pop(key, None)
                await self.manager.stop(key, reason=f"idle for {self.opts.idle_release_s:g} s")
            else:
                left = last + self.opts.idle_release_s - now
                due = left if due is None else min(due, left)
        return due

    def _on_event(self, event: Event) -> None:
        if event.kind in ("group_start", "group_end") and event.server:
            self._last_used[event.server] = time.monotonic()
        if event.kind == "server_ready":
            self.stats.loads += 1
        if event.kind == "group_start" and event.group:
            kind, _, model = event.group.partition(":")
            stage = {"skills": "skills", "expert": "experts", "aggregate": "aggregator"}.get(kind, kind)
            text = f"{stage} on {model}" if model else stage
            for item in self._window:
                if isinstance(item, Ask) and item.progress is not None and not item.gone and not item.done.done():
                    item.progress("stage", text)

    async def _run_window(self, window: list[Item]) -> None:
        began = time.monotonic()
        self._window = window
        self.stats.windows += 1
        self.stats.requests += len(window)
        for item in window:
            item.started = began
            self.stats.longest_wait_s = max(self.stats.longest_wait_s, began - item.arrived)
        relays: dict[str, list[Relay]] = {}
        asks: dict[Method, list[Ask]] = {}
        for item in window:
            if isinstance(item, Relay):
                relays.setdefault(item.model, []).append(item)
            else:
                asks.setdefault(item.method, []).append(item)
        up = set(self.manager.running_keys())
        now = [m for m in relays if self._is_up(m, up)]
        left = WindowFailed("the window ended without an answer for this request")
        try:
            for model in now:
                await self._relay(model, relays.pop(model))
            for method, batch in asks.items():
                await self._solve(method, batch)
            for model, group in relays.items():
                await self._relay(model, group)
        except asyncio.CancelledError:
            left = ShuttingDown("symoe serve stopped before this request finished")
            raise
        finally:
            for item in window:  # what the window did not reach (it was cancelled) fails, never hangs
                _fail(item, left)
            self._window = []
            self._dropped.clear()
            took = time.monotonic() - began
            self.stats.last_window_s = took
            self.stats.window_s_total += took

    def _is_up(self, model: str, up: set[str]) -> bool:
        return isinstance(self.config.model(model), OpenAIModel) or self.manager.server_key(model) in up

    async def _solve(self, method: Method, batch: list[Ask]) -> None:
        by_id = {a.question.id: a for a in batch if not a.gone}
        if not by_id:
            return

        def on_result(result: QuestionResult) -> None:
            ask = by_id.get(result.id)
            if ask is not None and not ask.done.done():
                ask.done.set_result(result)

        tokens_to = {}
        for qid, ask in by_id.items():
            if ask.progress is not None:
                tokens_to[qid] = _token_sink(ask.progress)
        self.manager.reuse_later = {k for k in self.manager.server_keys().values() if k is not None}
        failure: BaseException | None = None
        try:
            await self.controller.run([a.question for a in by_id.values()], on_result=on_result, method=method,
                                      tokens_to=tokens_to, dropped=self._dropped)  # fmt: skip
        except asyncio.CancelledError:
            failure = ShuttingDown("symoe serve stopped before this request finished")
            raise
        except SymoeError as exc:
            failure = WindowFailed(str(exc))
        except Exception as exc:  # a defect: this window's requests fail, the server goes on
            failure = WindowFailed(f"internal error ({type(exc).__name__}: {exc}); the server goes on")
        finally:
            for ask in by_id.values():
                if not ask.done.done():
                    ask.done.set_exception(failure or WindowFailed("the window ended without an answer for this request"))
                    ask.done.exception()  # retrieved here: an asker that has gone never awaits it

    async def _relay(self, model: str, group: list[Relay]) -> None:
        group = [r for r in group if not r.gone]
        if not group:
            return
        key = self.manager.server_key(model)
        self.manager.reuse_later = {k for k in self.manager.server_keys().values() if k is not None}
        try:
            endpoint = await self.manager.acquire(model, exclusive=True)
        except Exception as exc:
            for r in group:
                if not r.turn.done():
                    r.turn.set_exception(WindowFailed(f"model '{model}' is unavailable: {str(exc).splitlines()[0]}"))
                    r.turn.exception()
            return
        if key is not None:
            self._last_used[key] = time.monotonic()
        for r in group:
            if not r.turn.done():
                r.turn.set_result(endpoint)
        try:
            # a relay whose client vanished before its stream began never says it has finished:
            # the request timeout bounds how long the window waits for it
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.concurrency.request_timeout_s + 5):
                    await asyncio.gather(*(r.finished.wait() for r in group))
        except asyncio.CancelledError:
            for r in group:
                if not r.turn.done():
                    r.turn.set_exception(ShuttingDown("symoe serve stopped before this request finished"))
            raise
        finally:
            if key is not None:
                self._last_used[key] = time.monotonic()

    # -- shutdown ------------------------------------------------------------------------

    async def close(self) -> None:
        """Take nothing more, fail what is queued, let the window in progress finish within
        ``shutdown_grace_s``, then cancel it (its unanswered requests fail)."""
        self._closing = True
        self.events.unlisten(self._on_event)
        while self._queue:
            item = self._queue.popleft()
            _fail(item, ShuttingDown("symoe serve is shutting down; this request was still queued"))
        task, self._task = self._task, None
        if task is None:
            return
        if self._window:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.opts.shutdown_grace_s):
                    while self._window:
                        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _fail(item: Item, exc: Exception) -> None:
    future = item.done if isinstance(item, Ask) else item.turn
    if not future.done():
        future.set_exception(exc)
        future.exception()


def _token_sink(progress: Callable[[str, str], None]) -> Callable[[str], None]:
    def sink(text: str) -> None:
        progress("token", text)

    return sink
