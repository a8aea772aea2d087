"""Routing explanations: the probabilities recomputed from what an explanation says and the
profiles, by the method's formulas written out here (method.md section 4), and the draws
walked again from the uniforms."""

import random

import pytest

from symoe_agents.explain import explain_route
from symoe_agents.routing import Route, global_competence
from symoe_agents.routing_batch import route_batch


def recompute(explanation: dict, profiles: dict[str, dict[str, float]]) -> dict[str, float]:
    """p_i from the explanation's aligned keywords and the profiles, by hand."""
    aligned = [m["aligned_to"] for m in explanation["keywords"] if m["aligned_to"] is not None]
    totals = {m: sum(p.values()) for m, p in profiles.items()}
    low = min(totals.values())
    shifted_totals = {m: (t - low + 1 if low < 0 else t) for m, t in totals.items()}
    norm = sum(t * t for t in shifted_totals.values())
    gamma = {m: (t * t / norm if norm else 1 / len(totals)) for m, t in shifted_totals.items()}
    s = {m: sum(p[kw] for kw in aligned if kw in p) for m, p in profiles.items() if any(kw in p for kw in aligned)}
    if any(v > 0 for v in s.values()):
        w = {m: v * gamma[m] for m, v in s.items() if v > 0}
    else:
        lowest = min(s.values())
        w = {m: (v - lowest + 1) * gamma[m] for m, v in s.items()}
    total = sum(w.values())
    for c in explanation["candidates"]:
        assert c["suitability"] == pytest.approx(s[c["model"]], abs=1e-9)
        assert c["competence"] == pytest.approx(gamma[c["model"]], rel=1e-9)
    return {m: (v / total if total else 1 / len(w)) for m, v in w.items()}


def walk(explanation: dict) -> list[str]:
    """Each draw again: the first candidate whose running probability exceeds u times the sum."""
    probs = [c["probability"] for c in explanation["candidates"]]
    names = [c["model"] for c in explanation["candidates"]]
    out = []
    for d in explanation["draws"]:
        x, run = d["uniform"] * sum(probs), 0.0
        for name, p in zip(names, probs):
            run += p
            if run > x:
                break
        out.append(name)
    return out


def check(explanation: dict, profiles, experts: list[str]) -> None:
    want = recompute(explanation, profiles)
    got = {c["model"]: c["probability"] for c in explanation["candidates"]}
    assert got.keys() == want.keys()
    for m in want:
        assert got[m] == pytest.approx(want[m], rel=1e-9, abs=1e-15)
    assert walk(explanation) == [d["drawn"] for d in explanation["draws"]]
    assert [d["replaced_by"] or d["drawn"] for d in explanation["draws"]] == experts


WORKED = {  # method.md's worked example (totals 40, -10, 5)
    "A": {"algebra": 3, "geometry": -1, "other": 38},
    "B": {"algebra": 1, "geometry": 2, "other": -13},
    "C": {"algebra": -2, "geometry": 0, "other": 7},
}


def test_worked_example_explained():
    routes = route_batch([("q", ["algebra", "algebra", "geometry"])], list(WORKED), 3, 0, WORKED)
    gamma = global_competence({m: sum(p.values()) for m, p in WORKED.items()})
    ex = explain_route(routes["q"], ["algebra", "algebra", "geometry", "poetry"],
                       {"algebra": ("algebra", 1.0), "geometry": ("geometry", 1.0)}, WORKED, gamma, list(WORKED), 0, "q").model_dump()  # fmt: skip
    assert [(m["keyword"], m["aligned_to"]) for m in ex["keywords"]] == [
        ("algebra", "algebra"), ("algebra", "algebra"), ("geometry", "geometry"), ("poetry", None)]  # fmt: skip
    assert [c["model"] for c in ex["candidates"]] == ["A", "B"]  # C's S = -4: not a candidate
    assert [c["suitability"] for c in ex["candidates"]] == [5, 4] and ex["shifted"] is False
    assert ex["candidates"][0]["probability"] == pytest.approx(0.9997, abs=1e-4)
    check(ex, WORKED, list(routes["q"].experts))


def random_profiles(rng: random.Random, models: int, skills: int) -> dict[str, dict[str, float]]:
    vocab = [f"s{i}" for i in range(skills)]
    return {f"m{j}": {kw: rng.randint(-5, 5) for kw in rng.sample(vocab, rng.randint(1, skills))} for j in range(models)}


@pytest.mark.parametrize("min_share", [None, 0.2])
def test_random_batches_explained(min_share):
    rng = random.Random(7)
    shifted_seen = False
    for trial in range(30):
        profiles = random_profiles(rng, rng.randint(2, 6), 8)
        pool = list(profiles)
        questions = [(f"q{i}", [f"s{rng.randrange(10)}" for _ in range(rng.randint(0, 4))]) for i in range(20)]
        try:
            routes = route_batch(questions, pool, 4, trial, profiles, min_share)
        except ValueError:  # min_share left no expert: nothing to explain
            continue
        gamma = global_competence({m: sum(p.values()) for m, p in profiles.items()})
        vocab = {kw for p in profiles.values() for kw in p}
        for qid, kws in questions:
            matches = {kw: (kw, 1.0) for kw in kws if kw in vocab}
            ex = explain_route(routes[qid], kws, matches, profiles, gamma, pool, trial, qid).model_dump()
            assert ex["method"] == routes[qid].method
            if ex["method"] == "skills":
                check(ex, profiles, list(routes[qid].experts))
                # the batch path's probabilities are the explanation's, float for float
                assert {c["model"]: c["probability"] for c in ex["candidates"]} == dict(routes[qid].probabilities)
                shifted_seen |= ex["shifted"]
            else:  # no keyword known: uniform over the pool, floor(u * n)
                assert [c["probability"] for c in ex["candidates"]] == [1 / len(pool)] * len(pool)
                assert [pool[int(d["uniform"] * len(pool))] for d in ex["draws"]] == [d["drawn"] for d in ex["draws"]]
            if min_share is None:
                assert all(d["replaced_by"] is None for d in ex["draws"])
            else:
                assert [(d["drawn"], d["replaced_by"]) for d in ex["draws"] if d["replaced_by"]] == list(routes[qid].replaced)
    assert shifted_seen  # the batches reached the no-positive-score case too


def test_fixed_route_has_no_draws_to_explain():
    ex = explain_route(Route(("a", "b"), "fixed"), [], {}, None, None, ["a", "b"], 0, "q")
    assert [(d.drawn, d.uniform) for d in ex.draws] == [("a", None), ("b", None)] and ex.candidates == []
