"""Swap-aware micro-batching for ``symoe serve``: live requests gathered into windows.

A request joins the queue (bounded: ``serve.max_queue``; beyond it ``QueueFull``, which
the HTTP layer answers 429 with ``Retry-After``). A window takes the queue's oldest
``serve.max_window`` requests ``serve.window_s`` after the first of them arrived, and runs
them as one batch per method through the same controller as ``symoe solve``: one grouped
schedule, each model loaded at most once for the window. Up to ``serve.max_windows``
windows run at once; their groups take turns on the device (``turns``): a loaded model
serves the groups of every window that need it before it is swapped out, and a group that
has waited ``serve.max_wait_s`` is served next (no model starves).

Servers stay up between windows (``Controller.resident``): when another server takes the
device, the one it replaces sleeps where its backend can (the config's ``schedule.sleep``;
an idle llama-server just stays up), else it is stopped. A server no group has held or
waited for during ``serve.idle_release_s`` is stopped; one with requests in flight never is.

A request sent to a pool model by its own name (``Relay``) takes its turn on the device at
once, without a window, and holds it until its exchange with the model is over.

An asker that leaves (a client that disconnects) is dropped: out of the queue if it is
still there, else its calls not yet sent are skipped and it gets no record; the others go
on. Shutdown fails what is queued at once, gives the windows in flight
``serve.shutdown_grace_s`` to finish, then cancels them and fails what they had not answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import sys
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
from .metrics import HeldCounts, Metrics
from .records import Question, QuestionResult
from .schedule import Group
from .telemetry import Tracing
from .turns import Turns
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
    touched: float = field(default_factory=time.monotonic)  # the caller's last exchange with the model
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
    window_s_total: float = 0.0
    from_cache: int = 0  # answered from the answer cache before a window took them


class WindowScheduler:
    def __init__(self, config: Config, manager: ServerManager, events: EventLog, cache: AnswerCache | None = None,
                 controller: Controller | None = None, tracing: Tracing | None = None, metrics: Metrics | None = None):  # fmt: skip
        self.config = config
        self.opts = config.serve
        self.manager = manager
        self.events = events
        self.turns = Turns(self.opts.max_wait_s)
        self.controller = controller or Controller(config, manager, events, None, cache, tracing=tracing, metrics=metrics)
        self.metrics = metrics
        self.controller.resident = True
        self.controller.groups.turns = self.turns
        # a server one window releases may serve the next: sleep it where it can sleep
        manager.reuse_later = {k for k in manager.server_keys().values() if k is not None}
        self.stats = WindowStats()
        self._queue: deque[Item] = deque()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()  # a window ended: another may start
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._windows: dict[asyncio.Task[None], list[Item]] = {}
        self._relays: set[asyncio.Task[None]] = set()
        self._probes: set[asyncio.Task[None]] = set()
        self._relays_waiting = 0  # relays not yet given their turn: they count against max_queue
        self.fault: str | None = None  # the scheduler itself failed (a defect): serve answers 503
        self._last_used: dict[str, float] = {}
        self._dropped_of: dict[asyncio.Task[None], set[str]] = {}
        self._device = "cpu"
        self.events.listen(self._on_event)

    # -- the asker's side --------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        """Windows in flight."""
        return len(self._windows)

    @property
    def closing(self) -> bool:
        return self._closing

    def submit(self, item: Item) -> None:
        """Queue a request, or raise ``ShuttingDown`` / ``QueueFull``. A request for a pool
        model by its name takes its turn on the device at once (it needs no window)."""
        if self._closing:
            raise ShuttingDown("symoe serve is shutting down and takes no new request")
        if len(self._queue) + self._relays_waiting >= self.opts.max_queue:
            raise QueueFull(self.retry_after())
        if isinstance(item, Relay):
            self._relays_waiting += 1
            self._spawn(self._relay(item), self._relays)
            return
        self._queue.append(item)
        self._wake.set()
        if self.controller.groups.cache is not None:
            self._spawn(self._from_cache(item), self._probes)

    def retry_after(self) -> int:
        """Seconds until a full queue has likely room: the windows needed to drain it, at
        the mean window time so far (one second a window when there is no history)."""
        mean = self.stats.window_s_total / self.stats.windows if self.stats.windows else 1.0
        windows = math.ceil(len(self._queue) / (self.opts.max_window * self.opts.max_windows))
        return max(1, math.ceil(self.opts.window_s + mean * windows))

    def drop(self, item: Item) -> None:
        """The asker has gone: out of the queue, or, in a running window, its unsent calls skipped."""
        item.gone = True
        with contextlib.suppress(ValueError):
            self._queue.remove(item)
            return
        if isinstance(item, Ask):
            for task, window in self._windows.items():
                if item in window:
                    self._dropped_of[task].add(item.question.id)
        else:
            item.finished.set()

    # -- the loop ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start taking requests (the devices are looked up first: they are shared)."""
        devices = await self.controller.devices()
        self._device = devices[0].name
        for work in (self._loop(), self._release_idle()):
            self._spawn(work, self._tasks).add_done_callback(self._supervise)

    def _supervise(self, task: asyncio.Task[None]) -> None:
        """A loop that ends by an error (a defect) stops serve's intake: requests get 503 with
        the reason instead of hanging in a queue nobody takes from."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        self.fault = f"symoe serve's scheduler failed ({type(exc).__name__}: {exc}); restart symoe serve"
        print(f"[symoe] error: {self.fault}", file=sys.stderr, flush=True)
        self._closing = True
        while self._queue:
            _fail(self._queue.popleft(), ShuttingDown(self.fault))

    def _spawn(self, coro, into: set[asyncio.Task[None]]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        into.add(task)
        task.add_done_callback(into.discard)
        return task

    async def _loop(self) -> None:
        while True:
            await self._gather()
            while len(self._windows) >= self.opts.max_windows:
                self._room.clear()
                await self._room.wait()
            take = min(len(self._queue), self.opts.max_window)
            window = [w for w in (self._queue.popleft() for _ in range(take)) if not w.gone]
            if window:
                dropped: set[str] = set()
                task = asyncio.create_task(self._run_window(window, dropped))
                self._windows[task] = window
                self._dropped_of[task] = dropped
                task.add_done_callback(self._window_ended)

    def _window_ended(self, task: asyncio.Task[None]) -> None:
        self._windows.pop(task, None)
        self._dropped_of.pop(task, None)
        self._room.set()

    async def _gather(self) -> None:
        """Wait for a request, then, unless the window is full, for ``window_s`` after it."""
        while not self._queue:
            self._wake.clear()
            await self._wake.wait()
        deadline = self._queue[0].arrived + self.opts.window_s
        while len(self._queue) < self.opts.max_window and not self._closing:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._wake.wait()

    async def _release_idle(self) -> None:
        """Stop servers no group has used for ``idle_release_s`` (never one a group holds or waits for)."""
        idle = self.opts.idle_release_s
        while True:
            await asyncio.sleep(min(1.0, idle / 4))
            now = time.monotonic()
            for key in self.manager.running_keys():
                if self.turns.busy(key):
                    self._last_used[key] = now
                elif now - self._last_used.setdefault(key, now) >= idle:
                    self._last_used.pop(key, None)
                    await self.manager.stop(key, reason=f"idle for {idle:g} s")

    def _on_event(self, event: Event) -> None:
        if event.kind in ("group_start", "group_end") and event.server:
            self._last_used[event.server] = time.monotonic()
        if event.kind == "server_ready":
            self.stats.loads += 1

    async def _run_window(self, window: list[Item], dropped: set[str]) -> None:
        began = time.monotonic()
        self.stats.windows += 1
        self.stats.requests += len(window)
        for item in window:
            item.started = began
        asks: dict[Method, list[Ask]] = {}
        for item in window:
            if isinstance(item, Ask):
                asks.setdefault(item.method, []).append(item)
        left: Exception = WindowFailed("the window ended without an answer for this request")
        try:
            await asyncio.gather(*(self._solve(method, batch, dropped) for method, batch in asks.items()))
        except asyncio.CancelledError:
            left = ShuttingDown("symoe serve stopped before this request finished")
            raise
        finally:
            for item in window:  # what the window did not answer (it was cancelled) fails, never hangs
                _fail(item, left)
            took = time.monotonic() - began
            self.stats.window_s_total += took

    async def _solve(self, method: Method, batch: list[Ask], dropped: set[str]) -> None:
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

        def on_serving(group: Group) -> None:  # this window's streamed asks hear of its own groups only
            kind, _, model = group.name.partition(":")
            stage = {"skills": "skills", "expert": "experts", "aggregate": "aggregator"}.get(kind, kind)
            text = f"{stage} on {model}" if model else stage
            for ask in by_id.values():
                if ask.progress is not None and not ask.gone and not ask.done.done():
                    ask.progress("stage", text)

        failure: BaseException | None = None
        try:
            await self.controller.sibling(on_serving=on_serving).run([a.question for a in by_id.values()], on_result=on_result, method=method,
                                                tokens_to=tokens_to, dropped=dropped)  # fmt: skip
        except asyncio.CancelledError:
            failure = ShuttingDown("symoe serve stopped before this request finished")
            raise
        except SymoeError as exc:
            failure = WindowFailed(str(exc))
        except Exception as exc:  # a defect: this window's requests fail, the server goes on
            failure = WindowFailed(f"internal error ({type(exc).__name__}: {exc}); the server goes on")
        finally:
            if isinstance(failure, WindowFailed) and self.metrics is not None:
                self.metrics.window_failed()
            for ask in by_id.values():
                if not ask.done.done():
                    _fail(ask, failure or WindowFailed("the window ended without an answer for this request"))

    async def _from_cache(self, ask: Ask) -> None:
        """A request answered before (every call it needs is in the answer cache) is answered
        at once, without waiting for a window; otherwise its window answers it."""
        got: list[QuestionResult] = []
        probe = self.controller.sibling(cache_only=True)
        held = probe.metrics = probe.groups.metrics = HeldCounts() if self.metrics is not None else None
        try:
            await probe.run([ask.question], on_result=got.append, method=ask.method)
        except Exception:  # NotCached (alone or in a task group), or any failure: the window answers it
            return
        if got and not ask.done.done() and not ask.gone:
            if held is not None and self.metrics is not None:  # answered here: its cache hits count, once
                held.keep(self.metrics)
            with contextlib.suppress(ValueError):
                self._queue.remove(ask)
            ask.started = time.monotonic()
            self.stats.from_cache += 1
            ask.done.set_result(got[0])

    async def _relay(self, relay: Relay) -> None:
        """A request for a pool model by its name: its turn on the device, its server up,
        then held until the caller's exchange with the model is over."""
        model = relay.model
        key = None if isinstance(self.config.model(model), OpenAIModel) else self.manager.server_key(model)
        waiting = True
        try:
            async with self.turns.turn(self._device, key):
                self._relays_waiting -= 1
                waiting = False
                if relay.gone:  # its caller left while it waited: no model is started for nobody
                    return
                relay.started = relay.touched = time.monotonic()
                try:
                    endpoint = await self.manager.acquire(model, exclusive=True)
                except Exception as exc:
                    _fail(relay, WindowFailed(f"model '{model}' is unavailable: {str(exc).splitlines()[0]}"))
                    return
                if not relay.turn.done():
                    relay.turn.set_result(endpoint)
                # held while the exchange goes on; a caller silent for the request timeout (one
                # that vanished before its stream began never says it has finished) lets go
                quiet = self.config.concurrency.request_timeout_s + 5
                while not relay.finished.is_set():
                    left = relay.touched + quiet - time.monotonic()
                    if left <= 0:
                        break
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(left):
                            await relay.finished.wait()
        except asyncio.CancelledError:
            _fail(relay, ShuttingDown("symoe serve stopped before this request finished"))
            raise
        finally:
            if waiting:
                self._relays_waiting -= 1
            if key is not None:
                self._last_used[key] = time.monotonic()

    # -- shutdown ------------------------------------------------------------------------

    async def close(self) -> None:
        """Take nothing more, fail what is queued, let the windows and relays in flight
        finish within ``shutdown_grace_s``, then cancel them (their unanswered requests fail)."""
        if self._closing:
            return
        self._closing = True
        while self._queue:
            item = self._queue.popleft()
            _fail(item, ShuttingDown("symoe serve is shutting down; this request was still queued"))
        for task in [*self._tasks, *self._probes]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._probes, return_exceptions=True)
        busy = [*self._windows, *self._relays]
        if busy:
            await asyncio.wait(busy, timeout=self.opts.shutdown_grace_s)
        busy = [*self._windows, *self._relays]
        for task in busy:
            task.cancel()
        await asyncio.gather(*busy, return_exceptions=True)
        self.events.unlisten(self._on_event)


def _fail(item: Item, exc: Exception) -> None:
    future = item.done if isinstance(item, Ask) else item.turn
    if not future.done():
        future.set_exception(exc)
        future.exception()  # retrieved here: an asker that has gone never awaits it


def _token_sink(progress: Callable[[str, str], None]) -> Callable[[str], None]:
    def sink(text: str) -> None:
        progress("token", text)

    return sink
