"""``symoe profile`` and ``symoe pick-aggregator``: the paper's preprocessing (method.md 1-3).

profile: every validation question gets its keywords (skill group, as in ``solve``); then
every pool model answers every validation question, one group per model through the same
server manager (each model loaded once, the skill inferencer's server reused first). Every
raw answer is appended to ``answers.jsonl`` as it arrives, so an interrupted run loses
nothing and a re-run sends only what is missing. Profiles are then pure arithmetic over
those answers (``profiles.build_profiles``).

pick-aggregator: the synthetic task (1 correct and 2 incorrect validation answers,
shuffled, seeded); every candidate aggregates every item; the best is recorded in
``_aggregator.json``, which ``symoe solve --profiles DIR`` then uses as its aggregator.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .agents import Agent, build_agent
from .config import Config
from .controller import Controller, Progress, _Prepared, answer_instruction
from .errors import ProfileError
from .eval import extract_answer, is_correct
from .events import EventLog
from .formats import AnswerFormat, detect_format
from .profiles import Profile, build_profiles, synthetic_aggregation_items
from .prompting import RenderedPrompt
from .records import Completion, Question
from .schedule import Group, Requests
from symoe_agents.servers import ServerManager

AGGREGATOR_FILE = "_aggregator.json"


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

    def answers(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {(r["model"], r["id"]): r for r in self._read("answers.jsonl") if not r.get("error")}

    def add_answer(self, record: dict[str, Any]) -> None:
        self._append("answers.jsonl", record)

    def aggregations(self, seed: int) -> dict[tuple[str, str], dict[str, Any]]:
        return {(r["model"], r["id"]): r for r in self._read("aggregations.jsonl") if r.get("seed") == seed and not r.get("error")}

    def add_aggregation(self, record: dict[str, Any]) -> None:
        self._append("aggregations.jsonl", record)

    def write_json(self, name: str, data: Any) -> None:
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(self.dir / name)


def read_aggregator_choice(directory: Path) -> str | None:
    path = Path(directory) / AGGREGATOR_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))["aggregator"]
    except (json.JSONDecodeError, KeyError):
        raise ProfileError(f"{path}: not a valid aggregator choice; re-run `symoe pick-aggregator`") from None


def _prepare(q: Question) -> _Prepared:
    fmt, letters = detect_format(q.question, q.gold_answer)
    if q.answer_format is not None:
        fmt = q.answer_format
    return _Prepared(q, fmt, letters)


async def _each_once(
    ctrl: Controller,
    kind: Literal["expert", "aggregate"],
    model: str,
    ids: list[str],
    prompt_for: Callable[[Agent, str], RenderedPrompt],
    keep: Callable[[str, str, Completion], None],
) -> None:
    """``model`` answers each validation id once, as one group (its server loaded once):
    ``prompt_for(agent, id)`` makes the prompt, ``keep(model, id, completion)`` stores it."""
    if not ids:
        return
    agent = build_agent(ctrl.config, "expert" if kind == "expert" else "aggregator", model)
    group = Group(kind, model, ctrl.manager.server_key(model), Requests(ids))
    await ctrl._run_group(group, agent, lambda i: (prompt_for(agent, ids[i]), ""), lambda i, c: keep(model, ids[i], c))


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
    prepared = {q.id: _prepare(q) for q in questions}
    pool = cfg.roles.experts
    async with ServerManager(cfg, events) as manager:
        ctrl = Controller(cfg, manager, events, progress)
        todo = [p for qid, p in prepared.items() if qid not in known]
        if todo:
            keywords, texts, _ = await ctrl.infer_skills(todo)
            for p in todo:
                rec = {"id": p.question.id, "question": p.question.question, "question_sha": _hash(p.question.question),
                       "gold_answer": p.question.gold_answer, "answer_format": p.fmt.value, "option_letters": p.letters,
                       "keywords": keywords[p.question.id], "samples": texts[p.question.id]}  # fmt: skip
                store.add_skills(rec)
        done = store.answers()
        skill_server = manager.server_key(cfg.roles.skill_inferencer)
        order = sorted(pool, key=lambda m: (manager.server_key(m) != skill_server, manager.server_key(m) or "", m))
        new = 0

        def expert_prompt(agent: Agent, qid: str) -> RenderedPrompt:
            p = prepared[qid]
            instruction = answer_instruction(p.fmt, p.letters, cfg.prompts_dir)
            return agent.template.render(question=p.question.question, answer_instruction=instruction)

        def keep_answer(model: str, qid: str, c: Completion) -> None:
            nonlocal new
            p = prepared[qid]
            extracted = extract_answer(c.text, p.fmt, p.letters)
            assert p.question.gold_answer is not None
            store.add_answer({
                "model": model, "id": qid, "text": c.text, "extracted": extracted,
                "correct": is_correct(extracted, p.question.gold_answer, p.fmt), "error": c.error,
                "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                "latency_s": round(c.latency_s, 3),
            })  # fmt: skip
            new += 0 if c.error else 1

        for model in order:
            ids = [qid for qid in prepared if (model, qid) not in done]
            await _each_once(ctrl, "expert", model, ids, expert_prompt, keep_answer)
    answers = store.answers()
    skills = store.skills()
    ids = set(prepared)
    correct = {m: {qid: bool(r["correct"]) for (mm, qid), r in answers.items() if mm == m and qid in ids} for m in pool}
    profiles = build_profiles({qid: skills[qid]["keywords"] for qid in ids}, correct, pool)
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
    by_q: dict[str, dict[str, tuple[str, bool]]] = {}
    for (model, qid), r in store.answers().items():
        by_q.setdefault(qid, {})[model] = (r["text"] or "", bool(r["correct"]))
    items = synthetic_aggregation_items(by_q, seed)
    if not items:
        raise ProfileError(
            f"{profiles_dir}: no validation question has 1 correct and 2 incorrect answers among the models; "
            "profile more questions or more models"
        )
    candidates = list(dict.fromkeys([*config.roles.experts, config.roles.aggregator]))
    cfg = config.model_copy(update={"profiles": None})
    done = store.aggregations(seed)
    by_id = {it["id"]: it for it in items}

    def aggregation_prompt(agent: Agent, qid: str) -> RenderedPrompt:
        q = skills[qid]
        fmt = AnswerFormat(q["answer_format"])
        responses = "\n\n".join(f"Response {n}:\n{t.strip()}" for n, t in enumerate(by_id[qid]["responses"], 1))
        return agent.template.render(
            question=q["question"], responses=responses,
            answer_instruction=answer_instruction(fmt, q["option_letters"], cfg.prompts_dir),
        )  # fmt: skip

    def keep_aggregation(model: str, qid: str, c: Completion) -> None:
        q = skills[qid]
        fmt = AnswerFormat(q["answer_format"])
        extracted = extract_answer(c.text, fmt, q["option_letters"])
        store.add_aggregation({
            "model": model, "id": qid, "seed": seed, "text": c.text, "extracted": extracted,
            "correct": is_correct(extracted, q["gold_answer"], fmt), "error": c.error,
        })  # fmt: skip

    async with ServerManager(cfg, events) as manager:
        ctrl = Controller(cfg, manager, events, progress)
        for model in candidates:
            ids = [it["id"] for it in items if (model, it["id"]) not in done]
            await _each_once(ctrl, "aggregate", model, ids, aggregation_prompt, keep_aggregation)
    done = store.aggregations(seed)
    ids = {it["id"] for it in items}
    scores = {}
    for m in candidates:
        got = [r for (mm, qid), r in done.items() if mm == m and qid in ids]
        scores[m] = sum(1 for r in got if r["correct"]) / len(items)
    accuracy = {}
    for m in candidates:
        path = Path(profiles_dir) / f"{m}.json"
        accuracy[m] = json.loads(path.read_text()).get("validation_accuracy") or 0.0 if path.exists() else 0.0
    # best aggregation score; ties broken by validation accuracy, then name (deterministic)
    chosen = sorted(candidates, key=lambda m: (-scores[m], -accuracy[m], m))[0]
    store.write_json(AGGREGATOR_FILE, {"aggregator": chosen, "seed": seed, "items": len(items), "scores": scores})
    return AggregatorRanking(scores, len(items), chosen)
