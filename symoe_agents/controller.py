"""The controller: runs a batch as stages of groups through the server manager.

1. Skill group: the skill inferencer answers every question ``samples`` times.
2. Routing (pure): keywords -> k experts per question.
3. The schedule (pure) and its placement on devices (pure): stages of lanes.
4. Each stage: release the servers it does not need (or put them to sleep), then run its
   lanes side by side; a lane runs its groups in order, acquiring each group's server.
   A group is run by the group runner (``group_runner``): a bounded pool of workers,
   each rendering its request's prompt when it sends it.

Memory: nothing here grows with the batch beyond per-question columns (the prepared
questions, their keywords and routes). Skill samples and expert answers go to the run's
store on disk (``run_store``) as they arrive and are read back when a question's
aggregation prompt is built and its record made; each record goes to ``on_result`` and is
not kept; the summary is counters.

Durability: with an answer cache, every answer is stored as it arrives, and a request
whose answer is cached is final before its group starts; a group with nothing left to send
never starts its server, so a resumed run reloads only what it still needs.

Failures: a failed call is recorded in the question's result, never dropped. When calls
fail in a way that points at the server (connection refused, timeouts) and the server is
dead or no longer answers its health check, it is restarted (``servers.restart_attempts``)
and only the unanswered requests are sent again. An expert whose server cannot start or be
restarted fails only its own requests; the run goes on. If the aggregator fails or its
answer does not parse, the question has no final answer (``final_answer``), unless the
config opts into a fallback; every record says where its final answer came from.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import gc
import inspect
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field

import psutil

from . import routing, routing_batch
from .agents import Agent, Connect, OpenAIClient, build_agent
from .cache import AnswerCache
from .methods import Method
from .alignment import Aligner, make_embedder
from .costs import Budget
from .explain import RoutingExplanation, explain_route
from .metrics import Counts
from .telemetry import RunTrace, Tracing
from .config import Config, uses_cpu
from .errors import BudgetSpent, CacheError, OutputError, ServerStartError, SymoeError
from .events import EventLog
from .summary import EventTally, OutcomeTally, RunSummary
from .final_answer import aggregator_status, consensus, decide
from .formats import AnswerFormat
from .placement import Device, Lane, Placement, Stage, place
from .preparation import Prepared, aggregation_prompt, expert_prompt, prepare_all, shown_responses, skills_prompt
from .profiles import Profile, load_profiles, read_aggregator_choice
from .prompting import RenderedPrompt
from .records import AggregatorAnswer, AggregatorStatus, Completion, ExpertAnswer, Question, QuestionResult, StageUsage, Usage
from .group_runner import GroupRunner, Progress
from .cluster import Cluster
from .turns import Turns
from .loop_lag import LoopLagProbe
from .run_store import RunStore, StoreError
from .schedule import Group, Schedule, plan_schedule, skill_group
from .skills import infer_keywords
from .extract import extract_answer
from .scoring import judged, normalize_math
from symoe_agents.servers import ServerManager

#: receives each question's record as it finishes (may be a coroutine function)
OnResult = Callable[[QuestionResult], Awaitable[None] | None]


@dataclass
class SkillResults:
    """The skill group's outcome, per question id."""

    keywords: dict[str, list[str]]
    texts: dict[str, list[str]]
    errors: dict[str, list[str]]
    truncated: dict[str, list[str]] = field(default_factory=dict)
    usage: dict[str, list] = field(default_factory=dict)  # per question: calls, cached, prompt and completion tokens, device s, USD


@dataclass
class BatchOutcome:
    """What a batch leaves besides its records (which went to ``on_result``)."""

    schedule: Schedule
    placement: Placement
    summary: RunSummary
    routing_note: str


