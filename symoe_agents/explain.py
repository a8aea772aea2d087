"""Why a question's experts were chosen: the routing of ``routing.py`` written out, step by step.

An explanation is rebuilt from what routing already decided (the mapped keywords, the
route) and what it read (the profiles, the seed and the question's draw key), with the
reference functions of ``routing.py``; nothing is kept per question while the batch runs
beyond the keywords' alignment, and only when ``explain`` is on. The probabilities it
reports are the reference path's, which ``routing_batch`` matches float for float.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, Field

from . import routing

__all__ = ["Candidate", "Draw", "KeywordMatch", "RoutingExplanation", "explain_route"]


class KeywordMatch(BaseModel):
    """One keyword of the skill inferencer's, and the profile keyword it stands for."""

    keyword: str
    aligned_to: str | None = Field(description="the nearest profile keyword; None: dropped (exact matching found none)")
    similarity: float | None = Field(default=None, description="cosine similarity of the two; 1.0 when the profiles hold it verbatim")


class Candidate(BaseModel):
    """A model that could be drawn, in the order the draw walks them."""

    model: str
    suitability: float | None = Field(default=None, description="S_i: the sum of its profile's scores of the aligned keywords")
    competence: float | None = Field(default=None, description="gamma_i: its squared, normalised profile total")
    weight: float | None = Field(default=None, description="S_i * gamma_i, or S'_i * gamma_i when shifted")
    probability: float


class Draw(BaseModel):
    slot: int
    uniform: float | None = Field(description="the draw's number in [0, 1); None for a fixed expert")
    drawn: str
    replaced_by: str | None = Field(default=None, description="the min_share rule's substitute, when it replaced the draw")


class RoutingExplanation(BaseModel):
    method: routing.RouteMethod
    keywords: list[KeywordMatch] = []
    shifted: bool = Field(default=False, description="no candidate scored above 0: S'_i = S_i - min S + 1 was weighted")
    candidates: list[Candidate] = []
    draws: list[Draw] = []


def explain_route(
    route: routing.Route,
    raw_keywords: Sequence[str],
    matches: Mapping[str, tuple[str, float]],
    profiles: Mapping[str, Mapping[str, float]] | None,
    gamma: Mapping[str, float] | None,
    pool: Sequence[str],
    seed: int,
    draw_key: str,
) -> RoutingExplanation:
    """The explanation of ``route`` (pure). ``matches``: keyword -> (profile keyword,
    similarity) for the keywords alignment kept; ``profiles`` and ``gamma`` are the pool's."""
    k = len(route.experts)
    keywords = [KeywordMatch(keyword=kw, aligned_to=matches[kw][0] if kw in matches else None,
                             similarity=matches[kw][1] if kw in matches else None) for kw in raw_keywords]  # fmt: skip
    if route.method == "fixed":
        return RoutingExplanation(method="fixed", keywords=keywords,
                                  draws=[Draw(slot=i, uniform=None, drawn=e) for i, e in enumerate(route.experts)])  # fmt: skip
    uniforms = routing.question_uniforms(seed, draw_key, k)
    shifted = False
    if route.method == "skills":
        assert profiles is not None and gamma is not None
        scores = routing.suitability(route.keywords, profiles)
        weights, shifted = routing.expert_weights(scores, gamma)
        probs = routing.expert_probabilities(scores, gamma)
        candidates = [Candidate(model=m, suitability=scores[m], competence=gamma[m], weight=weights[m], probability=p) for m, p in probs.items()]
        drawn = routing.draw_weighted(uniforms, list(probs), list(probs.values()))
    else:  # uniform over the pool
        candidates = [Candidate(model=m, probability=1.0 / len(pool)) for m in pool]
        drawn = routing.draw_uniform(uniforms, list(pool))
    # a substitute is named only where min_share recorded one for that draw: a difference it
    # did not record stays visible as drawn != the record's expert (a defect, which tests catch)
    substitutes = list(route.replaced)
    draws = []
    for i, (u, d, final) in enumerate(zip(uniforms, drawn, route.experts)):
        replaced_by = None
        if final != d and substitutes and substitutes[0] == (d, final):
            replaced_by = substitutes.pop(0)[1]
        draws.append(Draw(slot=i, uniform=u, drawn=d, replaced_by=replaced_by))
    return RoutingExplanation(method=route.method, keywords=keywords, shifted=shifted, candidates=candidates, draws=draws)
