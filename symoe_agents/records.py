"""Typed records: the questions that go in and the results that come out.

Output records keep everything a run paid for (every expert's text, tokens and latency,
the aggregator's response, skill samples), so an answer file is also an audit trail.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator

from .explain import RoutingExplanation
from .formats import AnswerFormat


class Question(BaseModel):
    """One question to solve. ``answer_format`` and ``option_letters`` are detected when absent."""

    model_config = ConfigDict(extra="forbid")

    id: str
    question: str = Field(min_length=1)
    gold_answer: str | None = None
    answer_format: AnswerFormat | None = None
    category: str | None = None
    metadata: dict[str, Any] = {}


class Completion(BaseModel):
    """One model call's outcome. ``error`` is set (and ``text`` is None) when it failed."""

    model: str
    text: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    prompt_sha256: str | None = None
    error: str | None = None
    finish_reason: str | None = Field(default=None, description="the server's: 'stop', 'length' (cut off at max_tokens), ...")
    retryable: bool = Field(default=False, description="the error was transient (connection, timeout, 429, 5xx)")
    cached: bool = Field(default=False, description="reused from the answer cache, not requested in this run")
    device_s: float = Field(default=0.0, description="local model: this call's share of its device's time (costs.py); 0 for hosted")
    cost_usd: float = Field(default=0.0, description="what this call cost when it was made (cached: paid by an earlier run)")

    @field_validator("text", "error")
    @classmethod
    def _valid_unicode(cls, v: str | None) -> str | None:
        """A lone surrogate (an emoji cut in half by a proxy at max_tokens) cannot be written
        as UTF-8: it would fail the cache's and the answers file's writes, so it becomes U+FFFD."""
        if v is None:
            return v
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return v.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return v

    @computed_field  # type: ignore[prop-decorator]
    @property
    def truncated(self) -> bool:
        """Cut off at ``max_tokens``: the answer may be missing, and the budget is the cause."""
        return self.finish_reason == "length"


class ExpertAnswer(Completion):
    slot: int = Field(description="position among the question's k recruited experts")
    extracted: str | None = None


class AggregatorAnswer(Completion):
    extracted: str | None = None


#: where a record's final answer came from
FinalSource = Literal[
    "aggregator",  # the aggregator's parsed answer: the method's answer
    "consensus",  # aggregate = "on-disagreement": the k experts agreed, the aggregator was not asked
    "vote",  # a method without an aggregator (majority, single): the experts' majority
    "fallback-expert-majority",  # the aggregator failed or did not parse, and the config opted into this fallback
]
#: what happened to the aggregator's call for a question
AggregatorStatus = Literal[
    "answered",  # its answer parsed
    "unparsable",  # it answered, but no answer of the question's format could be read
    "failed",  # the call failed (server down, error, timeout)
    "skipped-consensus",  # not asked: the experts agreed (aggregate = "on-disagreement")
    "no-expert-answers",  # not asked: no expert answered
]


class StageUsage(BaseModel):
    """One stage's calls for one question: how many, how many came from the answer cache
    (their tokens are the ones paid when they were first asked), their tokens, and what this
    run paid for them: device time and USD of the calls it made (cached ones cost nothing now)."""

    calls: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    device_s: float = 0.0
    cost_usd: float = 0.0

    def add(self, c: Completion) -> None:
        self.calls += 1
        self.cached += c.cached
        self.prompt_tokens += c.prompt_tokens
        self.completion_tokens += c.completion_tokens
        if not c.cached:
            self.device_s += c.device_s
            self.cost_usd += c.cost_usd


class Usage(BaseModel):
    """A question's tokens, by stage; the totals are their sums (what ``symoe serve`` reports
    as the OpenAI ``usage``). ``experts`` counts every layer of a Mixture-of-Agents method."""

    skills: StageUsage = StageUsage()
    experts: StageUsage = StageUsage()
    aggregator: StageUsage = StageUsage()

    @computed_field  # type: ignore[prop-decorator]
    @property
    def prompt_tokens(self) -> int:
        return self.skills.prompt_tokens + self.experts.prompt_tokens + self.aggregator.prompt_tokens

    @computed_field  # type: ignore[prop-decorator]
    @property
    def completion_tokens(self) -> int:
        return self.skills.completion_tokens + self.experts.completion_tokens + self.aggregator.completion_tokens

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @computed_field  # type: ignore[prop-decorator]
    @property
    def device_s(self) -> float:
        return self.skills.device_s + self.experts.device_s + self.aggregator.device_s

    @computed_field  # type: ignore[prop-decorator]
    @property
    def cost_usd(self) -> float:
        """What this question cost this run, every stage."""
        return self.skills.cost_usd + self.experts.cost_usd + self.aggregator.cost_usd


class QuestionResult(BaseModel):
    id: str
    question: str
    answer_format: AnswerFormat
    option_letters: list[str] = []
    category: str | None = None
    skills: list[str]
    skill_samples: list[str] = Field(default=[], description="raw texts of the skill inferencer's samples")
    routing: Literal["skills", "uniform-no-keywords", "uniform-no-profiles", "fixed"]
    experts: list[str]
    expert_answers: list[ExpertAnswer]
    aggregator: str | None = Field(description="None when the method takes a majority vote instead")
    aggregator_response: str | None = None
    aggregator_answer: AggregatorAnswer | None = None
    aggregator_status: AggregatorStatus | None = Field(default=None, description="None when the method has no aggregator")
    final_answer: str | None = Field(default=None, description="None: no answer, scored wrong")
    final_source: FinalSource | None = None
    truncated: list[str] = Field(default=[], description="the calls cut off at max_tokens, e.g. 'expert gemma3 (slot 1)'")
    gold_answer: str | None = None
    correct: bool | None = None
    errors: list[str] = []
    usage: Usage = Field(default_factory=Usage, description="tokens and calls by stage, cache hits included")
    routing_explanation: RoutingExplanation | None = Field(
        default=None, description="why these experts (config explain = true): keywords, alignment, S, gamma, probabilities, draws"
    )

    @property
    def tokens(self) -> int:
        calls: list[Completion] = [*self.expert_answers]
        if self.aggregator_answer:
            calls.append(self.aggregator_answer)
        return sum(c.prompt_tokens + c.completion_tokens for c in calls)