class Controller:
    def __init__(
        self,
        config: Config,
        manager: ServerManager,
        events: EventLog,
        progress: Progress | None = None,
        cache: AnswerCache | None = None,
        connect: Connect = OpenAIClient,
        scratch_dir: str | None = None,
        cluster: Cluster | None = None,
        tracing: Tracing | None = None,
        metrics: Counts | None = None,
    ):
        """``scratch_dir``: where the run's answer store is made (default: the temporary folder).
        ``cluster``: groups run on the nodes of this Ray cluster (``cluster.py``); ``manager``
        then serves only hosted models and the servers' identities."""
        self.scratch_dir = scratch_dir
        self.config = config
        self.manager = manager
        self.events = events
        self.cluster = cluster
        self.tracing = tracing  # spans of every batch (telemetry.py); None: tracing is off
        self.metrics = metrics  # Prometheus counters (metrics.py), fed by every call and record
        self.groups = GroupRunner(config, manager, events, progress, cache, connect)
        self.groups.metrics = metrics
        # --max-cost spans the controller's life: every batch and, in eval, every method
        self.groups.budget = Budget(config.cost.max_usd) if config.cost.max_usd else None
        if cluster is not None:
            self.groups.hosts = cluster
            # one group at a time on a device: a lane moved off a lost node shares its new device
            self.groups.turns = Turns(config.serve.max_wait_s)
        self.tally = OutcomeTally()
        self.profiles: dict[str, Profile] | None = (
            load_profiles(config.profiles, config.roles.experts) if config.profiles else None
        )
        self._devices: list[Device] | None = None
        # serve: servers stay up between batches (idle ones are released by the caller), and
        # a stage that does not need a server sleeps it where it can rather than stopping it
        self.resident = False
        self._dropped: Container[str] = ()
        self._tokens_to: Mapping[str, Callable[[str], None]] = {}
        self._aligner: Aligner | None = None
        self._matches: Mapping[str, tuple[str, float]] = {}  # keyword -> (profile keyword, similarity), when explaining
        self.alignment_warning: str | None = None
        self.aggregator = config.roles.aggregator
        if config.profiles:
            chosen = read_aggregator_choice(config.profiles)
            if chosen is not None:
                if chosen not in config.models:
                    from .errors import ProfileError

                    raise ProfileError(
                        f"{config.profiles}: the chosen aggregator '{chosen}' is not a model of this config; "
                        "declare it or re-run `symoe pick-aggregator`"
                    )
                self.aggregator = chosen

    def sibling(self, cache_only: bool = False, on_serving: Callable[[Group], None] | None = None) -> "Controller":
        """A controller for another batch run at the same time (``symoe serve``'s windows):
        the same config, servers, profiles, aligner and device turns; its own batch state.
        ``cache_only``: its batches answer from the cache alone and raise ``NotCached`` at the
        first call that is not there, before any server is asked for; they log no events.
        ``on_serving(group)``: called as each of its groups gets its server (its turn)."""
        if self.profiles:
            self.aligner()  # made once, shared
        twin = copy.copy(self)
        twin.groups = copy.copy(self.groups)  # its own callbacks; a group runner keeps no state between groups
        twin.groups.on_serving = on_serving
        if cache_only:  # a probe: the window that answers counts and traces what it does
            twin.metrics = twin.groups.metrics = None
            twin.tracing = None
            twin.events = EventLog(keep=64)
            twin.groups.events = twin.events
            twin.groups.cache_only = True
        twin.tally = OutcomeTally()
        twin._dropped = ()
        twin._tokens_to = {}
        return twin

    @property
    def routing_note(self) -> str:
        if self.profiles is None:
            return "no profiles given: experts recruited uniformly at random (run `symoe profile` for skill routing)"
        note = f"experts recruited by skill profiles from {self.config.profiles}"
        if self.aggregator != self.config.roles.aggregator:
            note += f"; aggregator '{self.aggregator}' chosen by `symoe pick-aggregator`"
        return note

    # -- devices and placement ---------------------------------------------------------

    async def devices(self) -> list[Device]:
        """Where servers can run: GPU slices sized to the largest tp, or the CPU."""
        if self._devices is not None:
            if self.cluster is not None:  # a later batch plans on the devices still alive
                return self.cluster.live(self._devices) or self._devices
            return self._devices
        cfg = self.config
        needed = 0
        for name in {*cfg.roles.experts, cfg.roles.skill_inferencer, self.aggregator}:
            backend = self.manager.backend(name)
            if backend is not None:
                needed = max(needed, backend.gpus_needed())
        if self.cluster is not None:
            self._devices = self.cluster.devices(needed)
            self.cluster.start_hosts()
            return self._devices
        if needed == 0:
            ram = cfg.schedule.device_memory_gib or psutil.virtual_memory().available / 2**30
            self._devices = [Device(None, ram)]
            return self._devices
        infos = []
        if self.manager.gpu is not None:
            try:
                infos = await self.manager.gpu.gpus()
            except OSError:
                infos = []
        ids = cfg.schedule.gpus if cfg.schedule.gpus is not None else [g.index for g in infos] or [0]
        total = {g.index: g.total_mib / 1024 for g in infos}
        slices = [tuple(ids[i : i + needed]) for i in range(0, len(ids) - needed + 1, needed)] or [tuple(ids)]
        self._devices = [
            Device(s, cfg.schedule.device_memory_gib or (min(total[i] for i in s) if all(i in total for i in s) else None))
            for s in slices
        ]
        if self.resident:  # serve: one device, whose turns (``turns``) order every window's groups
            self._devices = self._devices[:1]
        self.manager.divide_cores(len(self._devices))  # lanes on several devices run side by side
        return self._devices

    def memory_by_server(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, model in self.config.models.items():
            key = self.manager.server_key(name)
            if key is not None and out.get(key) is None:
                out[key] = getattr(model, "memory_gib", None)
        return out

    async def place(self, schedule: Schedule) -> Placement:
        opts = self.config.schedule
        # serve runs one server at a time per device, in turns, across windows: a window's own
        # co-residency or early start would load beside servers other windows are using
        return place(
            schedule, await self.devices(), self.memory_by_server(),
            co_residency=opts.co_residency and not self.resident and self.cluster is None,
            overlap=opts.overlap and not self.resident and self.cluster is None, sleep=opts.sleep,
        )  # fmt: skip

    # -- stages ------------------------------------------------------------------------

    def call_key(self, agent: Agent, model: str, stream: str, sample: int, prompt: RenderedPrompt, first: int | None = None, n: int = 1) -> str:
        """The answer cache's key of one call (see ``GroupRunner.call_key``)."""
        return self.groups.call_key(agent, model, stream, sample, prompt, first, n)

    async def _run_stage(self, stage: Stage, later: list[Stage], run_group: Callable[..., object]) -> None:
        """Release what this stage does not need, then run its lanes side by side."""
        needed = set(stage.servers)
        if not self.resident:  # serve: batches share the servers, which take turns (``turns``) instead
            for manager in self._managers():
                manager.reuse_later = {s for st in later for s in st.servers}
                for key in manager.running_keys():
                    if key not in needed:
                        await manager.release(key)
        lanes_per_device = Counter(lane.device.name for lane in stage.lanes)
        multi = len(stage.lanes) > 1

        total = sum(len(g.requests) for lane in stage.lanes for g in lane.groups)
        admitted = 0
        prestart: asyncio.Task[None] | None = None

        def on_admitted() -> None:
            nonlocal admitted, prestart
            admitted += 1
            if admitted == total and stage.prestart_next and later and prestart is None:
                prestart = asyncio.ensure_future(self._prestart(later[0]))

        halted: list[SymoeError] = []

        async def run_lane(lane: Lane) -> None:
            co_resident = lanes_per_device[lane.device.name] > 1
            device: Device | None = lane.device
            for k, group in enumerate(lane.groups):
                if self.cluster is not None:  # its node lost: the lane goes on where its groups moved
                    device = await self.cluster.where(lane.device) or lane.device
                try:
                    await run_group(group, device, co_resident, on_admitted, not multi)
                except (CacheError, OutputError, StoreError, BudgetSpent) as exc:  # a stuck cache, a full disk, --max-cost: this lane stops; the others drain
                    halted.append(exc)  # what they have in flight (raising here would cancel it) and stop at their next send
                    return
                if self.cluster is not None:  # it may have moved mid-group: its server is where it ended
                    device = await self.cluster.where(lane.device) or device
                nxt = lane.groups[k + 1] if k + 1 < len(lane.groups) else None
                if multi and not self.resident and group.server and (nxt is None or nxt.server != group.server):
                    others = {g.server for ln in stage.lanes if ln is not lane for g in ln.groups}
                    if group.server not in others and group.server not in {s for st in later[:1] for s in st.servers}:
                        await self._manager_of(device).release(group.server)

        try:
            async with asyncio.TaskGroup() as tg:
                for lane in stage.lanes:
                    tg.create_task(run_lane(lane))
            if halted:
                raise halted[0]
        except BaseException:
            if prestart is not None:  # a start under way for a stage that will not run: cut short, not awaited in full
                prestart.cancel()
                await asyncio.gather(prestart, return_exceptions=True)
            raise
        if prestart is not None:
            await prestart

    def _managers(self) -> list:
        """Whatever runs servers: this machine's manager, and the cluster's live hosts."""
        return [self.manager, *(self.cluster.hosts() if self.cluster is not None else ())]

    def _manager_of(self, device: Device | None):
        return self.cluster.host(device) if self.cluster is not None and device is not None and device.node else self.manager

    async def _release_all(self) -> None:
        await self.manager.release_all()
        if self.cluster is not None:
            await self.cluster.release_all()

    async def _prestart(self, stage: Stage) -> None:
        """Overlap: start the next stage's new servers while this stage's last requests decode."""
        for lane in stage.lanes:
            for group in lane.groups[:1]:
                try:
                    await self.manager.acquire(group.model, exclusive=False, gpu_ids=lane.device.gpu_ids)
                except Exception:  # the stage itself will try again and record the failure
                    return

    # -- the batch -------------------------------------------------------------------

    async def infer_skills(self, prepared: list[Prepared], store: RunStore | None = None) -> SkillResults:
        """Every question's skill samples and keywords. With ``store`` the samples' texts go
        there as they arrive (a question's keywords are read off them once all its samples
        are in), else they are kept in ``texts``."""
        cfg = self.config
        samples = cfg.sampling.skill_inferencer.samples
        model = cfg.roles.skill_inferencer
        agent = build_agent(cfg, "skill_inferencer", model)
        group = skill_group([p.question.id for p in prepared], model, self.manager.server_key(model), samples)
        by_id = {p.question.id: p for p in prepared}
        out = SkillResults({}, {}, {})
        arriving: dict[str, list] = {}  # a question's [count, texts] until all its samples are in
        unavailable: list[str] = []

        def prompt_of(i: int) -> RenderedPrompt | str:
            qid = group.requests[i].question_id
            return "dropped" if qid in self._dropped else skills_prompt(agent.template, by_id[qid])

        def on_final(i: int, c: Completion) -> None:
            req = group.requests[i]
            qid = req.question_id
            if c.error:
                out.errors.setdefault(qid, []).append(f"skill sample {req.sample}: {c.error}")
                if c.error.startswith("server unavailable"):
                    unavailable.append(c.error)
            if c.truncated:
                out.truncated.setdefault(qid, []).append(f"skills {model} (sample {req.sample})")
            entry = arriving.setdefault(qid, [0, [""] * samples])
            entry[1][req.sample] = c.text or ""
            entry[0] += 1
            if store is not None:
                store.put(qid, "skills", req.sample, c.text or "")
            self.tally.prompt_tokens += c.prompt_tokens
            self.tally.completion_tokens += c.completion_tokens
            used = out.usage.setdefault(qid, [0, 0, 0, 0, 0.0, 0.0])
            used[0] += 1
            used[1] += c.cached
            used[2] += c.prompt_tokens
            used[3] += c.completion_tokens
            if not c.cached:  # paid by an earlier run
                used[4] += c.device_s
                used[5] += c.cost_usd
            if entry[0] == samples:  # each sample is final exactly once
                del arriving[qid]
                out.keywords[qid] = infer_keywords(entry[1])
                if store is None:
                    out.texts[qid] = entry[1]

        await self.groups.run(group, agent, prompt_of, on_final, (await self.devices())[0], stream_of=lambda q: by_id[q].stream)
        if unavailable:
            raise ServerStartError(model, f"the skill inferencer is needed before routing can start ({unavailable[0]})")
        for qid in by_id:
            out.keywords.setdefault(qid, [])
        return out

    def aligner(self) -> Aligner:
        """Maps keywords onto the profiles' vocabulary (made once; needs profiles)."""
        assert self.profiles
        if self._aligner is None:
            embedder, warning = make_embedder(self.config.alignment)
            self._aligner = Aligner(list(dict.fromkeys(s for p in self.profiles.values() for s in p.skills)), embedder)
            self.alignment_warning = warning
        return self._aligner

    async def route(self, keywords: dict[str, list[str]], streams: dict[str, str] | None = None) -> dict[str, routing.Route]:
        """Experts per question; ``streams[id]`` keys a question's draws (its content)."""
        cfg = self.config
        profiles = {m: p.skills for m, p in self.profiles.items()} if self.profiles else None
        detail: dict[str, object] = {"method": "profiles" if profiles else "uniform-no-profiles"}
        align = routing.exact_align
        if profiles is not None:
            matches = await self.aligner().matches({k for kws in keywords.values() for k in kws})
            mapping = {k: target for k, (target, _) in matches.items()}
            if cfg.explain:  # the records' explanations read the similarities (the batch's distinct keywords)
                self._matches = matches
            detail["alignment"] = self._aligner.method
            if self.alignment_warning:
                detail["warning"] = self.alignment_warning

            def align(kws: list[str], vocabulary: list[str]) -> list[str]:
                return [mapping[k] for k in kws if k in mapping]

        # numpy over the whole batch (1.4 s at 100,000 questions): on a worker thread, so the
        # loop keeps answering (a Ctrl-C, other groups, a host app) meanwhile
        routes = await asyncio.to_thread(
            routing_batch.route_batch,
            [(qid, kws) for qid, kws in keywords.items()],
            cfg.roles.experts, cfg.k, cfg.seed, profiles, cfg.min_share, align, streams,
        )  # fmt: skip
        picks = Counter(e for r in routes.values() for e in r.experts)
        detail["picks"] = dict(sorted(picks.items()))
        detail["no_keywords"] = sum(1 for r in routes.values() if r.method == "uniform-no-keywords")
        self.events.emit("routing", detail=detail)
        return routes

    async def run(
        self,
        questions: Sequence[Question],
        dry_run: bool = False,
        on_result: OnResult | None = None,
        method: Method | None = None,
        tokens_to: Mapping[str, Callable[[str], None]] | None = None,
        dropped: Container[str] = (),
    ) -> BatchOutcome:
        """Solve a batch; each record goes to ``on_result`` as its question finishes (none
        is kept here). ``method`` swaps the routing policy for the baselines of ``eval``.
        ``tokens_to[id]``: receives that question's aggregator response as it is written
        (the call is streamed). ``dropped``: ids whose asker has gone (a live container, read
        before each call): their calls not yet sent are skipped and they get no record."""
        self.method = method or Method("symoe", "skills", self.config.k)
        self._dropped = dropped
        self._tokens_to = tokens_to or {}
        self._matches = {}
        self.tally = OutcomeTally()
        prepared = await asyncio.to_thread(prepare_all, questions)  # a hash and a format per question
        events = EventTally()
        probe = LoopLagProbe()
        store: RunStore | None = None
        self.events.listen(events.add)
        traced = self.groups.trace = self.tracing.run(self.method.name, len(questions)) if self.tracing is not None else None
        failure: BaseException | None = None
        probe.start()
        try:
            self.events.emit("run_start", requests=len(questions))
            if not dry_run:
                store = await asyncio.to_thread(RunStore, self.scratch_dir)
            return await self._run(prepared, store, dry_run, on_result, events, probe)
        except BaseExceptionGroup as group:
            # an error raised by a callback (a full disk under ``on_result``, a store that
            # cannot be read) reaches here wrapped by each task group it crossed: the caller
            # gets the error itself, as it would from a plain call
            leaf = _first_symoe_error(group)
            failure = leaf or group
            if leaf is None:
                raise
            raise leaf from None
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if traced is not None:
                traced.close(failure)
                self.groups.trace = None
            try:
                probe.stop()
                if not self.resident:
                    await self._release_all()
            finally:
                if not self.resident:
                    gc.unfreeze()
                self._dropped = ()
                self.events.unlisten(events.add)
                if store is not None:
                    await asyncio.shield(store.aclose())

    async def _routes_for(self, prepared: list[Prepared], store: RunStore | None = None) -> tuple[SkillResults, dict[str, routing.Route]]:
        """Skills (when the method uses them) and the experts per question."""
        m = self.method
        streams = {p.question.id: p.stream for p in prepared}
        if m.needs_skills:
            warm = None
            # load the embedder while the skill group decodes, not after it; not beside a CPU
            # server, which has every core (two busy jobs on its cores slow it more than the load)
            skill_model = self.config.model(self.config.roles.skill_inferencer)
            if self.profiles and not uses_cpu(skill_model):
                warm = asyncio.ensure_future(self.aligner().prepare())
            try:
                skills = await self.infer_skills(prepared, store)
            except BaseException:
                if warm is not None:
                    warm.cancel()
                    await asyncio.gather(warm, return_exceptions=True)
                raise
            if warm is not None:  # a failure here is raised by routing, if it needs the embedder
                await asyncio.gather(warm, return_exceptions=True)
            began = time.time()
            routes = await self.route(skills.keywords, streams)
            if self.groups.trace is not None:
                await self.groups.trace.routing(routes, began, time.time())
            if m.k != self.config.k:
                routes = {q: routing.Route(r.experts[: m.k], r.method, r.keywords, r.probabilities, r.replaced) for q, r in routes.items()}
            return skills, routes
        ids = list(streams)
        skills = SkillResults({q: [] for q in ids}, {}, {})
        began = time.time()
        if m.routing == "fixed":
            routes = {q: routing.Route(m.fixed, "fixed") for q in ids}
        else:
            routes = await asyncio.to_thread(
                functools.partial(routing_batch.route_batch, [(q, []) for q in ids], self.config.roles.experts, m.k, self.config.seed, None, draw_keys=streams)
            )
        if self.groups.trace is not None:
            await self.groups.trace.routing(routes, began, time.time())
        self.events.emit("routing", detail={"method": m.name, "picks": dict(Counter(e for r in routes.values() for e in r.experts))})
        return skills, routes

    async def _run(self, prepared: list[Prepared], store: RunStore | None, dry_run: bool, on_result: OnResult | None,
                   events: EventTally, probe: LoopLagProbe) -> BatchOutcome:  # fmt: skip
        cfg = self.config
        skills, routes = await self._routes_for(prepared, store)
        schedule = plan_schedule(
            [p.question.id for p in prepared], routes, self.manager.server_keys(),
            cfg.roles.skill_inferencer, self.aggregator, cfg.sampling.skill_inferencer.samples,
        )  # fmt: skip
        placement = await self.place(schedule)
        # the batch's columns live as long as the run: keep the collector from scanning them
        # again in every full collection (at 100,000 questions one took most of a second of
        # the loop's time; they are unfrozen when the run ends). Not in serve: its windows
        # overlap, and the freeze is the whole process's
        if not self.resident:
            gc.freeze()

        if dry_run:
            self.events.emit("run_end")
            return BatchOutcome(schedule, placement, self._summary(events), self.routing_note)

        assert store is not None
        run = _Batch({p.question.id: p for p in prepared}, skills, routes, self.method.k, on_result, store, self.groups.trace)
        stages = list(placement.stages[1:])  # the skill stage already ran
        for layer in range(self.method.layers):
            for i, stage in enumerate(stages[:-1]):

                async def run_expert(group: Group, device, co_resident, on_admitted, exclusive, layer=layer) -> None:
                    await self._run_expert_group(group, run, layer, device, co_resident, on_admitted, exclusive)

                later = stages[i + 1 :] if layer == self.method.layers - 1 else stages[i:]
                await self._run_stage(stage, later, run_expert)

        async def run_aggregate(group: Group, device, co_resident, on_admitted, exclusive) -> None:
            await self._run_aggregation(group, run, device, exclusive)

        if self.method.aggregate:
            await self._run_stage(stages[-1], [], run_aggregate)
        else:  # majority vote of the experts' extracted answers, no aggregator call
            for p in prepared:
                await self._finish(run, p.question.id, None, None, None)
        if not self.resident:
            await self._release_all()
        self.events.emit("run_end", detail={"loop_lag_ms": probe.stop()})
        return BatchOutcome(schedule, placement, self._summary(events), self.routing_note)

    async def _expert_answers(self, run: "_Batch", qid: str, layer: int) -> list[ExpertAnswer | None]:
        """A question's answers of one layer, by slot (None: that slot has none yet)."""
        role = f"expert{layer}"
        stored = (await run.store.get(qid, role))[role]
        return [ExpertAnswer.model_validate_json(stored[s]) if s in stored else None for s in range(run.k)]

    async def _run_expert_group(self, group: Group, run: "_Batch", layer: int = 0, device=None, co_resident=False,
                                on_admitted=None, exclusive=True) -> None:  # fmt: skip
        """One expert group. In a Mixture-of-Agents layer after the first, each proposer
        answers again, shown the previous layer's responses."""
        agent = build_agent(self.config, "expert", group.model)
        refine = build_agent(self.config, "aggregator", group.model) if layer > 0 else None
        pdir = self.config.prompts_dir

        async def prompt_of(i: int) -> RenderedPrompt | str:
            p = run.by_id[group.requests[i].question_id]
            if p.question.id in self._dropped:
                return "dropped"
            if refine is not None:
                prior = shown_responses([a.text for a in await self._expert_answers(run, p.question.id, layer - 1) if a is not None])
                if prior:
                    return aggregation_prompt(refine.template, p, prior, pdir)
            return expert_prompt(agent.template, p, pdir)

        def on_final(i: int, c: Completion) -> None:
            req = group.requests[i]
            p = run.by_id[req.question_id]
            answer = ExpertAnswer(**_fields(c), slot=req.sample, extracted=extract_answer(c.text, p.fmt, p.letters, p.question.question))
            run.store.put(req.question_id, f"expert{layer}", req.sample, answer.model_dump_json())
            label = f"expert {group.model} (slot {req.sample})"
            if layer > 0:  # the slot's earlier layer is replaced: its failure no longer stands,
                errors = run.errors.get(req.question_id)  # but a cut-off call was still made (and its tokens counted)
                if errors:
                    errors[:] = [n for n in errors if not n.startswith(label)]
                cut = run.truncated.get(req.question_id)
                if cut:
                    cut[:] = [f"{n}, an earlier layer" if n == label else n for n in cut]
            if c.error:
                run.errors.setdefault(req.question_id, []).append(f"{label}: {c.error}")
            if c.truncated:
                run.truncated.setdefault(req.question_id, []).append(label)

        await self.groups.run(group, agent, prompt_of, on_final, device, co_resident, on_admitted, exclusive, stream_of=run.stream_of)

    async def _run_aggregation(self, group: Group, run: "_Batch", device=None, exclusive=True) -> None:
        """The aggregation group: one call per question, unless the question is skipped
        (no expert answered, or, with ``aggregate = "on-disagreement"``, the experts agree)."""
        cfg = self.config
        agent = build_agent(cfg, "aggregator", group.model)
        pdir = cfg.prompts_dir
        on_disagreement = cfg.aggregate == "on-disagreement"
        last = self.method.layers - 1

        async def prompt_of(i: int) -> RenderedPrompt | str:
            qid = group.requests[i].question_id
            if qid in self._dropped:
                return "dropped"
            answers = await self._expert_answers(run, qid, last)
            if on_disagreement:
                agreed = consensus([a.extracted if a is not None else None for a in answers], run.k, _same_as(run.by_id[qid]))
                if agreed is not None:
                    run.agreed[qid] = agreed
                    return "skipped-consensus"
            responses = shown_responses([a.text for a in answers if a is not None])
            if not responses:
                return "no-expert-answers"
            return aggregation_prompt(agent.template, run.by_id[qid], responses, pdir)

        async def on_skip(i: int, why: str) -> None:
            qid = group.requests[i].question_id
            if why == "dropped":
                run.forget(qid)
                return
            if why == "no-expert-answers":
                run.errors.setdefault(qid, []).append("aggregator skipped: no expert answered")
            await self._finish(run, qid, group.model, None, why)  # type: ignore[arg-type]

        async def on_final(i: int, c: Completion) -> None:
            qid = group.requests[i].question_id
            p = run.by_id[qid]
            if c.error:
                run.errors.setdefault(qid, []).append(f"aggregator {group.model}: {c.error}")
            if c.truncated:
                run.truncated.setdefault(qid, []).append(f"aggregator {group.model}")
            extracted = extract_answer(c.text, p.fmt, p.letters, p.question.question)
            answer = AggregatorAnswer(**_fields(c), extracted=extracted)
            await self._finish(run, qid, group.model, answer, aggregator_status(c, extracted))

        tokens_to = self._tokens_to

        def delta_of(i: int) -> Callable[[str], None] | None:
            return tokens_to.get(group.requests[i].question_id)

        await self.groups.run(group, agent, prompt_of, on_final, device, exclusive=exclusive, stream_of=run.stream_of, on_skip=on_skip,
                              delta_of=delta_of if tokens_to else None)  # fmt: skip

    async def _finish(self, run: "_Batch", qid: str, aggregator: str | None, agg: AggregatorAnswer | None, status: AggregatorStatus | None) -> None:
        """Assemble one question's record from the store, hand it on, and forget the
        question. ``status`` None: the method has no aggregator."""
        if qid in self._dropped:  # its asker has gone: no record
            run.forget(qid)
            return
        p = run.by_id[qid]
        last = self.method.layers - 1
        roles = ["skills", *(f"expert{layer}" for layer in range(last + 1))]
        stored = await run.store.get(qid, *roles)
        usage = Usage()
        calls, cached, prompt_tokens, completion_tokens, device_s, cost_usd = run.skills.usage.pop(qid, (0, 0, 0, 0, 0.0, 0.0))
        usage.skills = StageUsage(calls=calls, cached=cached, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                  device_s=device_s, cost_usd=cost_usd)  # fmt: skip
        for layer in range(last):  # an earlier Mixture-of-Agents layer's tokens still count
            for body in stored[f"expert{layer}"].values():
                earlier = ExpertAnswer.model_validate_json(body)
                usage.experts.add(earlier)
                self.tally.prompt_tokens += earlier.prompt_tokens
                self.tally.completion_tokens += earlier.completion_tokens
        kept = stored[f"expert{last}"]
        answers = [ExpertAnswer.model_validate_json(kept[s]) for s in range(run.k) if s in kept]
        for a in answers:
            usage.experts.add(a)
        if agg is not None:
            usage.aggregator.add(agg)
        final, source = decide(
            status, agg.extracted if agg else None, [a.extracted for a in answers], self.config.fallback, run.agreed.pop(qid, None), _same_as(p)
        )
        gold = p.question.gold_answer
        correct = await judged(final, gold, p.fmt) if gold is not None else None
        skill_texts = stored["skills"]
        route = run.routes[qid]
        result = QuestionResult(
            id=qid, question=p.question.question, answer_format=p.fmt, option_letters=p.letters,
            category=p.question.category, skills=run.skills.keywords.get(qid, []),
            skill_samples=[skill_texts[s] for s in sorted(skill_texts)] if skill_texts else run.skills.texts.get(qid, []),
            routing=route.method, experts=list(route.experts), expert_answers=answers,
            aggregator=aggregator, aggregator_response=agg.text if agg else None, aggregator_answer=agg,
            aggregator_status=status, final_answer=final, final_source=source, gold_answer=gold,
            correct=correct, errors=run.errors.pop(qid, []), truncated=_in_call_order(run.truncated.pop(qid, [])), usage=usage,
            routing_explanation=self._explain(route, run.skills.keywords.get(qid, []), p.stream) if self.config.explain else None,
        )  # fmt: skip
        self.tally.count(result)
        if self.groups.trace is not None:
            self.groups.trace.done(result)
        if self.metrics is not None:
            self.metrics.question(result)
        if run.on_result is not None:
            done = run.on_result(result)
            if inspect.isawaitable(done):
                await done

    def _explain(self, route: routing.Route, raw_keywords: list[str], draw_key: str) -> RoutingExplanation:
        profiles, gamma = self._pool_profiles
        return explain_route(route, raw_keywords, self._matches, profiles, gamma, self.config.roles.experts, self.config.seed, draw_key)

    @functools.cached_property
    def _pool_profiles(self) -> tuple[dict[str, Mapping[str, float]] | None, dict[str, float] | None]:
        """The pool's profiles and global competence, made once: the profiles do not change
        while the controller lives, and every explained record reads them."""
        if not self.profiles:
            return None, None
        profiles = {m: self.profiles[m].skills for m in self.config.roles.experts}
        return profiles, routing.global_competence({m: sum(p.values()) for m, p in profiles.items()})

    def _summary(self, events: "EventTally") -> RunSummary:
        summary = events.summary()
        self.tally.fill(summary)
        return summary


def _first_symoe_error(group: BaseExceptionGroup) -> SymoeError | None:
    for exc in group.exceptions:
        if isinstance(exc, SymoeError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_symoe_error(exc)
            if found is not None:
                return found
    return None


def _same_as(p: Prepared) -> Callable[[str], str]:
    """When two extracted answers are one vote: math answers by their normal form ("033"
    and "33"), letters and free text as written."""
    return normalize_math if p.fmt is AnswerFormat.MATH else str


_CALL_RANK = {"skills": 0, "expert": 1, "aggregator": 2}
_CALL_NUMBER = re.compile(r"\((?:sample|slot) (\d+)\)")


def _in_call_order(cuts: list[str]) -> list[str]:
    """A question's cut-off calls in a fixed order: skill samples, expert slots, the
    aggregator, each by number. They are noted as they finish, and on a batching server two
    calls of one question finish in either order; a layer's earlier entry stays first."""

    def key(label: str) -> tuple[int, int]:
        number = _CALL_NUMBER.search(label)
        return _CALL_RANK.get(label.split(" ", 1)[0], len(_CALL_RANK)), int(number.group(1)) if number else 0

    return sorted(cuts, key=key)


def _fields(c: Completion) -> dict:
    """A completion's stored fields, to build an answer record from (``truncated`` is derived)."""
    return c.model_dump(exclude={"truncated"})


@dataclass
class _Batch:
    """What one batch holds per question while it runs: compact columns only; answers are
    in ``store``, and a question's notes are dropped when its record is made."""

    by_id: dict[str, Prepared]
    skills: SkillResults
    routes: dict[str, routing.Route]
    k: int
    on_result: OnResult | None
    store: RunStore
    trace: RunTrace | None = None
    agreed: dict[str, str] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    truncated: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.errors, self.truncated = self.skills.errors, self.skills.truncated  # the skill group's notes go on

    def stream_of(self, qid: str) -> str:
        return self.by_id[qid].stream

    def forget(self, qid: str) -> None:
        """A dropped question's notes go (it gets no record)."""
        if self.trace is not None:
            self.trace.dropped(qid)
        self.agreed.pop(qid, None)
        self.errors.pop(qid, None)
        self.truncated.pop(qid, None)
        self.skills.usage.pop(qid, None)
