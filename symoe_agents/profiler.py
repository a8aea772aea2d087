"""``symoe profile`` and ``symoe pick-aggregator``: the paper's preprocessing (method.md 1-3).

profile: every validation question gets its keywords (skill group, as in ``solve``); then
every pool model answers every validation question, one group per model through the same
server manager (each model loaded once, the skill inferencer's server reused first). Every
raw answer is appended to ``answers.jsonl`` as it arrives, so an interrupted run loses
nothing and a re-run sends only what is missing. Profiles are then pure arithmetic over
those answers (``profiles.build_profiles``).

Questions are prepared and prompted through ``preparation``, exactly as ``solve`` does,
so a profile measures the models on the prompts they will be routed for. An answer is
reused only for the prompt it answered (its ``prompt_sha256``): change the prompts or
the format rules and the affected questions are asked again. Answers are scored when the
profile is built, with the current extraction, not when they arrived.

pick-aggregator: the synthetic task (1 correct and 2 incorrect validation answers,
shuffled, seeded); every candidate aggregates every item on exactly ``solve``'s
aggregator prompt (reasoning removed); the best is recorded in ``_aggregator.json``, which
``symoe solve --profiles DIR`` then uses as its aggregator. Aggregations are reused by the
content of their prompt, so an item rebuilt from new answers is aggregated again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .agents import build_agent
from .config import Config
from .cluster import joined
from .controller import Controller, Progress
from .errors import ProfileError, SymoeError
from .extract import extract_answer
from .placement import Device, deal
from .scoring import is_correct, judged
from .events import EventLog
from .formats import AnswerFormat
from .preparation import Prepared, aggregation_prompt, expert_prompt, prepare, prepare_all, shown_responses, skills_prompt
from .profiles import AGGREGATOR_FILE, Profile, build_profiles, synthetic_aggregation_items
from .prompting import RenderedPrompt, load_template
from .records import Completion, Question
from .schedule import Group, Requests
from symoe_agents.servers import ServerManager



def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ProfileStore:
    """The files of a profiles directory. Appends are flushed and fsynced as they happen."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _read(self, name: str) -> list[dict[str, Any]]:
        path = self.dir / name
        if not path.exists():
            return []
        out = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                if n == len(path.read_text(encoding="utf-8").splitlines()):
                    continue  # a line cut off by a crash: it is asked again
                raise ProfileError(f"{path}:{n}: not valid JSON; remove the line or the file") from None
        return out

    def _append(self, name: str, record: dict[str, Any]) -> None:
        with open(self.dir / name, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def skills(self) -> dict[str, dict[str, Any]]:
        return {r["id"]: r for r in self._read("skills.jsonl")}

    def add_skills(self, record: dict[str, Any]) -> None:
        self._append("skills.jsonl", record)

    def _current(self, name: str, calls: dict[tuple[str, str], str]) -> dict[tuple[str, str], dict[str, Any]]:
        """The successful records of (model, id) whose call is the one it would be now:
        ``calls[(model, id)]`` is that call's key (model identity, prompt, sampling, seed);
        a later record of the same call wins."""
        return {
            (r["model"], r["id"]): r
            for r in self._read(name)
            if not r.get("error") and r.get("call_key") is not None and r.get("call_key") == calls.get((r["model"], r["id"]))
        }

    def answers(self, calls: dict[tuple[str, str], str]) -> dict[tuple[str, str], dict[str, Any]]:
        return self._current("answers.jsonl", calls)

    def add_answer(self, record: dict[str, Any]) -> None:
        self._append("answers.jsonl", record)

    def aggregations(self, calls: dict[tuple[str, str], str]) -> dict[tuple[str, str], dict[str, Any]]:
        return self._current("aggregations.jsonl", calls)

    def add_aggregation(self, record: dict[str, Any]) -> None:
        self._append("aggregations.jsonl", record)

    def write_json(self, name: str, data: Any) -> None:
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(self.dir / name)


def _prepared_from_skills(rec: dict[str, Any]) -> Prepared:
    """A validation question as ``profile`` stored it, prepared again by the one path."""
    declared = rec.get("declared_format")
    return prepare(Question(id=rec["id"], question=rec["question"], gold_answer=rec["gold_answer"],
                            answer_format=AnswerFormat(declared) if declared else None))  # fmt: skip


def _correct(p: Prepared, text: str | None) -> bool:
    """Scored now, with the current extraction: never a verdict stored by an older version."""
    assert p.question.gold_answer is not None
    return is_correct(extract_answer(text, p.fmt, p.letters, p.question.question), p.question.gold_answer, p.fmt)


def _expert_prompts(cfg: Config, prepared: dict[str, Prepared]) -> dict[str, RenderedPrompt]:
    template = load_template("expert", cfg.prompts_dir)
    return {qid: expert_prompt(template, p, cfg.prompts_dir) for qid, p in prepared.items()}


def _call_keys(
    ctrl: Controller, role: Literal["expert", "aggregator"], models: list[str], prompts: dict[str, RenderedPrompt], streams: dict[str, str]
) -> dict[tuple[str, str], str]:
    """Each (model, id)'s call key as it would be sent now: a stored answer is reused only
    for the very same call, so a new prompt, sampling setting, seed or model (other weights
    under the same name) is asked again."""
    keys = {}
    for model in models:
        agent = build_agent(ctrl.config, role, model)
        for qid, prompt in prompts.items():
            keys[(model, qid)] = ctrl.call_key(agent, model, streams[qid], 0, prompt)
    return keys


def _skill_keys(ctrl: Controller, prepared: list[Prepared]) -> dict[str, str]:
    """Each question's keywords as they would be inferred now (the skill inferencer's
    identity, prompt, sampling, seed and number of samples), and its declared format: stored
    keywords are reused only for the same, so a profile never mixes in another inferencer's."""
    cfg = ctrl.config
    model = cfg.roles.skill_inferencer
    agent = build_agent(cfg, "skill_inferencer", model)
    keys = {}
    for p in prepared:
        first = ctrl.call_key(agent, model, p.stream, 0, skills_prompt(agent.template, p))
        declared = p.question.answer_format.value if p.question.answer_format else None
        keys[p.question.id] = _hash(json.dumps([first, cfg.sampling.skill_inferencer.samples, declared]))
    return keys


async def _each_once(
    ctrl: Controller,
    kind: Literal["expert", "aggregate"],
    model: str,
    ids: list[str],
    prompts: dict[str, RenderedPrompt],
    streams: dict[str, str],
    keep: Callable[[str, str, Completion], Awaitable[None] | None],
    device: Device | None = None,
) -> None:
    """``model`` answers each validation id once, as one group (its server loaded once),
    on ``prompts[id]``; ``keep(model, id, completion)`` stores each answer."""
    if not ids:
        return
    agent = build_agent(ctrl.config, "expert" if kind == "expert" else "aggregator", model)
    group = Group(kind, model, ctrl.manager.server_key(model), Requests(ids))
    await ctrl.groups.run(group, agent, lambda i: prompts[ids[i]], lambda i, c: keep(model, ids[i], c), device, stream_of=streams.__getitem__)


async def _each_model(
    ctrl: Controller, kind: str, models: list[str], ids: dict[str, list[str]], prompts: dict[str, RenderedPrompt],
    streams: dict[str, str], keep: Callable[[str, str, Completion], Awaitable[None] | None],
) -> None:
    """Every model's group, one model at a time on one machine; on a cluster, the models
    dealt over its devices by server (the largest first, to the least loaded device), each
    device running its own in order, all devices at once."""
    if ctrl.cluster is None:
        for model in models:
            await _each_once(ctrl, kind, model, ids[model], prompts, streams, keep)
        return
    devices = await ctrl.devices()
    # models that share a server go together (one load); the skill server's stay on the first
    # device, where the skill group ran and that server is up
    jobs: dict[str, list[str]] = {}
    for model in models:
        jobs.setdefault(ctrl.manager.server_key(model) or model, []).append(model)
    keys = list(jobs)
    skill_server = ctrl.manager.server_key(ctrl.config.roles.skill_inferencer)
    dealt = deal([sum(len(ids[m]) for m in jobs[k]) for k in keys], keys, len(devices), [i for i, k in enumerate(keys) if k == skill_server])
    lanes = [[m for i in mine for m in jobs[keys[i]]] for mine in dealt]

    halted: list[Exception] = []

    async def lane(device, models: list[str]) -> None:
        for model in models:
            if halted:  # another lane stopped the run: no new group starts
                return
            here = await ctrl.cluster.where(device) or device
            try:
                await _each_once(ctrl, kind, model, ids[model], prompts, streams, keep, here)
            except (SymoeError, OSError) as exc:  # a full disk under the store: this lane stops; the others finish
                halted.append(exc)  # what they have in flight (raising here would cancel answers being paid for)
                return

    async with asyncio.TaskGroup() as tg:
        for device, mine in zip(devices, lanes):
            if mine:
                tg.create_task(lane(device, mine))
    if halted:
        raise halted[0]


@dataclass
class ProfileRun:
    profiles: dict[str, Profile]
    new_answers: int
    reused_answers: int


async def run_profile(
    config: Config, questions: list[Question], out_dir: Path, events: EventLog, progress: Progress | None = None
) -> ProfileRun:
    missing_gold = [q.id for q in questions if q.gold_answer is None]
    if missing_gold:
        raise ProfileError(f"validation questions need a gold_answer; missing for ids {missing_gold[:5]}")
    store = ProfileStore(out_dir)
    known = store.skills()
    for q in questions:
        if q.id in known and known[q.id]["question_sha"] != _hash(q.question):
            raise ProfileError(
                f"{out_dir} holds a different question under id {q.id!r}; profile this set into a new folder"
            )
    cfg = config.model_copy(update={"profiles": None})
    prepared = {p.question.id: p for p in prepare_all(questions)}
    prompts = _expert_prompts(cfg, prepared)
    streams = {qid: p.stream for qid, p in prepared.items()}
    pool = cfg.roles.experts
    async with ServerManager(cfg, events) as manager, joined(cfg, events) as cluster:
        ctrl = Controller(cfg, manager, events, progress, cluster=cluster)
        if cluster is not None:
            await ctrl.devices()  # each node's host starts now
        calls = _call_keys(ctrl, "expert", pool, prompts, streams)
        skill_keys = _skill_keys(ctrl, list(prepared.values()))
        todo = [p for qid, p in prepared.items() if known.get(qid, {}).get("skill_key") != skill_keys[qid]]
        if todo:
            skills = await ctrl.infer_skills(todo)
            for p in todo:
                q = p.question
                rec = {"id": q.id, "skill_key": skill_keys[q.id], "question": q.question, "question_sha": _hash(q.question),
                       "gold_answer": q.gold_answer,
                       "declared_format": q.answer_format.value if q.answer_format else None,
                       "answer_format": p.fmt.value, "option_letters": p.letters,
                       "keywords": skills.keywords[q.id], "samples": skills.texts[q.id]}  # fmt: skip
                store.add_skills(rec)
        done = store.answers(calls)
        skill_server = manager.server_key(cfg.roles.skill_inferencer)
        order = sorted(pool, key=lambda m: (manager.server_key(m) != skill_server, manager.server_key(m) or "", m))
        new = 0

        async def keep_answer(model: str, qid: str, c: Completion) -> None:
            nonlocal new
            p = prepared[qid]
            extracted = extract_answer(c.text, p.fmt, p.letters, p.question.question)
            assert p.question.gold_answer is not None
            store.add_answer({
                "model": model, "id": qid, "call_key": calls[(model, qid)], "prompt_sha256": c.prompt_sha256,
                "text": c.text, "extracted": extracted,
                "correct": await judged(extracted, p.question.gold_answer, p.fmt), "error": c.error,
                "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens, "latency_s": round(c.latency_s, 3),
            })  # fmt: skip
            new += 0 if c.error else 1

        await _each_model(ctrl, "expert", order, {m: [qid for qid in prepared if (m, qid) not in done] for m in order}, prompts, streams, keep_answer)
    answers = store.answers(calls)
    skills_by_id = store.skills()
    correct = {m: {qid: _correct(prepared[qid], r["text"]) for (mm, qid), r in answers.items() if mm == m} for m in pool}
    profiles = build_profiles({qid: skills_by_id[qid]["keywords"] for qid in prepared}, correct, pool)
    for m, prof in profiles.items():
        store.write_json(f"{m}.json", prof.model_dump())
    reused = sum(len(v) for v in correct.values()) - new
    return ProfileRun(profiles, new, reused)


@dataclass
class AggregatorRanking:
    scores: dict[str, float]
    items: int
    chosen: str


async def run_pick_aggregator(
    config: Config, profiles_dir: Path, events: EventLog, progress: Progress | None = None, seed: int | None = None
) -> AggregatorRanking:
    store = ProfileStore(profiles_dir)
    skills = store.skills()
    if not skills:
        raise ProfileError(f"{profiles_dir} has no skills.jsonl; run `symoe profile` into it first")
    seed = config.seed if seed is None else seed
    cfg = config.model_copy(update={"profiles": None})
    prepared = {qid: _prepared_from_skills(rec) for qid, rec in skills.items()}
    expert_prompts = _expert_prompts(cfg, prepared)
    all_streams = {qid: p.stream for qid, p in prepared.items()}
    candidates = list(dict.fromkeys([*config.roles.experts, config.roles.aggregator]))
    template = load_template("aggregator", cfg.prompts_dir)
    async with ServerManager(cfg, events) as manager, joined(cfg, events) as cluster:
        ctrl = Controller(cfg, manager, events, progress, cluster=cluster)
        if cluster is not None:
            await ctrl.devices()  # each node's host starts now
        by_q: dict[str, dict[str, tuple[str, bool]]] = {}
        answered = store.answers(_call_keys(ctrl, "expert", config.roles.experts, expert_prompts, all_streams))
        for (model, qid), r in answered.items():
            by_q.setdefault(qid, {})[model] = (r["text"] or "", _correct(prepared[qid], r["text"]))
        items = synthetic_aggregation_items(by_q, seed)
        if not items:
            raise ProfileError(
                f"{profiles_dir}: no validation question has 1 correct and 2 incorrect answers among the models "
                "(answers to the current prompts and settings); profile more questions or more models"
            )
        prompts = {it["id"]: aggregation_prompt(template, prepared[it["id"]], shown_responses(it["responses"]), cfg.prompts_dir) for it in items}
        streams = {qid: all_streams[qid] for qid in prompts}
        calls = _call_keys(ctrl, "aggregator", candidates, prompts, streams)
        done = store.aggregations(calls)

        async def keep_aggregation(model: str, qid: str, c: Completion) -> None:
            p = prepared[qid]
            extracted = extract_answer(c.text, p.fmt, p.letters, p.question.question)
            assert p.question.gold_answer is not None  # profile refuses questions without one
            store.add_aggregation({
                "model": model, "id": qid, "seed": seed, "call_key": calls[(model, qid)], "prompt_sha256": c.prompt_sha256,
                "text": c.text, "extracted": extracted, "correct": await judged(extracted, p.question.gold_answer, p.fmt),
                "error": c.error,
                "finish_reason": c.finish_reason,
            })  # fmt: skip

        await _each_model(ctrl, "aggregate", candidates, {m: [qid for qid in prompts if (m, qid) not in done] for m in candidates}, prompts, streams, keep_aggregation)
    done = store.aggregations(calls)
    scores = {}
    for m in candidates:
        got = [done[(m, qid)] for qid in prompts if (m, qid) in done]
        scores[m] = sum(1 for r in got if _correct(prepared[r["id"]], r["text"])) / len(items)
    accuracy = {}
    for m in candidates:
        path = Path(profiles_dir) / f"{m}.json"
        accuracy[m] = json.loads(path.read_text()).get("validation_accuracy") or 0.0 if path.exists() else 0.0
    # best aggregation score; ties broken by validation accuracy, then name (deterministic)
    chosen = sorted(candidates, key=lambda m: (-scores[m], -accuracy[m], m))[0]
    store.write_json(AGGREGATOR_FILE, {"aggregator": chosen, "seed": seed, "items": len(items), "scores": scores})
    return AggregatorRanking(scores, len(items), chosen)
