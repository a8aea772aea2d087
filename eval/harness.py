"""``symoe eval``: every method on the same questions, through the same engine.

Each method runs the whole pooled batch (all benchmarks) as one schedule, so every method
loads each model as few times as its shape allows, and the report's loads, calls, tokens
and wall time compare schedules as well as accuracy. Every record is written to
``OUT/<method>.jsonl`` and every event to ``OUT/<method>.events.jsonl``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from symoe_agents.answer_file import AnswerFile
from symoe_agents.api import SymbolicMoE
from symoe_agents.cache import AnswerCache
from symoe_agents.config import Config
from symoe_agents.controller import Progress
from symoe_agents.errors import BudgetSpent
from symoe_agents.events import EventLog
from symoe_agents.methods import Method
from symoe_agents.metrics import Metrics
from symoe_agents.records import Question

from .report import method_row


async def run_eval(
    config: Config, questions: list[Question], methods: list[Method], out_dir: Path, progress: Progress | None = None,
    on_event=None, check: bool = True, cache: AnswerCache | None = None, metrics: Metrics | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """``check=False``: the caller already ran preflight, so the methods do not repeat it.
    ``cache``: answers are stored as they arrive, so an interrupted evaluation resumes
    without paying again; calls that two methods share (same model, prompt, seed, sample)
    are then paid once, so per-method calls and wall time no longer compare schedules."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    limit = config.cost.max_usd  # --max-cost spans every method: each gets what the ones before left
    try:
        for method in methods:
            if limit is not None:
                spent = sum(r["cost_usd"] for r in rows)
                if spent >= limit:
                    raise BudgetSpent(limit, spent)
                config = config.with_budget(limit - spent)
            rows.append(await _run_method(config, questions, method, out_dir, progress, on_event, check, cache, metrics))
    except BudgetSpent as exc:  # the methods that finished keep their rows (the report is written)
        exc.finished = rows
        raise
    return rows


async def _run_method(config: Config, questions: list[Question], method: Method, out_dir: Path, progress: Progress | None,
                      on_event, check: bool, cache: AnswerCache | None, metrics: Metrics | None) -> dict[str, Any]:  # fmt: skip
    """One method over the whole batch, its records and events beside the report: its row."""
    events = EventLog(out_dir / f"{method.name}.events.jsonl")
    if on_event:
        events.listen(on_event)
    began = time.monotonic()
    answers = AnswerFile.open(out_dir / f"{method.name}.jsonl", questions, fresh=True)  # each record fsynced as it finishes
    try:
        async with SymbolicMoE(config, events=events, progress=progress, check=check, cache=cache, metrics=metrics) as moe:
            results = await moe.solve_batch(questions, on_result=answers.append, method=method)
            summary = moe.summary
    finally:
        await answers.aclose()
        events.close()
    assert summary is not None
    skill_calls = len(questions) * config.sampling.skill_inferencer.samples if method.needs_skills else 0
    return method_row(method.name, results, events.events, time.monotonic() - began, skill_calls,
                      summary.prompt_tokens + summary.completion_tokens, method.layers)  # fmt: skip
