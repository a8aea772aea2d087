"""Routing a whole batch at once: ``routing.route_question``'s draws, vectorised.

Why: scoring question by question in Python costs ~30 µs a question (dict lookups for every
keyword and every model holding it); a 100,000-question batch spent seconds there. Here
the scores, candidate order, weights and draws of every question are numpy arrays; only
hashing each question id stays in Python.

The result is the reference's, float for float: scores are added in keyword order (adding
0.0 for a model that lacks a keyword changes nothing), candidates are ordered by score,
then by the position of the first keyword that made them candidates, then by pool order
(the reference's stable sort of its insertion order), and totals are running sums in that
order, as ``itertools.accumulate`` and ``sum`` make them. ``tests/test_routing.py`` checks
the two paths agree on random batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .routing import _GOLDEN, _MASK, Aligner, Route, apply_min_share, exact_align, global_competence, question_key, route_question


def route_batch(
    questions: Sequence[tuple[str, Sequence[str]]],
    pool: Sequence[str],
    k: int,
    seed: int,
    profiles: Mapping[str, Mapping[str, float]] | None,
    min_share: float | None = None,
    align: Aligner = exact_align,
    draw_keys: Mapping[str, str] | None = None,
) -> dict[str, Route]:
    """Route every (question id, keywords) pair; then apply the minimum-share rule if asked.
    ``draw_keys[id]`` keys a question's draws (default: its id)."""
    if profiles is None:
        routes = {
            qid: route_question(qid, kws, pool, k, seed, None, draw_key=draw_keys[qid] if draw_keys else None)
            for qid, kws in questions
        }
    else:
        profiles = {m: profiles[m] for m in pool}
        vocabulary = list(dict.fromkeys(s for p in profiles.values() for s in p))
        mapped = [(qid, align(list(kws), vocabulary)) for qid, kws in questions]
        routes = route_scored(mapped, list(pool), k, seed, profiles, vocabulary, draw_keys)
    if min_share:
        routes = apply_min_share(routes, min_share, seed)
    return routes


