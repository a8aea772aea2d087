"""Running one group: every request of one model's group to a final completion.

This is the executor that ``solve``, ``profile``, ``pick-aggregator``, ``eval`` and the
benchmarks share. It acquires the group's server, sends the requests through a bounded
pool of workers, keeps every answer in the cache the moment it arrives, and restarts a
server that dies or hangs, sending again only what was unanswered.

Memory does not grow with the group: a request's prompt is rendered by its worker when it
is about to be sent (``prompt_of`` may read what it needs from disk), its cache key is
computed and looked up then, and what the group keeps per request is one byte (final or
not). Before the server is acquired, requests are prepared in order only until the first
one that must be sent: a group whose requests are all cached or skipped never starts its
server, and a fresh group starts it at once.

Samples of one question that go in one request (``n``) are planned from the group's
structure alone: a group's requests for one question share one prompt (true of every
group the method makes), so a batch and its cache keys are the same in every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .agents import Agent, AgentRunner, Connect, OpenAIClient, sampling_params
from .cache import AnswerCache, CallIdentity
from .config import Config, OpenAIModel, prompt_cache_slots, samples_per_request
from .costs import Budget, ShareClock, call_cost
from .metrics import Counts
from .telemetry import RunTrace, finish_call
from .dispatch import dispatch, pool_size, sample_batches
from .errors import ServerStartError
from symoe_agents.servers import Endpoint
from .events import EventLog
from .placement import Device, node_name
from .prompting import RenderedPrompt
from .records import Completion
from .schedule import Group
from .turns import Turns
from .cluster import Cluster, HostLost
from symoe_agents.servers import ServerManager
from symoe_agents.servers.gpu import MemoryShare

T = TypeVar("T")
MaybeAwaitable = T | Awaitable[T]

#: request index -> the prompt to send, or a string: the reason it is not sent (on_skip gets it)
PromptOf = Callable[[int], MaybeAwaitable[RenderedPrompt | str]]
#: request index, final completion
OnFinal = Callable[[int, Completion], MaybeAwaitable[None]]
#: request index, why it was not sent
OnSkip = Callable[[int, str], MaybeAwaitable[None]]
#: request index -> where its response's text goes as it is written (None: not streamed)
DeltaOf = Callable[[int], Callable[[str], None] | None]
#: question id -> its random stream (``Prepared.stream``): seeds the request's sampling
StreamOf = Callable[[str], str]


class NotCached(Exception):
    """A cache-only run (``GroupRunner.cache_only``) met a call that is not in the cache."""


class Progress(Protocol):
    def start(self, group: str, total: int) -> None: ...
    def advance(self) -> None: ...
    def finish(self) -> None: ...


class NoProgress:
    def start(self, group: str, total: int) -> None:
        pass

    def advance(self) -> None:
        pass

    def finish(self) -> None:
        pass


def _node(device: Device | None) -> str | None:
    """The node an event of a group on ``device`` names (None: this machine, where a hosted
    model's calls leave from)."""
    return node_name(device.node) if device is not None and device.node else None


def _loading(manager: Any, model: str) -> float | None:
    """The seconds ``model``'s servers have spent starting so far (None: a manager that does
    not say, a cluster host)."""
    counts = getattr(manager, "loading_s", None)
    return counts.get(model, 0.0) if isinstance(counts, dict) else None


def _loaded(manager: Any, model: str, before: float | None, asked: float) -> float:
    """What an acquire spent loading: the start (or wake) it caused, else its wall time."""
    if before is None:
        return time.monotonic() - asked
    return max(0.0, _loading(manager, model) - before)  # type: ignore[operator]


def _same_id(question_id: str) -> str:
    return question_id


async def _settle(value: MaybeAwaitable[T]) -> T:
    return await value if inspect.isawaitable(value) else value  # type: ignore[return-value]


class _Singles(Sequence[tuple[int, ...]]):
    """Each request its own batch, without a tuple per request held."""

    def __init__(self, n: int):
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, u):  # type: ignore[override]
        if not 0 <= u < self._n:
            raise IndexError(u)
        return (u,)


@dataclass
class GroupStats:
    failed: int = 0
    restarts: int = 0
    calls: int = 0
    resent: int = 0
    cached: int = 0
    skipped: int = 0
    peak_in_flight: int = 0


