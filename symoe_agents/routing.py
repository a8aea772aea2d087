"""Recruiting k experts per question from skill profiles (method.md section 4).

Pure functions; these follow the reference code's semantics, which produced the paper's
published numbers, rather than the paper's prose:

1. Global competence: totals T_i of each profile, shifted by ``-min + 1`` when some total is
   negative, squared and normalised (the "temperature 0.5" is this exponent 2).
2. Local suitability: S_i = sum of profile_i[kw] over the question's mapped keywords,
   duplicates counted. Only models whose profile holds at least one of those keywords are
   candidates.
3. If some S_i > 0, candidates are those, weighted S_i * gamma_i; otherwise all candidates,
   weighted (S_i - min S + 1) * gamma_i. Linear normalisation, no softmax.
4. k draws *with replacement*: a model drawn twice answers twice, independently.
5. No keywords (or no candidate): k uniform draws with replacement over the pool.

Seeding: each question's k draws come from a counter-based generator keyed by (seed,
the question's draw key) (blake2b, then splitmix64), so a question's experts do not change
when other questions are added to or removed from the batch, and a batch draws them all at
once. The controller's draw key is the question's content (``preparation.stream_key``):
two different questions that happen to share an id never share draws, and the same
question keeps its experts for the same seed. Without draw keys, the id is the key.

``route_question`` is the reference, one question at a time; ``routing_batch.route_batch`` routes a
batch through ``routing_batch`` (numpy), which gives the same routes float for float.

The optional minimum-share rule (paper's prose; in the reference code but never called)
replaces, after the whole batch is routed, every expert picked for less than
``min_share`` of all expert slots by a draw among the others, weighted by their counts:
fewer distinct experts means fewer model loads.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Literal, NamedTuple

RouteMethod = Literal["skills", "uniform-no-keywords", "uniform-no-profiles", "fixed"]

#: Maps a question's keywords onto the profile vocabulary (nearest neighbour by embeddings in
#: the paper). Returns the mapped list; duplicates kept, unmappable keywords dropped.
Aligner = Callable[[list[str], list[str]], list[str]]


class Route(NamedTuple):
    """The experts recruited for one question, and why. A named tuple, not a dataclass:
    a batch makes one per question, and a frozen dataclass took 3 µs each to build."""

    experts: tuple[str, ...]
    method: RouteMethod
    keywords: tuple[str, ...] = ()
    probabilities: Mapping[str, float] = MappingProxyType({})
    replaced: tuple[tuple[str, str], ...] = ()  # (dropped, substitute) pairs of min-share


def exact_align(keywords: list[str], vocabulary: list[str]) -> list[str]:
    """Fallback alignment: keep the keywords the profiles know verbatim."""
    known = set(vocabulary)
    return [kw for kw in keywords if kw in known]


def global_competence(totals: Mapping[str, float]) -> dict[str, float]:
    """gamma_i from profile totals T_i: shift when negative, square, normalise."""
    lowest = min(totals.values())
    shifted = {m: (t - lowest + 1 if lowest < 0 else t) for m, t in totals.items()}
    scaled = {m: s**2 for m, s in shifted.items()}
    norm = sum(scaled.values())
    if norm == 0:  # every total is 0: nothing tells the models apart
        return {m: 1.0 / len(scaled) for m in scaled}
    return {m: s / norm for m, s in scaled.items()}


def suitability(keywords: Sequence[str], profiles: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """S_i for the models whose profile contains at least one keyword, best first."""
    scores: dict[str, float] = {}
    for kw in keywords:
        for model, skills in profiles.items():
            if kw in skills:
                scores[model] = scores.get(model, 0.0) + skills[kw]
    # the reference ranks candidates by score before drawing; a stable sort keeps ties in pool order
    return dict(sorted(scores.items(), key=lambda item: item[1], reverse=True))


def expert_weights(scores: Mapping[str, float], gamma: Mapping[str, float]) -> tuple[dict[str, float], bool]:
    """w_i of step 3, and whether the scores were shifted (no candidate scored above 0)."""
    positive = {m: s for m, s in scores.items() if s > 0}
    if positive:
        return {m: s * gamma[m] for m, s in positive.items()}, False
    lowest = min(scores.values())
    return {m: (s - lowest + 1) * gamma[m] for m, s in scores.items()}, True


def expert_probabilities(scores: Mapping[str, float], gamma: Mapping[str, float]) -> dict[str, float]:
    """p_i from local suitability and global competence (steps 3 of the module doc)."""
    weights, _ = expert_weights(scores, gamma)
    total = sum(weights.values())
    if total == 0:  # every candidate has zero competence: fall back to equal chances
        return {m: 1.0 / len(weights) for m in weights}
    return {m: w / total for m, w in weights.items()}


_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def question_key(seed: int, draw_key: str) -> int:
    """A question's 64-bit stream key: its draws depend on (seed, draw key) alone, never
    on the rest of the batch."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\x1f{draw_key}".encode(), digest_size=8).digest(), "big")


