"""The controller: runs a batch as stages of groups through the server manager.

1. Skill group: the skill inferencer answers every question ``samples`` times.
2. Routing (pure): keywords -> k experts per question.
3. The schedule (pure) and its placement on devices (pure): stages of lanes.
4. Each stage: release the servers it does not need (or put them to sleep), then run its
   lanes side by side; a lane runs its groups in order, acquiring each group's server.
   A group sends all its requests concurrently under the runner's bounds.

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
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import psutil

from . import routing, routing_batch
from .agents import Agent, AgentRunner, build_agent, sampling_params
from .cache import AnswerCache, CallIdentity
from .methods import Method
from .alignment import Aligner, make_embedder
from .config import Config, OpenAIModel, prompt_cache_slots, samples_per_request, uses_cpu
from .errors import ServerStartError
from .events import EventLog, RunSummary, summarize_events
from .final_answer import aggregator_status, consensus, decide
from .formats import AnswerFormat
from .placement import Device, Lane, Placement, Stage, place
from .preparation import Prepared, aggregation_prompt, expert_prompt, prepare_all, shown_responses
from .profiles import Profile, load_profiles, read_aggregator_choice
from .prompting import RenderedPrompt
from .records import AggregatorAnswer, AggregatorStatus, Completion, ExpertAnswer, Question, QuestionResult
from .dispatch import dispatch, pool_size, sample_batches
from .schedule import Group, Schedule, plan_schedule, skill_group
from .skills import infer_keywords
from symoe_agents.eval import extract_answer, is_correct, normalize_math
from symoe_agents.servers import ServerManager
from symoe_agents.servers.gpu import MemoryShare


class Progress(Protocol):
    def start(self, group: str, total: int) -> None: ...
    def advance(self) -> None: ...
    def finish(self) -> None: ...


class _NoProgress:
    def start(self, group: str, total: int) -> None:
        pass

    def advance(self) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass
class SkillResults:
    """The skill group's outcome, per question id."""

    keywords: dict[str, list[str]]
    texts: dict[str, list[str]]
    errors: dict[str, list[str]]
    truncated: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class BatchOutcome:
    results: list[QuestionResult]
    schedule: Schedule
    placement: Placement
    summary: RunSummary
    routing_note: str


#: request index -> the prompt to send, or a string: the reason it is not sent (on_skip gets it)
PromptOf = Callable[[int], RenderedPrompt | str]
#: request index, final completion
OnFinal = Callable[[int, Completion], None]
#: request index, why it was not sent
OnSkip = Callable[[int, str], None]
#: question id -> its random stream (``Prepared.stream``): seeds the request's sampling
StreamOf = Callable[[str], str]


def _same_id(question_id: str) -> str:
    return question_id


