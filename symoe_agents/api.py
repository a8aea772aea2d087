"""The Python API for async apps.

    async with SymbolicMoE() as moe:                 # built-in embedded pool
        result = await moe.solve("What is 7 * 8?")
        results = await moe.solve_batch(questions)

It runs inside the caller's event loop (no ``asyncio.run`` here). Servers are started per
batch, group by group, and stopped when the batch ends; leaving the ``async with`` block
by any path (return, exception, cancellation) stops whatever is still running. One batch
runs at a time per instance: a single GPU serves one schedule at a time.

``solve_each`` hands each record to a callback as its question finishes and keeps none,
so memory stays flat however large the batch; ``solve_batch`` collects them into a list.

With ``cache=PATH`` every answer is stored in SQLite as it arrives; a batch that is run
again (after a crash, or in a later session) reuses those answers instead of paying again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .agents import Connect, OpenAIClient
from .cache import AnswerCache
from .cluster import Cluster
from .errors import CacheError
from .config import Config, load_config
from .controller import BatchOutcome, Controller, OnResult, Progress
from .events import EventLog
from .summary import RunSummary
from .metrics import Metrics
from .telemetry import Tracing, tracing_on
from .inputs import as_questions
from .methods import Method
from .preflight import PreflightError, preflight
from .records import Question, QuestionResult
from .schedule import Schedule
from symoe_agents.servers import ServerManager

QuestionLike = str | Question | dict[str, Any]


class SymbolicMoE:
    def __init__(
        self,
        config: Config | str | Path | None = None,
        *,
        events: EventLog | None = None,
        progress: Progress | None = None,
        check: bool = True,
        cache: str | Path | AnswerCache | None = None,
        connect: Connect = OpenAIClient,
        scratch_dir: str | Path | None = None,
        tracer_provider: Any = None,
        metrics: Metrics | None = None,
        **overrides: Any,
    ):
        """``config``: a Config, a TOML path, or None for the built-in embedded CPU pool.
        ``check=False`` skips preflight, for callers that already ran it on this config.
        ``cache``: an SQLite answer cache (a path, or an open ``AnswerCache``): every answer
        is stored as it arrives and reused instead of being requested again.
        ``connect``: opens the client through which requests meet a model (by default the
        ``openai`` client; a test may put a scripted model there).
        ``scratch_dir``: where a batch keeps its answers until its questions finish (about
        the size of its answers; default: the temporary folder, which may be in memory).
        ``tracer_provider``: an OpenTelemetry tracer provider for symoe's spans (default: the
        global one; tracing is on when it records, see ``telemetry.py``).
        ``metrics``: Prometheus counters (``metrics.Metrics``) to feed from every call, record
        and server event.
        ``overrides``: top-level config fields to replace (``k=2``, ``seed=1``, ``profiles=...``)."""
        cfg = config if isinstance(config, Config) else load_config(config)
        self.config = cfg.with_overrides(**overrides) if overrides else cfg
        self.events = events or EventLog()
        self._progress = progress
        self._check = check
        self._cache_arg = cache
        self._connect = connect
        self._scratch_dir = str(scratch_dir) if scratch_dir is not None else None
        self._tracer_provider = tracer_provider
        self._tracing: Tracing | None = None
        self.metrics = metrics
        self.cache: AnswerCache | None = cache if isinstance(cache, AnswerCache) else None
        self._manager: ServerManager | None = None
        self._cluster: Cluster | None = None  # a config with [cluster]: its nodes run the servers
        self._controller: Controller | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self.last: BatchOutcome | None = None

    async def __aenter__(self) -> "SymbolicMoE":
        problems = await asyncio.to_thread(preflight, self.config) if self._check else []
        if problems:
            raise PreflightError(problems)
        if self.cache is None and self._cache_arg is not None:
            self.cache = AnswerCache(self._cache_arg)  # type: ignore[arg-type]
        if tracing_on(self._tracer_provider):  # checked at each open: an app may set its provider after making this object
            self._tracing = Tracing(self._tracer_provider)
            self.events.listen(self._tracing.on_event)
        if self.metrics is not None:
            self.events.unlisten(self.metrics.on_event)  # once, however often the API is opened
            self.events.listen(self.metrics.on_event)
        self._manager = ServerManager(self.config, self.events)
        if self.config.cluster is not None:
            try:
                self._cluster = await Cluster.join(self.config, self.events)
            except BaseException:  # the cluster cannot run the config: what was opened here closes
                await self.__aexit__()
                raise
        try:
            self._controller = Controller(
                self.config, self._manager, self.events, self._progress, self.cache, self._connect, self._scratch_dir, self._cluster,
                self._tracing, self.metrics,
            )
            if self._cluster is not None:
                await self._controller.devices()  # each node's host starts now, while the batch is read and prepared
        except BaseException:  # profiles that do not fit, no device for the models: nothing was started; what opened here closes
            await self.__aexit__()
            raise
        self._closed = False
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._controller = None  # closed: a later solve says so instead of starting servers nobody stops
        self._closed = True
        try:
            try:
                if self._cluster is not None:
                    cluster, self._cluster = self._cluster, None
                    await cluster.aclose()
            finally:
                try:
                    if self._manager is not None:
                        await self._manager.aclose()
                finally:
                    if self.metrics is not None:
                        self.events.unlisten(self.metrics.on_event)
                    if self._tracing is not None:  # after the servers' stop events have ended their spans
                        tracing, self._tracing = self._tracing, None
                        self.events.unlisten(tracing.on_event)
                        tracing.close()
        finally:
            if self.cache is not None and not isinstance(self._cache_arg, AnswerCache):
                cache, self.cache = self.cache, None
                try:
                    await cache.aclose()  # opened here, closed here; a caller's own cache stays open
                except CacheError as failure:
                    leaving = exc[1] if len(exc) > 1 else None
                    if not isinstance(leaving, BaseException):
                        raise
                    # leaving on an error or a cancellation: that stays what the caller gets
                    leaving.add_note(f"and closing the answer cache failed: {failure}")

    def _ready(self) -> Controller:
        if self._controller is None:
            if self._closed:
                raise RuntimeError("this SymbolicMoE is closed (its 'async with' block ended and its servers stopped); "
                                   "open a new one with 'async with SymbolicMoE(...) as moe:'")  # fmt: skip
            raise RuntimeError("use SymbolicMoE as 'async with SymbolicMoE(...) as moe:' before solving")
        return self._controller

    async def solve_each(
        self,
        questions: Iterable[QuestionLike],
        on_result: OnResult,
        method: Method | None = None,
    ) -> RunSummary:
        """Solve many questions with one grouped schedule (each model loaded once), handing
        each question's record to ``on_result`` (a function or a coroutine function) the
        moment it finishes; no record is kept. ``method``: one of the baselines of
        ``symoe eval`` instead of Symbolic-MoE."""
        batch = as_questions(questions)
        async with self._lock:
            controller = self._ready()  # inside the lock: a call queued while the block closed finds it closed
            self.last = await controller.run(batch, on_result=on_result, method=method)
        return self.last.summary

    async def solve_batch(
        self,
        questions: Iterable[QuestionLike],
        on_result: Callable[[QuestionResult], None] | None = None,
        method: Method | None = None,
    ) -> list[QuestionResult]:
        """``solve_each``, with the records also returned as a list in input order."""
        batch = as_questions(questions)
        results: dict[str, QuestionResult] = {}

        def keep(result: QuestionResult) -> None:
            results[result.id] = result
            if on_result is not None:
                on_result(result)

        await self.solve_each(batch, keep, method)
        return [results[q.id] for q in batch if q.id in results]

    async def solve(self, question: QuestionLike) -> QuestionResult:
        """Solve one question (a batch of one)."""
        return (await self.solve_batch([question]))[0]

    async def plan(self, questions: Iterable[QuestionLike]) -> Schedule:
        """Infer skills and route, then return the planned schedule without answering."""
        batch = as_questions(questions)
        async with self._lock:
            controller = self._ready()
            self.last = await controller.run(batch, dry_run=True)
        return self.last.schedule

    @property
    def routing_note(self) -> str:
        """How experts are recruited with this config (profiles, or uniformly at random)."""
        return self._ready().routing_note

    @property
    def alignment_warning(self) -> str | None:
        """Set when keywords were aligned to the profiles by a fallback method."""
        return self._controller.alignment_warning if self._controller else None

    @property
    def summary(self) -> RunSummary | None:
        return self.last.summary if self.last else None