class GroupRunner:
    """Runs groups of one batch over the server manager, the cache and the event log."""

    def __init__(
        self,
        config: Config,
        manager: ServerManager,
        events: EventLog,
        progress: Progress | None = None,
        cache: AnswerCache | None = None,
        connect: Connect = OpenAIClient,
    ):
        self.config = config
        self.manager = manager
        self.events = events
        self.progress = progress or NoProgress()
        self.cache = cache  # None: every call is sent
        self.connect = connect  # where requests meet a model
        # symoe serve: several batches at once take turns on a device (``turns.Turns``);
        # a group holds its server's turn from before the server is acquired until it ends
        self.turns: Turns | None = None
        # answer from the cache or not at all: a group with anything to send raises NotCached
        # before its server is acquired (symoe serve's at-once answer to a repeated request)
        self.cache_only = False
        self.on_serving: Callable[[Group], None] | None = None  # told as a group gets its server
        # a cluster run (``cluster.py``): a device's servers are on its node, run by its host;
        # a group whose node is lost moves on to a live device and sends what is unanswered
        self.hosts: Cluster | None = None
        # each server's device-time clock, by endpoint: shared by every group that sends to it
        # (serve's windows included: sibling runners share this dict)
        self.clocks: dict[tuple[str, str], ShareClock] = {}
        self.budget: Budget | None = None  # --max-cost: no request is sent once it is spent
        self.trace: RunTrace | None = None  # the batch's spans, when tracing is on (telemetry.py)
        self.metrics: Counts | None = None  # Prometheus counters (metrics.py)

    def call_key(
        self, agent: Agent, model: str, stream: str, sample: int, prompt: RenderedPrompt, first: int | None = None, n: int = 1
    ) -> str:
        """What determines one call's answer, hashed: the model's identity, the prompt, the
        sampling settings, the request seed and the sample (the answer cache's key). A
        sample asked with others in one request (``n`` > 1, the request's seed that of its
        ``first`` sample) has a key of its own: it is not the answer a lone request gets."""
        params = sampling_params(agent, self.config.seed, stream, sample if n <= 1 or first is None else first)
        seed = int(params.pop("seed"))  # type: ignore[call-overload]
        if n > 1:
            params["n"] = n
        return CallIdentity(self.manager.identity(model), prompt.sha256, tuple(sorted(params.items())), seed, sample).key

    async def share(self, model: str, device: Device, co_resident: bool) -> MemoryShare | None:
        """A co-resident GPU server's memory share, from what is free at its start."""
        need = getattr(self.config.model(model), "memory_gib", None)
        if not co_resident or need is None or device.gpu_ids is None or self.manager.gpu is None:
            return None
        try:
            infos = {g.index: g for g in await self.manager.gpu.gpus()}
        except OSError:
            return None
        gpu = infos.get(device.gpu_ids[0])
        return MemoryShare(need, gpu.free_mib / 1024, gpu.total_mib / 1024) if gpu else None

    async def run(
        self,
        group: Group,
        agent: Agent,
        prompt_of: PromptOf,
        on_final: OnFinal,
        device: Device | None = None,
        co_resident: bool = False,
        on_admitted: Callable[[], None] | None = None,
        exclusive: bool = True,
        stream_of: StreamOf = _same_id,
        on_skip: OnSkip | None = None,
        delta_of: DeltaOf | None = None,
    ) -> GroupStats:
        """Acquire the group's server and run every request to a final completion, restarting
        a server that dies or hangs; ``on_final(i, completion)`` receives each result once,
        ``on_skip(i, why)`` each request ``prompt_of`` declined (not sent, not a failure).
        The callbacks may be coroutine functions. ``delta_of(i)``, when it gives a function,
        has request ``i`` streamed: the function receives its text as the model writes it
        (a request of one sample only; a cached answer arrives whole, as ``on_final``'s)."""
        requests = group.requests
        n = len(requests)
        began = time.monotonic()
        model = self.config.model(group.model)
        hosted = isinstance(model, OpenAIModel)
        cache = self.cache
        self.events.emit("group_start", group=group.name, model=group.model, server=group.server, requests=n, node=_node(None if hosted else device))
        stats = GroupStats()
        traced = self.trace
        group_span = traced.group(group.name, group.model, n, _node(None if hosted else device)) if traced is not None else None
        price = self.config.price(group.model)
        load_s = 0.0  # the server's start (and restarts) on the device, shared by the group's requests
        held_from: float | None = None  # when the group first asked for its server: device time from there
        carried: dict[int, tuple[float, float]] = {}  # (device s, USD) of attempts sent again after a restart
        finished = bytearray(n)  # 1: final (answered, failed, cached or skipped)
        # why this group stops sending (the answer cache stuck, or on_final failing: the
        # answers file on a full disk); requests in flight then finish and are kept, and the
        # error is raised once they have: raising at once would cancel answers being paid for
        halted: list[Exception] = []
        deferring = False

        async def final(i: int, c: Completion) -> None:
            finished[i] = 1
            if self.metrics is not None:
                self.metrics.call(agent.role, group.model, c)
            if c.error:
                stats.failed += 1
                req = requests[i]
                self.events.emit("request_failed", group=group.name, model=group.model, node=_node(None if hosted else device),
                                 detail={"question": req.question_id, "sample": req.sample, "error": c.error})  # fmt: skip
            try:
                await _settle(on_final(i, c))
            except Exception as exc:
                if not deferring:
                    raise
                halted.append(exc)
            self.progress.advance()

        async def fail_rest(reason: str) -> None:
            for i in range(n):
                if not finished[i]:
                    device_s, cost_usd = carried.pop(i, (0.0, 0.0))  # attempts paid before the server was lost
                    await final(i, Completion(model=group.model, error=reason, device_s=device_s, cost_usd=cost_usd))

        # a request never holds more sequences than the group may have in flight
        in_flight = self.config.in_flight(group.model)
        per_request = min(samples_per_request(model), in_flight)
        units: Sequence[tuple[int, ...]]
        if per_request > 1:
            batches = sample_batches({i: ((r.question_id,), r.sample) for i, r in enumerate(requests)}, per_request)
            units = sorted(set(batches.values()))
            del batches
        else:
            units = _Singles(n)

        async def prepare(members: tuple[int, ...], wanted: Callable[[int], bool]) -> tuple[RenderedPrompt, list[int], dict[int, str | None]] | None:
            """The unit's prompt and its members still to send, or None when none is (each
            skipped or cached member is final here)."""
            todo = [i for i in members if not finished[i] and wanted(i)]
            if not todo:
                return None
            prompt = await _settle(prompt_of(members[0]))
            if isinstance(prompt, str):
                for i in todo:
                    finished[i] = 1
                    stats.skipped += 1
                    if on_skip is not None:
                        await _settle(on_skip(i, prompt))
                    self.progress.advance()
                return None
            keys: dict[int, str | None] = {}
            send = []
            for i in todo:
                key = self._cache_key(agent, group, i, prompt, stream_of, members)
                hit = await cache.aget(key) if cache is not None and key is not None else None
                if hit is not None:
                    stats.cached += 1
                    if traced is not None:
                        traced.cached(requests[i].question_id, agent.role, group.model, requests[i].sample, hit)
                    await final(i, hit)
                else:
                    keys[i] = key
                    send.append(i)
            return (prompt, send, keys) if send else None

        def every(i: int) -> bool:
            return True

        self.progress.start(group.name, n)
        turn = contextlib.AsyncExitStack()
        try:
            first = 0  # skipped and cached requests are final before any server starts
            while first < len(units) and await prepare(units[first], every) is None:
                first += 1
            if first == len(units):
                return stats  # nothing to send: the server is not needed
            if self.cache_only:
                raise NotCached(group.name)
            if self.budget is not None and self.budget.exhausted:  # --max-cost: not even the server is started
                raise self.budget.error()
            remote = self.hosts is not None and not hosted
            manager: Any = self.manager
            told: list[bool] = []  # on_serving is told once, when the group first gets a turn

            async def serve_on(dev: Device | None) -> Endpoint | None:
                """Take ``dev``'s turn and the group's server on it; None: the group cannot
                run anywhere (every request not yet final has failed)."""
                nonlocal manager, device, load_s, held_from
                while True:
                    await turn.aclose()  # a move gives the lost device's turn back
                    if remote:
                        assert self.hosts is not None and dev is not None
                        moved = await self.hosts.where(dev)
                        if moved is None:
                            await fail_rest(f"node of {dev.name} was lost and no live device is left in the cluster")
                            return None
                        if moved != dev:
                            if group_span is not None:
                                group_span.add_event("group_moved", {"symoe.moved_from": dev.name, "symoe.moved_to": moved.name})
                            self.events.emit("group_moved", group=group.name, model=group.model, node=_node(moved),
                                             requests=n - sum(finished), detail={"moved_from": dev.name, "moved_to": moved.name})  # fmt: skip
                        dev = moved
                        manager = self.hosts.host(dev)
                    device = dev
                    if self.turns is not None:
                        await turn.enter_async_context(self.turns.turn(dev.name if dev else "cpu", None if hosted else group.server))
                    if self.on_serving is not None and not told:
                        told.append(True)
                        self.on_serving(group)
                    asked, loaded = time.monotonic(), _loading(manager, group.model)
                    try:
                        got = await manager.acquire(
                            group.model,
                            exclusive=exclusive and not co_resident,
                            gpu_ids=dev.gpu_ids if dev else None,
                            share=await self.share(group.model, dev, co_resident) if dev else None,
                        )
                        load_s += _loaded(manager, group.model, loaded, asked)
                        held_from = asked if held_from is None else held_from
                        return got
                    except HostLost:
                        continue  # its node went: the next live device
                    except Exception as exc:  # ServerStartError, or a hosted endpoint without its key
                        for u in range(first + 1, len(units)):  # what is cached or skipped needs no server
                            await prepare(units[u], every)
                        await fail_rest(f"server unavailable: {str(exc).splitlines()[0]}")
                        return None

            endpoint = await serve_on(device)
            if endpoint is None:
                return stats
            seen = manager.process_pid(group.model)  # the process this group's failures are about
            slots = prompt_cache_slots(model)
            order: Sequence[int] = range(first, len(units))
            wanted: Callable[[int], bool] = every
            while True:
                retry: list[tuple[int, Completion]] = []
                server_down = asyncio.Event()

                def proceed() -> bool:  # a local server seen dead: stop sending it requests
                    return hosted or (not server_down.is_set() and manager.process_alive(group.model))

                # in flight counts sequences, the server's slots: the runner admits a request
                # of n samples as n sequences; the pool has workers enough to fill the slots
                # with the narrowest requests
                narrowest = min(len(units[u]) for u in order) if per_request > 1 else 1
                connect = manager.connect_for(group.model) if remote else self.connect
                # one clock per server: its key (stable across restarts) on its device (a node's 127.0.0.1 is not another's)
                clock = self.clocks.setdefault((device.name if device else "", group.server or endpoint.base_url), ShareClock())
                async with AgentRunner(endpoint, self.config.concurrency, self.config.seed, in_flight, connect, clock) as runner:

                    async def one(u: int, wanted: Callable[[int], bool] = wanted) -> None:
                        # a unit is one request: a whole batch (members not yet final are the
                        # ones that count), sent again whole if any member needs it, so that
                        # its samples are always the ones its cache keys name
                        if halted:
                            return
                        stop = cache.stuck() if cache is not None else None
                        if stop is None and self.budget is not None and self.budget.exhausted:
                            stop = self.budget.error()
                        if stop is not None:  # send nothing more; what is in flight finishes and is kept
                            halted.append(stop)
                        if halted:
                            return
                        members = units[u]
                        prepared = await prepare(members, wanted)
                        if prepared is None:
                            return
                        prompt, todo, keys = prepared
                        head = requests[members[0]]

                        def admitted() -> None:  # counted when it leaves the queue for the server
                            for i in todo:
                                key = keys[i]
                                if cache is not None and key is not None:
                                    cache.note_attempt(key)
                                if on_admitted is not None:
                                    on_admitted()

                        on_delta = delta_of(members[0]) if delta_of is not None and len(members) == 1 else None
                        span = None
                        if traced is not None:
                            span = traced.call(head.question_id, agent.role, group.model, head.sample)
                        try:
                            results = await runner.call_many(agent, prompt, stream_of(head.question_id), head.sample, len(members), admitted, proceed, on_delta, span)
                        except BaseException:
                            if span is not None:
                                span.end()
                            raise
                        for i, c in zip(members, results):
                            if i not in keys:
                                continue  # final already (cached, or answered before a restart)
                            # what the call cost: a hosted one its tokens, a local one its share of the device;
                            # an attempt to be sent again (its server died) is paid now and carried
                            # to the request's final answer, which alone takes a share of the load
                            resend = bool(c.error and c.retryable and not hosted)
                            c.device_s = 0.0 if hosted else c.device_s + (0.0 if resend else load_s / n)
                            c.cost_usd = call_cost(price, c.prompt_tokens, c.completion_tokens, c.device_s)
                            if self.budget is not None:
                                self.budget.add(c.cost_usd)
                            paid = carried.pop(i, None)
                            if resend:
                                carried[i] = (c.device_s + paid[0], c.cost_usd + paid[1]) if paid else (c.device_s, c.cost_usd)
                            elif paid:
                                c.device_s += paid[0]
                                c.cost_usd += paid[1]
                            if cache is not None and keys[i] is not None:
                                req = requests[i]
                                cache.put(keys[i], c, agent.role, req.question_id, req.sample)  # kept the moment it arrives (answers only)
                        if span is not None:
                            finish_call(span, [c for i, c in zip(members, results) if i in keys])
                            span.end()
                        for i, c in zip(members, results):
                            if i not in keys:
                                continue
                            if c.error and c.retryable and not hosted:
                                retry.append((i, c))
                                if not manager.process_alive(group.model):
                                    server_down.set()  # do not spend the others' retries on a dead server
                                continue
                            await final(i, c)

                    def question_of(u: int) -> str:
                        return requests[units[u][0]].question_id

                    per_question = Counter(question_of(u) for u in order)
                    workers, per_key = pool_size(per_question, max(1, in_flight // narrowest), slots and max(1, slots // narrowest))
                    del per_question
                    deferring = True
                    try:
                        await dispatch(order, one, question_of, workers, per_key)
                    finally:
                        deferring = False
                    stats.calls += runner.calls_sent
                    stats.peak_in_flight = max(stats.peak_in_flight, runner.peak_in_flight)
                if halted:
                    raise halted[0]
                if not retry:
                    break
                again = {i for i, _ in retry}
                lost = remote and manager.lost is not None
                healthy = False
                if not lost:
                    try:
                        healthy = await manager.healthy(group.model)
                    except HostLost:
                        lost = True
                now = manager.process_pid(group.model)
                if not lost and healthy and now == seen:
                    for i, c in retry:  # the server is fine: these failures were the requests' own
                        c.device_s, c.cost_usd = carried.pop(i, (c.device_s, c.cost_usd))  # what its attempts cost, this one included
                        await final(i, c)
                    break
                if not lost and healthy and now is not None:  # another group (serve's windows share servers) restarted it meanwhile
                    endpoint = manager.endpoint_of(group.model) or endpoint
                elif not lost:
                    reason = "its process exited" if not manager.process_alive(group.model) else "it stopped answering its health check"
                    if stats.restarts >= self.config.servers.restart_attempts:
                        await fail_rest(f"server for '{group.model}' failed mid-group ({reason}) and was restarted {stats.restarts} time(s) without success")
                        break
                    stats.restarts += 1
                    if group_span is not None:
                        group_span.add_event("server_restart", {"symoe.reason": reason})
                    try:
                        asked, loaded = time.monotonic(), _loading(manager, group.model)
                        endpoint = await manager.restart(group.model, reason, seen)
                        load_s += _loaded(manager, group.model, loaded, asked)
                    except HostLost:  # the node went while its server restarted
                        lost = True
                    except ServerStartError as exc:
                        await fail_rest(f"server for '{group.model}' failed mid-group ({reason}) and could not restart: {exc.reason}")
                        break
                if lost:  # its node is gone: on to a live device (``group_moved``), with what is unanswered
                    moved_to = await serve_on(device)
                    if moved_to is None:
                        break
                    endpoint = moved_to
                self.events.emit("requests_resent", group=group.name, model=group.model, requests=len(again), node=_node(device))
                if group_span is not None:  # a restart or a move: what had no final answer is sent again
                    group_span.add_event("requests_resent", {"symoe.requests": len(again), "symoe.restarts": stats.restarts})
                seen = manager.process_pid(group.model)
                order = sorted({u for u in range(len(units)) if any(i in again for i in units[u])}) if per_request > 1 else sorted(again)
                wanted = again.__contains__
                stats.resent += len(again)
            return stats
        finally:
            await turn.aclose()
            self.progress.finish()
            if group_span is not None:
                group_span.set_attributes({"symoe.failed": stats.failed, "symoe.restarts": stats.restarts, "symoe.calls": stats.calls,
                                           "symoe.resent": stats.resent, "symoe.cached": stats.cached, "symoe.skipped": stats.skipped,
                                           "symoe.load_s": load_s})  # fmt: skip
                group_span.end()
            self.events.emit(
                "group_end", group=group.name, model=group.model, server=group.server, requests=n, node=_node(None if hosted else device),
                duration_s=round(time.monotonic() - began, 3),
                detail={"held_s": 0.0 if hosted or held_from is None else round(time.monotonic() - held_from, 3), "load_s": round(load_s, 3),
                        "failed": stats.failed, "restarts": stats.restarts, "calls": stats.calls, "resent": stats.resent,
                        "cached": stats.cached, "skipped": stats.skipped, "peak_in_flight": stats.peak_in_flight},
            )  # fmt: skip

    def _cache_key(
        self, agent: Agent, group: Group, i: int, prompt: RenderedPrompt, stream_of: StreamOf, batch: tuple[int, ...] = ()
    ) -> str | None:
        if self.cache is None:
            return None
        req = group.requests[i]
        first = group.requests[batch[0]].sample if len(batch) > 1 else req.sample
        return self.call_key(agent, group.model, stream_of(req.question_id), req.sample, prompt, first, len(batch))