def route_scored(
    mapped: Sequence[tuple[str, list[str]]],
    pool: list[str],
    k: int,
    seed: int,
    profiles: Mapping[str, Mapping[str, float]],
    vocabulary: Sequence[str],
    draw_keys: Mapping[str, str] | None = None,
) -> dict[str, Route]:
    """Routes for (question id, keywords already mapped onto ``vocabulary``, every keyword
    of the profiles); ``draw_keys[id]`` keys a question's draws (default: its id)."""
    n, m = len(mapped), len(pool)
    if n == 0:
        return {}
    gamma = global_competence({p: sum(profiles[p].values()) for p in pool})
    vocab = {kw: i for i, kw in enumerate(vocabulary)}
    pad = len(vocab)  # a row that nobody holds
    score_of = np.zeros((pad + 1, m))
    held_by = np.zeros((pad + 1, m), dtype=bool)
    for j, p in enumerate(pool):
        rows = [vocab[kw] for kw in profiles[p]]
        score_of[rows, j] = list(profiles[p].values())
        held_by[rows, j] = True

    width = max((len(kws) for _, kws in mapped), default=0) or 1
    ids = np.array([[vocab.get(kw, pad) for kw in kws] + [pad] * (width - len(kws)) for _, kws in mapped], dtype=np.int64)

    scores = np.zeros((n, m))
    first = np.full((n, m), width, dtype=np.int64)  # position of the first keyword a model holds
    for pos in range(width):
        col = ids[:, pos]
        scores += score_of[col]
        np.minimum(first, np.where(held_by[col], pos, width), out=first)
    candidate = first < width

    # the reference's candidate order: best score first, ties by first keyword, then pool order
    order = np.lexsort((np.broadcast_to(np.arange(m), (n, m)), first, -scores, ~candidate))
    s_sorted = np.take_along_axis(scores, order, 1)
    c_sorted = np.take_along_axis(candidate, order, 1)
    g_sorted = np.asarray([gamma[p] for p in pool])[order]

    positive = c_sorted & (s_sorted > 0)
    any_positive = positive.any(1)
    lowest = np.where(c_sorted, s_sorted, np.inf).min(1)
    population = np.where(any_positive[:, None], positive, c_sorted)  # a prefix of each sorted row
    with np.errstate(invalid="ignore"):  # rows without candidates compute inf * 0 here; masked just below
        weights = np.where(any_positive[:, None], s_sorted * g_sorted, (s_sorted - lowest[:, None] + 1) * g_sorted)
    weights = np.where(population, weights, 0.0)
    size = population.sum(1)
    total = np.cumsum(weights, 1)[:, -1]  # a running sum in candidate order, as sum() makes it
    zero = total == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        probs = np.where(zero[:, None], 1.0 / np.maximum(size, 1)[:, None], weights / total[:, None])
    probs = np.where(population, probs, 0.0)
    running = np.cumsum(probs, 1)  # random.choices' cumulative weights
    last = np.maximum(size - 1, 0)
    draw_total = running[np.arange(n), last] + 0.0

    keys = np.array([question_key(seed, draw_keys[qid] if draw_keys else qid) for qid, _ in mapped], dtype=np.uint64)
    uniforms = batch_uniforms(keys, k)
    # bisect(cum, u * total, 0, hi=size-1): how many of the first size-1 running totals are <= x
    x = uniforms * draw_total[:, None]
    within = np.arange(m)[None, :] < last[:, None]
    picked = ((running[:, None, :] <= x[:, :, None]) & within[:, None, :]).sum(2)
    weighted_pick = np.take_along_axis(order, picked, 1)
    uniform_pick = np.floor(uniforms * (m + 0.0)).astype(np.int64)

    names = np.asarray(pool, dtype=object)
    has = candidate.any(1)
    chosen = np.where(has[:, None], weighted_pick, uniform_pick)
    chosen_names = names[chosen].tolist()
    table = _Distributions(pool, order, probs, size)
    routes: dict[str, Route] = {}
    for i, ((qid, kws), skilled) in enumerate(zip(mapped, has.tolist())):
        if skilled:
            routes[qid] = Route(tuple(chosen_names[i]), "skills", tuple(kws), _Row(table, i))
        else:
            routes[qid] = Route(tuple(chosen_names[i]), "uniform-no-keywords", tuple(kws))
    return routes


def batch_uniforms(keys: np.ndarray, k: int) -> np.ndarray:
    """``routing.question_uniforms`` for many questions: the same splitmix64, in uint64
    arithmetic (which wraps, as the reference's ``& _MASK`` does)."""
    out = np.empty((len(keys), k))
    for i in range(k):
        z = keys + np.uint64((i + 1) * _GOLDEN & _MASK)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        out[:, i] = (z >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return out


class _Distributions:
    """Every question's expert probabilities, as the batch's arrays (read on demand)."""

    def __init__(self, pool: list[str], order: np.ndarray, probs: np.ndarray, size: np.ndarray):
        self.pool, self.order, self.probs, self.size = pool, order, probs, size


class _Row(Mapping[str, float]):
    """One question's probabilities, made into a dict only when someone looks: building
    100,000 dicts nobody reads took longer than the routing itself."""

    __slots__ = ("_table", "_i", "_dict")

    def __init__(self, table: _Distributions, i: int):
        self._table, self._i = table, i
        self._dict: dict[str, float] | None = None

    def _d(self) -> dict[str, float]:
        if self._dict is None:
            t, i = self._table, self._i
            top = int(t.size[i])
            self._dict = {t.pool[j]: p for j, p in zip(t.order[i, :top].tolist(), t.probs[i, :top].tolist())}
        return self._dict

    def __getitem__(self, key: str) -> float:
        return self._d()[key]

    def __iter__(self):
        return iter(self._d())

    def __len__(self) -> int:
        return len(self._d())

    def __repr__(self) -> str:
        return repr(self._d())
