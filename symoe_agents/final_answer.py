"""A question's final answer and where it came from (pure decisions).

The method's answer is the aggregator's (method.md section 5). When the aggregator fails
or writes nothing that parses, the question has no answer and counts as wrong, unless the
config opts into a fallback (``fallback = "expert-majority"``): hiding an aggregator's
failures behind the experts' vote would credit the method with answers it did not give.

With ``aggregate = "on-disagreement"`` a question whose k experts all gave the same
parsable answer is not aggregated: that answer is final ("consensus"). Methods without an
aggregator (the majority and single baselines) take the experts' majority ("vote").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from .config import Fallback
from .records import AggregatorStatus, Completion, FinalSource


#: the form under which two answers count as the same vote ("033" and "33" for math)
SameAs = Callable[[str], str]


def _same(a: str) -> str:
    return a


def majority(answers: Sequence[str | None], same: SameAs = _same) -> str | None:
    """Most frequent extracted answer, answers equal under ``same`` voting together; ties
    go to the one seen first; None if none parsed."""
    votes = Counter(same(a) for a in answers if a is not None)
    if not votes:
        return None
    best = max(votes.values())
    return next(a for a in answers if a is not None and votes[same(a)] == best)


def consensus(answers: Sequence[str | None], k: int, same: SameAs = _same) -> str | None:
    """The answer all ``k`` experts gave, when every one of them gave a parsable answer
    and they are equal under ``same``; otherwise None (the aggregator decides)."""
    if k < 1 or len(answers) != k or any(a is None for a in answers):
        return None
    return answers[0] if len({same(a) for a in answers if a is not None}) == 1 else None


def aggregator_status(call: Completion | None, extracted: str | None) -> AggregatorStatus:
    """What became of an aggregator call that was made (``call`` None: it could not be)."""
    if call is None or call.error is not None:
        return "failed"
    return "answered" if extracted is not None else "unparsable"


def decide(
    status: AggregatorStatus | None,
    aggregator_answer: str | None,
    expert_answers: Sequence[str | None],
    fallback: Fallback = "none",
    agreed: str | None = None,
    same: SameAs = _same,
) -> tuple[str | None, FinalSource | None]:
    """The final answer and its source. ``status`` None: the method has no aggregator."""
    if status is None:
        vote = majority(expert_answers, same)
        return vote, "vote" if vote is not None else None
    if status == "answered":
        return aggregator_answer, "aggregator"
    if status == "skipped-consensus":
        return agreed, "consensus"
    if fallback == "expert-majority":
        vote = majority(expert_answers, same)
        if vote is not None:
            return vote, "fallback-expert-majority"
    return None, None