class Controller:
    def __init__(
        self,
        config: Config,
        manager: ServerManager,
        events: EventLog,
        progress: Progress | None = None,
        cache: AnswerCache | None = None,
    ):
        self.config = config
        self.manager = manager
        self.events = events
        self.progress = progress or _NoProgress()
        self.cache = cache  # None: every call is sent
        self.profiles: dict[str, Profile] | None = (
            load_profiles(config.profiles, config.roles.experts) if config.profiles else None
        )
        self._skill_tokens = [0, 0]  # tokens not kept in the records: skill samples, earlier MoA layers
        self._devices: list[Device] | None = None
        self._aligner: Aligner | None = None
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
            return self._devices
        cfg = self.config
        needed = 0
        for name in {*cfg.roles.experts, cfg.roles.skill_inferencer, self.aggregator}:
            backend = self.manager.backend(name)
            if backend is not None:
                needed = max(needed, backend.gpus_needed())
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
        return place(
            schedule, await self.devices(), self.memory_by_server(),
            co_residency=opts.co_residency, overlap=opts.overlap, sleep=opts.sleep,
        )  # fmt: skip

    async def _share(self, model: str, device: Device, co_resident: bool) -> MemoryShare | None:
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

    # -- one group -------------------------------------------------------------------

    async def _run_group(
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
    ) -> None:
        """Acquire the group's server and run every request to a final completion, restarting
        a server that dies or hangs; ``on_final(i, completion)`` receives each result once,
        ``on_skip(i, why)`` each request ``prompt_of`` declined (not sent, not a failure)."""
        n = len(group.requests)
        began = time.monotonic()
        hosted = isinstance(self.config.model(group.model), OpenAIModel)
        self.events.emit("group_start", group=group.name, model=group.model, server=group.server, requests=n)
        failed = restarts = calls = resent = cached = skipped = peak = 0
        finished: set[int] = set()

        def final(i: int, c: Completion) -> None:
            nonlocal failed
            finished.add(i)
            if c.error:
                failed += 1
                req = group.requests[i]
                self.events.emit("request_failed", group=group.name, model=group.model,
                                 detail={"question": req.question_id, "sample": req.sample, "error": c.error})  # fmt: skip
            on_final(i, c)
            self.progress.advance()

        def fail_rest(reason: str) -> None:
            for i in range(n):
                if i not in finished:
                    final(i, Completion(model=group.model, error=reason))

        self.progress.start(group.name, n)
        try:
            cache = self.cache
            rendered: dict[int, RenderedPrompt] = {}
            for i in range(n):  # skipped and cached requests are final before any server starts
                prompt = prompt_of(i)
                if isinstance(prompt, str):
                    skipped += 1
                    finished.add(i)
                    if on_skip is not None:
                        on_skip(i, prompt)
                    self.progress.advance()
                    continue
                rendered[i] = prompt
            # samples of one prompt that go in one request (n), planned from the whole group; a
            # request never holds more sequences than the group may have in flight
            in_flight = self.config.in_flight(group.model)
            batches = sample_batches(
                {i: ((group.requests[i].question_id, p.sha256), group.requests[i].sample) for i, p in rendered.items()},
                min(samples_per_request(self.config.model(group.model)), in_flight),
            )
            prompts: dict[int, tuple[RenderedPrompt, str | None]] = {}
            for i, prompt in rendered.items():
                key = self._cache_key(agent, group, i, prompt, stream_of, batches[i])
                hit = cache.get(key) if cache is not None and key is not None else None
                if hit is not None:
                    cached += 1
                    final(i, hit)
                else:
                    prompts[i] = (prompt, key)
            if not prompts:
                return  # everything was cached: the server is not needed
            try:
                endpoint = await self.manager.acquire(
                    group.model,
                    exclusive=exclusive and not co_resident,
                    gpu_ids=device.gpu_ids if device else None,
                    share=await self._share(group.model, device, co_resident) if device else None,
                )
            except Exception as exc:  # ServerStartError, or a hosted endpoint without its key
                fail_rest(f"server unavailable: {str(exc).splitlines()[0]}")
                return
            slots = prompt_cache_slots(self.config.model(group.model))
            pending = sorted(prompts)
            while pending:
                retry: list[tuple[int, Completion]] = []
                server_down = asyncio.Event()

                def proceed() -> bool:  # a local server seen dead: stop sending it requests
                    return hosted or (not server_down.is_set() and self.manager.process_alive(group.model))

                # a unit is one request: a whole batch (members not yet final are the ones
                # that count), sent again whole if any member needs it, so that its samples
                # are always the ones its cache keys name
                wanted = set(pending)
                units = sorted({batches[i] for i in pending})
                # in flight counts sequences, the server's slots: the runner admits a request
                # of n samples as n sequences; the pool has workers enough to fill the slots
                # with the narrowest requests
                narrowest = min(len(m) for m in units)
                async with AgentRunner(endpoint, self.config.concurrency, self.config.seed, in_flight) as runner:

                    async def one(u: int) -> None:  # proceed() keeps it from a server already seen dead
                        members = units[u]
                        todo = [i for i in members if i in wanted]
                        first = group.requests[members[0]]

                        def admitted() -> None:  # counted when it leaves the queue for the server
                            for i in todo:
                                key = prompts[i][1]
                                if cache is not None and key is not None:
                                    cache.note_attempt(key)
                                if on_admitted is not None:
                                    on_admitted()

                        prompt = prompts[todo[0]][0]
                        stream = stream_of(first.question_id)
                        results = await runner.call_many(agent, prompt, stream, first.sample, len(members), admitted, proceed)
                        for i, c in zip(members, results):
                            if i not in wanted:
                                continue  # final already (cached, or answered before a restart)
                            req, key = group.requests[i], prompts[i][1]
                            if cache is not None and key is not None:
                                cache.put(key, c, agent.role, req.question_id, req.sample)  # kept the moment it arrives (answers only)
                            if c.error and c.retryable and not hosted:
                                retry.append((i, c))
                                if not self.manager.process_alive(group.model):
                                    server_down.set()  # do not spend the others' retries on a dead server
                                continue
                            final(i, c)

                    question_of = lambda u: group.requests[units[u][0]].question_id  # noqa: E731
                    per_question = Counter(question_of(u) for u in range(len(units)))
                    workers, per_key = pool_size(per_question, max(1, in_flight // narrowest), slots and max(1, slots // narrowest))
                    await dispatch(range(len(units)), one, question_of, workers, per_key)
                    calls += runner.calls_sent
                    peak = max(peak, runner.peak_in_flight)
                if not retry:
                    break
                if await self.manager.healthy(group.model):
                    for i, c in retry:  # the server is fine: these failures were the requests' own
                        final(i, c)
                    break
                reason = "its process exited" if not self.manager.process_alive(group.model) else "it stopped answering its health check"
                if restarts >= self.config.servers.restart_attempts:
                    fail_rest(f"server for '{group.model}' failed mid-group ({reason}) and was restarted {restarts} time(s) without success")
                    break
                restarts += 1
                try:
                    endpoint = await self.manager.restart(group.model, reason)
                except ServerStartError as exc:
                    fail_rest(f"server for '{group.model}' failed mid-group ({reason}) and could not restart: {exc.reason}")
                    break
                pending = sorted(i for i, _ in retry)
                resent += len(pending)
                self.events.emit("requests_resent", group=group.name, model=group.model, requests=len(pending))
        finally:
            self.progress.finish()
            self.events.emit(
                "group_end", group=group.name, model=group.model, server=group.server, requests=n,
                duration_s=round(time.monotonic() - began, 3),
                detail={"failed": failed, "restarts": restarts, "calls": calls, "resent": resent, "cached": cached, "skipped": skipped,
                        "peak_in_flight": peak},
            )  # fmt: skip

    def _cache_key(
        self, agent: Agent, group: Group, i: int, prompt: RenderedPrompt, stream_of: StreamOf, batch: tuple[int, ...] = ()
    ) -> str | None:
        if self.cache is None:
            return None
        req = group.requests[i]
        first = group.requests[batch[0]].sample if len(batch) > 1 else req.sample
        return self.call_key(agent, group.model, stream_of(req.question_id), req.sample, prompt, first, len(batch))

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

    # -- stages ------------------------------------------------------------------------

    async def _run_stage(self, stage: Stage, later: list[Stage], run_group: Callable[..., object]) -> None:
        """Release what this stage does not need, then run its lanes side by side."""
        needed = set(stage.servers)
        self.manager.reuse_later = {s for st in later for s in st.servers}
        for key in self.manager.running_keys():
            if key not in needed:
                await self.manager.release(key)
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

        async def run_lane(lane: Lane) -> None:
            co_resident = lanes_per_device[lane.device.name] > 1
            for k, group in enumerate(lane.groups):
                await run_group(group, lane.device, co_resident, on_admitted, not multi)
                nxt = lane.groups[k + 1] if k + 1 < len(lane.groups) else None
                if multi and group.server and (nxt is None or nxt.server != group.server):
                    others = {g.server for ln in stage.lanes if ln is not lane for g in ln.groups}
                    if group.server not in others and group.server not in {s for st in later[:1] for s in st.servers}:
                        await self.manager.release(group.server)

        try:
            async with asyncio.TaskGroup() as tg:
                for lane in stage.lanes:
                    tg.create_task(run_lane(lane))
        except BaseException:
            if prestart is not None:  # a start under way for a stage that will not run: cut short, not awaited in full
                prestart.cancel()
                await asyncio.gather(prestart, return_exceptions=True)
            raise
        if prestart is not None:
            await prestart

    async def _prestart(self, stage: Stage) -> None:
        """Overlap: start the next stage's new servers while this stage's last requests decode."""
        for lane in stage.lanes:
            for group in lane.groups[:1]:
                try:
                    await self.manager.acquire(group.model, exclusive=False, gpu_ids=lane.device.gpu_ids)
                except Exception:  # the stage itself will try again and record the failure
                    return

    # -- the batch -------------------------------------------------------------------

    async def infer_skills(self, prepared: list[Prepared]) -> SkillResults:
        cfg = self.config
        samples = cfg.sampling.skill_inferencer.samples
        model = cfg.roles.skill_inferencer
        agent = build_agent(cfg, "skill_inferencer", model)
        group = skill_group([p.question.id for p in prepared], model, self.manager.server_key(model), samples)
        by_id = {p.question.id: p for p in prepared}
        out = SkillResults({}, {qid: [""] * samples for qid in by_id}, {qid: [] for qid in by_id})
        unavailable: list[str] = []

        def prompt_of(i: int) -> RenderedPrompt:
            return agent.template.render(question=by_id[group.requests[i].question_id].question.question)

        def on_final(i: int, c: Completion) -> None:
            req = group.requests[i]
            if c.error:
                out.errors[req.question_id].append(f"skill sample {req.sample}: {c.error}")
                if c.error.startswith("server unavailable"):
                    unavailable.append(c.error)
            if c.truncated:
                out.truncated.setdefault(req.question_id, []).append(f"skills {model} (sample {req.sample})")
            out.texts[req.question_id][req.sample] = c.text or ""
            self._skill_tokens[0] += c.prompt_tokens
            self._skill_tokens[1] += c.completion_tokens

        await self._run_group(group, agent, prompt_of, on_final, (await self.devices())[0], stream_of=lambda q: by_id[q].stream)
        if unavailable:
            raise ServerStartError(model, f"the skill inferencer is needed before routing can start ({unavailable[0]})")
        out.keywords = {qid: infer_keywords(t) for qid, t in out.texts.items()}
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
            mapping = await self.aligner().mapping({k for kws in keywords.values() for k in kws})
            detail["alignment"] = self._aligner.method
            if self.alignment_warning:
                detail["warning"] = self.alignment_warning

            def align(kws: list[str], vocabulary: list[str]) -> list[str]:
                return [mapping[k] for k in kws if k in mapping]

        routes = routing_batch.route_batch(
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
        on_result: Callable[[QuestionResult], None] | None = None,
        method: Method | None = None,
    ) -> BatchOutcome:
        """Solve a batch; ``method`` swaps the routing policy for the baselines of ``eval``."""
        self.method = method or Method("symoe", "skills", self.config.k)
        self._skill_tokens = [0, 0]
        prepared = prepare_all(questions)
        run_began = self.events.emit("run_start", requests=len(questions)).ts
        try:
            return await self._run(prepared, run_began, dry_run, on_result)
        finally:
            await self.manager.release_all()

    async def _routes_for(self, prepared: list[Prepared]) -> tuple[SkillResults, dict[str, routing.Route]]:
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
                skills = await self.infer_skills(prepared)
            except BaseException:
                if warm is not None:
                    warm.cancel()
                    await asyncio.gather(warm, return_exceptions=True)
                raise
            if warm is not None:  # a failure here is raised by routing, if it needs the embedder
                await asyncio.gather(warm, return_exceptions=True)
            routes = await self.route(skills.keywords, streams)
            if m.k != self.config.k:
                routes = {q: routing.Route(r.experts[: m.k], r.method, r.keywords, r.probabilities, r.replaced) for q, r in routes.items()}
            return skills, routes
        ids = list(streams)
        skills = SkillResults({q: [] for q in ids}, {q: [] for q in ids}, {q: [] for q in ids})
        if m.routing == "fixed":
            routes = {q: routing.Route(m.fixed, "fixed") for q in ids}
        else:
            routes = routing_batch.route_batch([(q, []) for q in ids], self.config.roles.experts, m.k, self.config.seed, None, draw_keys=streams)
        self.events.emit("routing", detail={"method": m.name, "picks": dict(Counter(e for r in routes.values() for e in r.experts))})
        return skills, routes

    async def _run(self, prepared: list[Prepared], run_began: float, dry_run: bool, on_result) -> BatchOutcome:
        cfg = self.config
        skills, routes = await self._routes_for(prepared)
        run = _Batch({p.question.id: p for p in prepared}, skills, routes, self.method.k, on_result)
        schedule = plan_schedule(
            [p.question.id for p in prepared], routes, self.manager.server_keys(),
            cfg.roles.skill_inferencer, self.aggregator, cfg.sampling.skill_inferencer.samples,
        )  # fmt: skip
        placement = await self.place(schedule)

        if dry_run:
            self.events.emit("run_end")
            return BatchOutcome([], schedule, placement, self._summary(run_began, []), self.routing_note)

        stages = list(placement.stages[1:])  # the skill stage already ran
        for layer in range(self.method.layers):
            previous = None if layer == 0 else {q: list(a) for q, a in run.expert_answers.items()}
            for i, stage in enumerate(stages[:-1]):

                async def run_expert(group: Group, device, co_resident, on_admitted, exclusive, previous=previous) -> None:
                    await self._run_expert_group(group, run, device, co_resident, on_admitted, exclusive, previous)

                later = stages[i + 1 :] if layer == self.method.layers - 1 else stages[i:]
                await self._run_stage(stage, later, run_expert)

        async def run_aggregate(group: Group, device, co_resident, on_admitted, exclusive) -> None:
            await self._run_aggregation(group, run, device, exclusive)

        if self.method.aggregate:
            await self._run_stage(stages[-1], [], run_aggregate)
        else:  # majority vote of the experts' extracted answers, no aggregator call
            for qid in run.by_id:
                self._finish(run, qid, None, None, None)
        await self.manager.release_all()
        self.events.emit("run_end")
        ordered = [run.results[p.question.id] for p in prepared]
        return BatchOutcome(ordered, schedule, placement, self._summary(run_began, ordered), self.routing_note)

    async def _run_expert_group(self, group: Group, run: "_Batch", device=None, co_resident=False, on_admitted=None, exclusive=True, previous=None) -> None:
        """One expert group. With ``previous`` (a Mixture-of-Agents layer after the first),
        each proposer answers again, shown the previous layer's responses."""
        agent = build_agent(self.config, "expert", group.model)
        refine = build_agent(self.config, "aggregator", group.model) if previous is not None else None
        pdir = self.config.prompts_dir

        def prompt_of(i: int) -> RenderedPrompt:
            p = run.by_id[group.requests[i].question_id]
            if refine is not None:
                prior = shown_responses([a.text for a in previous[p.question.id] if a is not None])
                if prior:
                    return aggregation_prompt(refine.template, p, prior, pdir)
            return expert_prompt(agent.template, p, pdir)

        def on_final(i: int, c: Completion) -> None:
            req = group.requests[i]
            p = run.by_id[req.question_id]
            replaced = run.expert_answers[req.question_id][req.sample]
            if previous is not None and replaced is not None:  # an earlier MoA layer's tokens still count
                self._skill_tokens[0] += replaced.prompt_tokens
                self._skill_tokens[1] += replaced.completion_tokens
            run.expert_answers[req.question_id][req.sample] = ExpertAnswer(
                **_fields(c), slot=req.sample, extracted=extract_answer(c.text, p.fmt, p.letters, p.question.question)
            )
            label = f"expert {group.model} (slot {req.sample})"
            if previous is not None:  # the slot's earlier layer is replaced: its failure no longer stands,
                errors = run.errors(req.question_id)  # but a cut-off call was still made (and its tokens counted)
                errors[:] = [n for n in errors if not n.startswith(label)]
                cut = run.truncated(req.question_id)
                cut[:] = [f"{n}, an earlier layer" if n == label else n for n in cut]
            if c.error:
                run.errors(req.question_id).append(f"{label}: {c.error}")
            if c.truncated:
                run.truncated(req.question_id).append(label)

        await self._run_group(group, agent, prompt_of, on_final, device, co_resident, on_admitted, exclusive, stream_of=run.stream_of)

    async def _run_aggregation(self, group: Group, run: "_Batch", device=None, exclusive=True) -> None:
        """The aggregation group: one call per question, unless the question is skipped
        (no expert answered, or, with ``aggregate = "on-disagreement"``, the experts agree)."""
        cfg = self.config
        agent = build_agent(cfg, "aggregator", group.model)
        pdir = cfg.prompts_dir
        on_disagreement = cfg.aggregate == "on-disagreement"

        def prompt_of(i: int) -> RenderedPrompt | str:
            qid = group.requests[i].question_id
            answers = run.expert_answers[qid]
            if on_disagreement:
                agreed = consensus([a.extracted if a is not None else None for a in answers], run.k, _same_as(run.by_id[qid]))
                if agreed is not None:
                    run.agreed[qid] = agreed
                    return "skipped-consensus"
            responses = shown_responses([a.text for a in answers if a is not None])
            if not responses:
                return "no-expert-answers"
            return aggregation_prompt(agent.template, run.by_id[qid], responses, pdir)

        def on_skip(i: int, why: str) -> None:
            qid = group.requests[i].question_id
            if why == "no-expert-answers":
                run.errors(qid).append("aggregator skipped: no expert answered")
            self._finish(run, qid, group.model, None, why)  # type: ignore[arg-type]

        def on_final(i: int, c: Completion) -> None:
            qid = group.requests[i].question_id
            p = run.by_id[qid]
            if c.error:
                run.errors(qid).append(f"aggregator {group.model}: {c.error}")
            if c.truncated:
                run.truncated(qid).append(f"aggregator {group.model}")
            extracted = extract_answer(c.text, p.fmt, p.letters, p.question.question)
            answer = AggregatorAnswer(**_fields(c), extracted=extracted)
            self._finish(run, qid, group.model, answer, aggregator_status(c, extracted))

        await self._run_group(group, agent, prompt_of, on_final, device, exclusive=exclusive, stream_of=run.stream_of, on_skip=on_skip)

    def _finish(self, run: "_Batch", qid: str, aggregator: str | None, agg: AggregatorAnswer | None, status: AggregatorStatus | None) -> None:
        """Assemble one question's record. ``status`` None: the method has no aggregator."""
        p = run.by_id[qid]
        answers = [a for a in run.expert_answers[qid] if a is not None]
        final, source = decide(
            status, agg.extracted if agg else None, [a.extracted for a in answers], self.config.fallback, run.agreed.get(qid), _same_as(p)
        )
        gold = p.question.gold_answer
        route = run.routes[qid]
        result = QuestionResult(
            id=qid, question=p.question.question, answer_format=p.fmt, option_letters=p.letters,
            category=p.question.category, skills=run.skills.keywords.get(qid, []), skill_samples=run.skills.texts.get(qid, []),
            routing=route.method, experts=list(route.experts), expert_answers=answers,
            aggregator=aggregator, aggregator_response=agg.text if agg else None, aggregator_answer=agg,
            aggregator_status=status, final_answer=final, final_source=source, gold_answer=gold,
            correct=is_correct(final, gold, p.fmt) if gold is not None else None,
            errors=run.errors(qid), truncated=_in_call_order(run.truncated(qid)),
        )  # fmt: skip
        run.results[qid] = result
        if run.on_result:
            run.on_result(result)

    def _summary(self, run_began: float, results: list[QuestionResult]) -> RunSummary:
        summary = summarize_events([e for e in self.events.events if e.ts >= run_began])
        summary.questions = len(results)
        summary.prompt_tokens, summary.completion_tokens = self._skill_tokens
        for r in results:
            for c in [*r.expert_answers, *([r.aggregator_answer] if r.aggregator_answer else [])]:
                summary.prompt_tokens += c.prompt_tokens
                summary.completion_tokens += c.completion_tokens
            summary.count_outcome(r)
        graded = [r for r in results if r.correct is not None]
        summary.graded = len(graded)
        summary.correct = sum(1 for r in graded if r.correct) if graded else None
        summary.failed_questions = sum(1 for r in results if r.errors)
        return summary


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
    """What one batch accumulates per question while it runs."""

    by_id: dict[str, Prepared]
    skills: SkillResults
    routes: dict[str, routing.Route]
    k: int
    on_result: Callable[[QuestionResult], None] | None
    expert_answers: dict[str, list[ExpertAnswer | None]] = field(default_factory=dict)
    agreed: dict[str, str] = field(default_factory=dict)
    results: dict[str, QuestionResult] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.expert_answers = {qid: [None] * self.k for qid in self.by_id}

    def stream_of(self, qid: str) -> str:
        return self.by_id[qid].stream

    def errors(self, qid: str) -> list[str]:
        return self.skills.errors.setdefault(qid, [])

    def truncated(self, qid: str) -> list[str]:
        return self.skills.truncated.setdefault(qid, [])
