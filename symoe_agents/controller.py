"""The controller: runs a batch as a schedule of groups through the server manager.

1. Skill group: the skill inferencer answers every question ``samples`` times.
2. Routing (pure): keywords -> k experts per question.
3. The schedule (pure): expert groups in load-minimising order, then aggregation.
4. Each group: acquire its model's server (the manager stops/starts as needed), send all its
   requests concurrently under the runner's bounds, record every answer, end the group.

A failed call is recorded in the question's result, never dropped. An expert whose server
cannot start fails only its own requests; the run goes on. If the aggregator fails, the
final answer falls back to the experts' majority and the record says so.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from . import routing
from .agents import Agent, AgentRunner, build_agent
from .config import Config
from .errors import ServerStartError
from .events import EventLog, RunSummary, summarize_events
from .formats import AnswerFormat, detect_format
from .profiles import Profile, load_profiles
from .prompting import load_template
from .records import AggregatorAnswer, Completion, ExpertAnswer, Question, QuestionResult
from .schedule import Group, Schedule, plan_schedule, skill_group
from .skills import infer_keywords
from symoe_agents.eval import extract_answer, is_correct
from symoe_agents.eval.extract import strip_reasoning
from symoe_agents.servers import ServerManager


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
class _Prepared:
    question: Question
    fmt: AnswerFormat
    letters: list[str]


@dataclass
class BatchOutcome:
    results: list[QuestionResult]
    schedule: Schedule
    summary: RunSummary
    routing_note: str


def answer_instruction(fmt: AnswerFormat, letters: list[str], prompts_dir=None) -> str:
    tpl = load_template(f"answer_{fmt.value}", prompts_dir)
    if fmt is AnswerFormat.MULTIPLE_CHOICE:
        return tpl.render(letters=", ".join(letters)).text
    return tpl.render().text


def majority(answers: Sequence[str | None]) -> str | None:
    """Most frequent extracted answer; ties go to the one seen first."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    best = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == best)


