"""The run's summary, kept as counters while the run goes on.

Two tallies make it: ``EventTally`` reads loads, group timings and wall time off the
events as they are emitted, and ``OutcomeTally`` counts each question's outcome (tokens,
aggregator status, accuracy, errors) as its record is made. Neither keeps an event or a
record, so the summary of a million questions costs what the summary of one does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import BaseModel

from .events import Event

if TYPE_CHECKING:
    from .records import QuestionResult


class GroupTiming(BaseModel):
    group: str
    requests: int
    duration_s: float
    failed: int = 0
    cached: int = 0


class RunSummary(BaseModel):
    questions: int = 0
    model_loads: int = 0
    loads_by_model: dict[str, int] = {}
    load_time_s: float = 0.0
    groups: list[GroupTiming] = []
    wall_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    correct: int | None = None
    graded: int = 0
    failed_questions: int = 0
    calls_sent: int = 0
    cached_answers: int = 0
    resumed_questions: int = 0
    skipped_inputs: list[str] = []
    # what became of the aggregator's calls, and of the final answers
    aggregator_answered: int = 0
    aggregator_unparsable: int = 0
    aggregator_failed: int = 0
    aggregations_skipped: int = 0  # aggregate = "on-disagreement": the experts agreed; one call saved each
    no_expert_answers: int = 0
    fallbacks_used: int = 0
    unanswered: int = 0  # no final answer: scored wrong
    truncated: dict[str, int] = {}  # calls cut off at max_tokens, by role
    # what the run paid (costs.py): USD and device time of its calls (cached ones cost nothing
    # now), and the device time its local groups held, from asking for the server to their end
    cost_usd: float = 0.0
    device_s: float = 0.0
    held_s: float = 0.0

    @property
    def accuracy(self) -> float | None:
        return None if not self.graded or self.correct is None else self.correct / self.graded

    @property
    def calls_saved(self) -> int:
        return self.aggregations_skipped

    def count_outcome(self, r: "QuestionResult") -> None:
        """Add one finished question's aggregator outcome, final answer and truncations."""
        status = r.aggregator_status
        if status == "answered":
            self.aggregator_answered += 1
        elif status == "unparsable":
            self.aggregator_unparsable += 1
        elif status == "failed":
            self.aggregator_failed += 1
        elif status == "skipped-consensus":
            self.aggregations_skipped += 1
        elif status == "no-expert-answers":
            self.no_expert_answers += 1
        if r.final_source == "fallback-expert-majority":
            self.fallbacks_used += 1
        if r.final_answer is None:
            self.unanswered += 1
        for call in r.truncated:
            role = call.split(" ", 1)[0]
            self.truncated[role] = self.truncated.get(role, 0) + 1

    def outcome_lines(self) -> list[str]:
        lines = []
        asked = self.aggregator_answered + self.aggregator_unparsable + self.aggregator_failed
        if asked or self.aggregations_skipped or self.no_expert_answers:
            line = (f"aggregator: {self.aggregator_answered} answered, {self.aggregator_unparsable} unparsable, "
                    f"{self.aggregator_failed} failed")  # fmt: skip
            if self.no_expert_answers:
                line += f", {self.no_expert_answers} not asked (no expert answered)"
            if self.aggregations_skipped:
                line += f", {self.aggregations_skipped} skipped (experts agreed; {self.calls_saved} calls saved)"
            lines.append(line)
        if self.fallbacks_used:
            lines.append(f"fallback to the experts' majority: {self.fallbacks_used} questions")
        if self.unanswered:
            lines.append(f"no final answer: {self.unanswered} questions (scored wrong)")
        if self.truncated:
            parts = ", ".join(f"{role} {n}" for role, n in sorted(self.truncated.items()))
            lines.append(f"cut off at max_tokens: {parts} calls (raise sampling.<role>.max_tokens)")
        return lines

    def render(self) -> str:
        lines = [
            f"questions: {self.questions}   model loads: {self.model_loads}   wall time: {self.wall_s:.1f} s"
            f"   (of which server start-up {self.load_time_s:.1f} s)",
            f"tokens: {self.prompt_tokens} prompt + {self.completion_tokens} completion"
            f"   calls sent: {self.calls_sent}" + (f", answers reused from the cache: {self.cached_answers}" if self.cached_answers else ""),
        ]
        if self.resumed_questions:
            lines.insert(0, f"resumed: {self.resumed_questions} questions were already answered by an earlier run")
        if self.cost_usd or self.held_s:
            per = f" (${1000 * self.cost_usd / self.questions:.4f} per 1,000 questions)" if self.questions else ""
            lines.append(f"cost: ${self.cost_usd:.4f}{per}   device time: {self.device_s:.1f} s attributed to calls, "
                         f"of {self.held_s:.1f} s held by groups")  # fmt: skip
        for g in self.groups:
            fail = f", {g.failed} failed" if g.failed else ""
            cached = f", {g.cached} cached" if g.cached else ""
            lines.append(f"  {g.group:<32} {g.requests:>5} requests {g.duration_s:>8.1f} s{cached}{fail}")
        lines += self.outcome_lines()
        if self.accuracy is not None:
            lines.append(f"accuracy: {self.correct}/{self.graded} = {self.accuracy:.1%}")
        if self.failed_questions:
            lines.append(f"questions with errors: {self.failed_questions} (see 'errors' in the output)")
        if self.skipped_inputs:
            lines.append(f"skipped invalid input records: {len(self.skipped_inputs)}")
            lines += [f"  {s}" for s in self.skipped_inputs]
        return "\n".join(lines)