def _splitmix64(z: int) -> int:
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK
    return z ^ (z >> 31)


def question_uniforms(seed: int, draw_key: str, k: int) -> list[float]:
    """The question's k uniform numbers in [0, 1): splitmix64 over its key, counter-based,
    so that a whole batch can draw them at once with numpy (routing_batch) and get the
    very same floats. (A seeded ``random.Random`` per question cost 5 µs just to seed.)"""
    key = question_key(seed, draw_key)
    return [(_splitmix64((key + (i + 1) * _GOLDEN) & _MASK) >> 11) * 2.0**-53 for i in range(k)]


def draw_uniform(uniforms: Sequence[float], population: Sequence[str]) -> list[str]:
    """One draw per uniform u, with replacement, equal chances: index floor(u * n)."""
    n = len(population) + 0.0
    return [population[math.floor(u * n)] for u in uniforms]


def draw_weighted(uniforms: Sequence[float], population: Sequence[str], weights: Sequence[float]) -> list[str]:
    """One draw per uniform u, with replacement, by weight: the first index whose running
    total exceeds u * total (``random.choices``' rule, spelled out so the batch path can
    reproduce it float for float)."""
    cum = list(itertools.accumulate(weights))
    total = cum[-1] + 0.0
    hi = len(population) - 1
    return [population[bisect.bisect(cum, u * total, 0, hi)] for u in uniforms]


def route_question(
    question_id: str,
    keywords: Sequence[str],
    pool: Sequence[str],
    k: int,
    seed: int,
    profiles: Mapping[str, Mapping[str, float]] | None,
    gamma: Mapping[str, float] | None = None,
    align: Aligner = exact_align,
    vocabulary: list[str] | None = None,
    draw_key: str | None = None,
) -> Route:
    uniforms = question_uniforms(seed, question_id if draw_key is None else draw_key, k)
    if profiles is None:
        return Route(tuple(draw_uniform(uniforms, list(pool))), "uniform-no-profiles", tuple(keywords))
    if vocabulary is None:
        vocabulary = list(dict.fromkeys(s for p in profiles.values() for s in p))
    mapped = align(list(keywords), vocabulary)
    scores = suitability(mapped, profiles)
    if not scores:
        return Route(tuple(draw_uniform(uniforms, list(pool))), "uniform-no-keywords", tuple(mapped))
    if gamma is None:
        gamma = global_competence({m: sum(p.values()) for m, p in profiles.items()})
    probs = expert_probabilities(scores, gamma)
    experts = draw_weighted(uniforms, list(probs), list(probs.values()))
    return Route(tuple(experts), "skills", tuple(mapped), probs)


def apply_min_share(routes: Mapping[str, Route], threshold: float, seed: int) -> dict[str, Route]:
    """Replace experts picked for less than ``threshold`` of all slots (reference semantics:
    substitutes are drawn among the frequent experts, weighted by their counts)."""
    counts = Counter(e for r in routes.values() for e in r.experts)
    total = sum(counts.values())
    if total == 0:
        return dict(routes)
    frequent = {m: c for m, c in counts.items() if c / total >= threshold}
    if not frequent:
        raise ValueError(
            f"min_share {threshold} leaves no expert: none was picked for that share of the batch; lower it"
        )
    rng = random.Random(f"{seed}\x1fmin-share")
    names, weights = list(frequent), list(frequent.values())
    out: dict[str, Route] = {}
    for qid, route in routes.items():
        experts, replaced = [], []
        for e in route.experts:
            if e in frequent:
                experts.append(e)
            else:
                sub = rng.choices(names, weights=weights, k=1)[0]
                experts.append(sub)
                replaced.append((e, sub))
        out[qid] = Route(tuple(experts), route.method, route.keywords, route.probabilities, tuple(replaced))
    return out