class Controller:
    def __init__(self, config: Config, manager: ServerManager, events: EventLog, progress: Progress | None = None):
        self.config = config
        self.manager = manager
        self.events = events
        self.progress = progress or _NoProgress()
        self._skill_tokens = [0, 0]
        self.profiles: dict[str, Profile] | None = (
            load_profiles(config.profiles, config.roles.experts) if config.profiles else None
        )

    @property
    def routing_note(self) -> str:
        if self.profiles is None:
            return "no profiles given: experts recruited uniformly at random (run `symoe profile` for skill routing)"
        return f"experts recruited by skill profiles from {self.config.profiles}"

    # -- one group -------------------------------------------------------------------

    async def _run_group(
        self,
        group: Group,
        agent: Agent,
        make_call: Callable[[AgentRunner, int], Awaitable[None]],
    ) -> None:
        """Acquire the group's server, run every request, emit start/end. ``make_call(runner, i)``
        performs request ``i`` and stores its result."""
        began = time.monotonic()
        self.events.emit("group_start", group=group.name, model=group.model, server=group.server, requests=len(group.requests))
        failed = 0
        try:
            try:
                endpoint = await self.manager.acquire(group.model)
            except ServerStartError as exc:
                failed = len(group.requests)
                raise _GroupUnavailable(str(exc)) from exc
            except Exception as exc:  # hosted endpoint misconfigured (missing key variable, ...)
                failed = len(group.requests)
                raise _GroupUnavailable(str(exc)) from exc
            self.progress.start(group.name, len(group.requests))
            try:
                async with AgentRunner(endpoint, self.config.concurrency, self.config.seed) as runner:

                    async def one(i: int) -> None:
                        await make_call(runner, i)
                        self.progress.advance()

                    async with asyncio.TaskGroup() as tg:
                        for i in range(len(group.requests)):
                            tg.create_task(one(i))
            finally:
                self.progress.finish()
        finally:
            self.events.emit(
                "group_end", group=group.name, model=group.model, server=group.server,
                requests=len(group.requests), duration_s=round(time.monotonic() - began, 3),
                detail={"failed": failed},
            )  # fmt: skip

    # -- the batch -------------------------------------------------------------------

    async def infer_skills(self, prepared: list[_Prepared]) -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, list[str]]]:
        cfg = self.config
        samples = cfg.sampling.skill_inferencer.samples
        model = cfg.roles.skill_inferencer
        agent = build_agent(cfg, "skill_inferencer", model)
        group = skill_group([p.question.id for p in prepared], model, self.manager.server_key(model), samples)
        texts: dict[str, list[str]] = {p.question.id: [""] * samples for p in prepared}
        errors: dict[str, list[str]] = {p.question.id: [] for p in prepared}
        by_id = {p.question.id: p for p in prepared}

        async def call(runner: AgentRunner, i: int) -> None:
            req = group.requests[i]
            prompt = agent.template.render(question=by_id[req.question_id].question.question)
            c = await runner.call(agent, prompt, req.question_id, req.sample)
            if c.error:
                errors[req.question_id].append(f"skill sample {req.sample}: {c.error}")
                self.events.emit("request_failed", group=group.name, model=model, detail={"question": req.question_id, "error": c.error})
            texts[req.question_id][req.sample] = c.text or ""
            self._skill_tokens[0] += c.prompt_tokens
            self._skill_tokens[1] += c.completion_tokens

        try:
            await self._run_group(group, agent, call)
        except _GroupUnavailable as exc:
            raise ServerStartError(model, f"the skill inferencer is needed before routing can start: {exc}") from None
        keywords = {qid: infer_keywords(t) for qid, t in texts.items()}
        return keywords, texts, errors

    def route(self, keywords: dict[str, list[str]]) -> dict[str, routing.Route]:
        cfg = self.config
        profiles = {m: p.skills for m, p in self.profiles.items()} if self.profiles else None
        routes = routing.route_batch(
            [(qid, kws) for qid, kws in keywords.items()],
            cfg.roles.experts, cfg.k, cfg.seed, profiles, cfg.min_share,
        )  # fmt: skip
        picks = Counter(e for r in routes.values() for e in r.experts)
        self.events.emit(
            "routing",
            detail={
                "method": "profiles" if profiles else "uniform-no-profiles",
                "picks": dict(sorted(picks.items())),
                "no_keywords": sum(1 for r in routes.values() if r.method == "uniform-no-keywords"),
            },
        )
        return routes

    async def run(
        self,
        questions: Sequence[Question],
        dry_run: bool = False,
        on_result: Callable[[QuestionResult], None] | None = None,
    ) -> BatchOutcome:
        cfg = self.config
        self._skill_tokens = [0, 0]
        run_began = self.events.emit("run_start", requests=len(questions)).ts
        prepared = []
        for q in questions:
            fmt, letters = detect_format(q.question, q.gold_answer)
            if q.answer_format is not None and q.answer_format != fmt:
                fmt = q.answer_format
                if fmt is AnswerFormat.MULTIPLE_CHOICE and not letters:
                    letters = ["A", "B", "C", "D"]
            prepared.append(_Prepared(q, fmt, letters))

        try:
            return await self._run(prepared, run_began, dry_run, on_result)
        finally:
            await self.manager.release_all()

    async def _run(self, prepared: list[_Prepared], run_began: float, dry_run: bool, on_result) -> BatchOutcome:
        cfg = self.config
        by_id = {p.question.id: p for p in prepared}
        keywords, skill_texts, errors = await self.infer_skills(prepared)
        routes = self.route(keywords)
        schedule = plan_schedule(
            [p.question.id for p in prepared], routes, self.manager.server_keys(),
            cfg.roles.skill_inferencer, cfg.roles.aggregator, cfg.sampling.skill_inferencer.samples,
        )  # fmt: skip
        expert_answers: dict[str, list[ExpertAnswer | None]] = {qid: [None] * cfg.k for qid in by_id}

        if dry_run:
            self.events.emit("run_end")
            return BatchOutcome([], schedule, self._summary(run_began, []), self.routing_note)

        for group in schedule.groups[1:-1]:
            await self._run_expert_group(group, by_id, expert_answers, errors)

        results = await self._run_aggregation(schedule.groups[-1], by_id, keywords, skill_texts, routes, expert_answers, errors, on_result)
        await self.manager.release_all()
        self.events.emit("run_end")
        ordered = [results[p.question.id] for p in prepared]
        return BatchOutcome(ordered, schedule, self._summary(run_began, ordered), self.routing_note)

    async def _run_expert_group(self, group, by_id, expert_answers, errors) -> None:
        agent = build_agent(self.config, "expert", group.model)
        pdir = self.config.prompts_dir

        async def call(runner: AgentRunner, i: int) -> None:
            req = group.requests[i]
            p = by_id[req.question_id]
            prompt = agent.template.render(question=p.question.question, answer_instruction=answer_instruction(p.fmt, p.letters, pdir))
            c = await runner.call(agent, prompt, req.question_id, req.sample)
            expert_answers[req.question_id][req.sample] = ExpertAnswer(
                **c.model_dump(), slot=req.sample, extracted=extract_answer(c.text, p.fmt, p.letters)
            )
            if c.error:
                errors[req.question_id].append(f"expert {group.model} (slot {req.sample}): {c.error}")
                self.events.emit("request_failed", group=group.name, model=group.model, detail={"question": req.question_id, "error": c.error})

        try:
            await self._run_group(group, agent, call)
        except _GroupUnavailable as exc:
            for req in group.requests:
                expert_answers[req.question_id][req.sample] = ExpertAnswer(model=group.model, slot=req.sample, error=str(exc).splitlines()[0])
                errors[req.question_id].append(f"expert {group.model} (slot {req.sample}): server unavailable")

    async def _run_aggregation(self, group, by_id, keywords, skill_texts, routes, expert_answers, errors, on_result):
        cfg = self.config
        agent = build_agent(cfg, "aggregator", group.model)
        results: dict[str, QuestionResult] = {}

        def finish(qid: str, agg: AggregatorAnswer | None) -> None:
            p = by_id[qid]
            answers = [a for a in expert_answers[qid] if a is not None]
            final, source = (agg.extracted, "aggregator") if agg and agg.extracted is not None else (None, None)
            if final is None:
                final = majority([a.extracted for a in answers])
                source = "expert-majority" if final is not None else None
            gold = p.question.gold_answer
            result = QuestionResult(
                id=qid, question=p.question.question, answer_format=p.fmt, option_letters=p.letters,
                category=p.question.category, skills=keywords[qid], skill_samples=skill_texts[qid],
                routing=routes[qid].method, experts=list(routes[qid].experts), expert_answers=answers,
                aggregator=group.model, aggregator_response=agg.text if agg else None, aggregator_answer=agg,
                final_answer=final, final_source=source, gold_answer=gold,
                correct=is_correct(final, gold, p.fmt) if gold is not None else None,
                errors=errors[qid],
            )  # fmt: skip
            results[qid] = result
            if on_result:
                on_result(result)

        pdir = cfg.prompts_dir

        async def call(runner: AgentRunner, i: int) -> None:
            qid = group.requests[i].question_id
            p = by_id[qid]
            good = [a for a in expert_answers[qid] if a is not None and a.text]
            if not good:
                errors[qid].append("aggregator skipped: no expert answered")
                finish(qid, None)
                return
            responses = "\n\n".join(f"Response {n}:\n{strip_reasoning(a.text or '').strip()}" for n, a in enumerate(good, 1))
            prompt = agent.template.render(
                question=p.question.question, responses=responses, answer_instruction=answer_instruction(p.fmt, p.letters, pdir)
            )
            c: Completion = await runner.call(agent, prompt, qid)
            if c.error:
                errors[qid].append(f"aggregator {group.model}: {c.error}")
                self.events.emit("request_failed", group=group.name, model=group.model, detail={"question": qid, "error": c.error})
            finish(qid, AggregatorAnswer(**c.model_dump(), extracted=extract_answer(c.text, p.fmt, p.letters)))

        try:
            await self._run_group(group, agent, call)
        except _GroupUnavailable as exc:
            for req in group.requests:
                if req.question_id not in results:
                    errors[req.question_id].append(f"aggregator {group.model} unavailable: {str(exc).splitlines()[0]}")
                    finish(req.question_id, None)
        return results

    def _summary(self, run_began: float, results: list[QuestionResult]) -> RunSummary:
        summary = summarize_events([e for e in self.events.events if e.ts >= run_began])
        summary.questions = len(results)
        summary.prompt_tokens, summary.completion_tokens = self._skill_tokens
        for r in results:
            for c in [*r.expert_answers, *([r.aggregator_answer] if r.aggregator_answer else [])]:
                summary.prompt_tokens += c.prompt_tokens
                summary.completion_tokens += c.completion_tokens
        graded = [r for r in results if r.correct is not None]
        summary.graded = len(graded)
        summary.correct = sum(1 for r in graded if r.correct) if graded else None
        summary.failed_questions = sum(1 for r in results if r.errors)
        return summary


class _GroupUnavailable(Exception):
    """A group's server or endpoint could not be acquired."""