class EventTally:
    """Loads, group timings and wall time, counted event by event (``EventLog.listen``)."""

    def __init__(self) -> None:
        self._summary = RunSummary()
        self._started: dict[str, float] = {}
        self._began: float | None = None
        self._ended: float | None = None

    def add(self, e: Event) -> None:
        summary = self._summary
        if e.kind == "server_start" and e.model:
            summary.model_loads += 1
            summary.loads_by_model[e.model] = summary.loads_by_model.get(e.model, 0) + 1
        elif e.kind == "server_ready" and e.duration_s is not None:
            summary.load_time_s += e.duration_s
        elif e.kind == "group_start" and e.group:
            self._started[e.group] = e.ts
        elif e.kind == "group_end" and e.group:
            began = self._started.pop(e.group, e.ts)
            summary.groups.append(
                GroupTiming(
                    group=e.group,
                    requests=e.requests or 0,
                    duration_s=e.duration_s if e.duration_s is not None else e.ts - began,
                    failed=int(e.detail.get("failed", 0)),
                    cached=int(e.detail.get("cached", 0)),
                )
            )
            summary.calls_sent += int(e.detail.get("calls", 0))
            summary.held_s += float(e.detail.get("held_s", 0.0))
            summary.cached_answers += int(e.detail.get("cached", 0))
        elif e.kind == "run_start":
            self._began = e.ts
        elif e.kind == "run_end":
            self._ended = e.ts

    def summary(self) -> RunSummary:
        out = self._summary.model_copy(deep=True)
        if self._began is not None and self._ended is not None:
            out.wall_s = max(0.0, self._ended - self._began)
        return out


def summarize_events(events: Iterable[Event]) -> RunSummary:
    """Loads and group timings, read off the events alone."""
    tally = EventTally()
    for e in events:
        tally.add(e)
    return tally.summary()


@dataclass
class OutcomeTally:
    """The run's counters, kept as its questions finish (no record is kept)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    questions: int = 0
    graded: int = 0
    correct: int = 0
    failed_questions: int = 0
    cost_usd: float = 0.0
    device_s: float = 0.0
    outcomes: RunSummary = field(default_factory=RunSummary)

    def count(self, r: QuestionResult) -> None:
        self.questions += 1
        self.cost_usd += r.usage.cost_usd
        self.device_s += r.usage.device_s
        for c in [*r.expert_answers, *([r.aggregator_answer] if r.aggregator_answer else [])]:
            self.prompt_tokens += c.prompt_tokens
            self.completion_tokens += c.completion_tokens
        self.outcomes.count_outcome(r)
        if r.correct is not None:
            self.graded += 1
            self.correct += bool(r.correct)
        if r.errors:
            self.failed_questions += 1

    def fill(self, summary: RunSummary) -> None:
        for name in ("aggregator_answered", "aggregator_unparsable", "aggregator_failed", "aggregations_skipped",
                     "no_expert_answers", "fallbacks_used", "unanswered", "truncated"):  # fmt: skip
            setattr(summary, name, getattr(self.outcomes, name))
        summary.questions = self.questions
        summary.prompt_tokens, summary.completion_tokens = self.prompt_tokens, self.completion_tokens
        summary.graded = self.graded
        summary.correct = self.correct if self.graded else None
        summary.failed_questions = self.failed_questions
        summary.cost_usd, summary.device_s = self.cost_usd, self.device_s
