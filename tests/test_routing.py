from collections import Counter

import pytest

from symoe_agents.routing import (
    apply_min_share,
    exact_align,
    expert_probabilities,
    global_competence,
    route_question,
    suitability,
)
from symoe_agents.routing_batch import route_batch

# method.md's worked example: totals A=40, B=-10, C=5; skills [algebra, algebra, geometry];
# profiles A(3,-1), B(1,2), C(-2,0). "other" pads each profile to its stated total.
WORKED = {
    "A": {"algebra": 3, "geometry": -1, "other": 38},
    "B": {"algebra": 1, "geometry": 2, "other": -13},
    "C": {"algebra": -2, "geometry": 0, "other": 7},
}


def test_worked_example_global_competence():
    gamma = global_competence({m: sum(p.values()) for m, p in WORKED.items()})
    assert gamma["A"] == pytest.approx(0.910, abs=5e-4)
    assert gamma["B"] == pytest.approx(0.00035, abs=5e-6)
    assert gamma["C"] == pytest.approx(0.0896, abs=5e-4)


def test_worked_example_suitability_and_probabilities():
    scores = suitability(["algebra", "algebra", "geometry"], WORKED)
    assert scores == {"A": 5, "B": 4, "C": -4}
    gamma = global_competence({m: sum(p.values()) for m, p in WORKED.items()})
    probs = expert_probabilities(scores, gamma)
    assert set(probs) == {"A", "B"}  # only positive suitability are candidates
    assert probs["A"] == pytest.approx(0.9997, abs=1e-4)
    assert probs["B"] == pytest.approx(0.0003, abs=1e-4)


@pytest.mark.parametrize(
    "totals, expected",
    [
        ({"a": 1, "b": 1}, {"a": 0.5, "b": 0.5}),
        ({"a": 3, "b": 1}, {"a": 0.9, "b": 0.1}),  # no shift when all >= 0: 9/10, 1/10
        ({"a": -1, "b": 0}, {"a": 0.2, "b": 0.8}),  # shift: 1, 2 -> 1/5, 4/5
        ({"a": 0, "b": 0}, {"a": 0.5, "b": 0.5}),  # degenerate: equal
    ],
)
def test_global_competence_table(totals, expected):
    got = global_competence(totals)
    assert got == pytest.approx(expected)


def test_all_non_positive_suitability_uses_shifted_scores():
    scores = {"a": -1.0, "b": -3.0}
    probs = expert_probabilities(scores, {"a": 0.5, "b": 0.5})
    # shifted: a = -1+3+1 = 3, b = 1 -> 3/4, 1/4
    assert probs == pytest.approx({"a": 0.75, "b": 0.25})


def test_models_without_any_keyword_are_not_candidates():
    profiles = {"a": {"law": 2}, "b": {"chemistry": 5}}
    assert suitability(["law"], profiles) == {"a": 2}


def test_draws_are_with_replacement_and_seeded():
    profiles = {"a": {"x": 10}, "b": {"x": -10}}
    r = route_question("q1", ["x"], ["a", "b"], 3, 0, profiles)
    assert r.experts == ("a", "a", "a")  # only a is positive: drawn three times
    assert r.method == "skills"
    r1 = route_question("q7", ["x"], ["a", "b"], 3, 5, {"a": {"x": 1}, "b": {"x": 1}})
    r2 = route_question("q7", ["x"], ["a", "b"], 3, 5, {"a": {"x": 1}, "b": {"x": 1}})
    assert r1 == r2


def test_no_keywords_is_uniform_with_replacement():
    profiles = {"a": {"x": 1}, "b": {"x": 1}, "c": {"x": 1}}
    routes = route_batch([(f"q{i}", []) for i in range(300)], ["a", "b", "c"], 3, 0, profiles)
    assert all(r.method == "uniform-no-keywords" for r in routes.values())
    counts = Counter(e for r in routes.values() for e in r.experts)
    assert set(counts) == {"a", "b", "c"}
    assert all(250 < c < 350 for c in counts.values())  # 900 draws, ~300 each
    assert any(len(set(r.experts)) < 3 for r in routes.values())  # repeats happen


def test_unknown_keywords_fall_back_to_uniform():
    r = route_question("q", ["astrology"], ["a", "b"], 2, 0, {"a": {"x": 1}, "b": {"x": 2}})
    assert r.method == "uniform-no-keywords"
    assert r.keywords == ()


def test_no_profiles_is_uniform_and_says_so():
    r = route_question("q", ["x"], ["a", "b"], 3, 0, None)
    assert r.method == "uniform-no-profiles"
    assert len(r.experts) == 3 and set(r.experts) <= {"a", "b"}


def test_question_route_does_not_depend_on_the_rest_of_the_batch():
    profiles = {"a": {"x": 1}, "b": {"x": 1}}
    small = route_batch([("q1", ["x"])], ["a", "b"], 3, 0, profiles)
    big = route_batch([("q0", ["x"]), ("q1", ["x"]), ("q2", ["x"])], ["a", "b"], 3, 0, profiles)
    assert small["q1"].experts == big["q1"].experts


def test_different_seeds_give_different_routes():
    profiles = {m: {"x": 1} for m in "abcdef"}
    a = route_batch([(f"q{i}", ["x"]) for i in range(20)], list("abcdef"), 3, 0, profiles)
    b = route_batch([(f"q{i}", ["x"]) for i in range(20)], list("abcdef"), 3, 1, profiles)
    assert [r.experts for r in a.values()] != [r.experts for r in b.values()]


def test_exact_align_keeps_duplicates_and_drops_unknowns():
    assert exact_align(["a", "z", "a"], ["a", "b"]) == ["a", "a"]


def test_min_share_replaces_rare_experts():
    from symoe_agents.routing import Route

    routes = {f"q{i}": Route(("a", "a", "b"), "skills") for i in range(30)}
    routes["q_rare"] = Route(("c", "a", "b"), "skills")
    out = apply_min_share(routes, 0.05, seed=0)
    assert "c" not in {e for r in out.values() for e in r.experts}
    assert out["q_rare"].replaced and out["q_rare"].replaced[0][0] == "c"
    assert out["q_rare"].experts[0] in {"a", "b"}
    assert out["q1"] == routes["q1"]  # untouched


def test_min_share_that_excludes_everyone_is_an_error():
    from symoe_agents.routing import Route

    routes = {"q1": Route(("a", "b", "c"), "skills")}
    with pytest.raises(ValueError, match="lower it"):
        apply_min_share(routes, 0.9, seed=0)


def test_min_share_via_route_batch_cuts_distinct_experts():
    profiles = {m: {"x": w} for m, w in zip("abcdefgh", [10, 10, 10, 3, 3, 3, 3, 3])}
    qs = [(f"q{i}", ["x"]) for i in range(200)]
    plain = route_batch(qs, list("abcdefgh"), 3, 0, profiles)
    cut = route_batch(qs, list("abcdefgh"), 3, 0, profiles, min_share=0.05)
    n_plain = len({e for r in plain.values() for e in r.experts})
    n_cut = len({e for r in cut.values() for e in r.experts})
    assert n_plain == 8 and n_cut == 3  # the five rare experts (~2.6% each) are replaced


@pytest.mark.parametrize("integer_scores", [True, False], ids=["integer-scores", "float-scores"])
def test_the_batch_path_draws_exactly_what_the_reference_draws(integer_scores):
    """routing_batch vectorises route_question; on random batches (ties, duplicates, zero
    and negative scores, unknown and missing keywords) every route must be identical."""
    import random

    from symoe_agents.routing import exact_align, global_competence, route_question
    from symoe_agents.routing_batch import route_batch

    rng = random.Random(11)
    vocab = [f"s{i}" for i in range(40)]
    pool = [f"m{j}" for j in range(7)]
    profiles = {
        m: {s: (float(rng.randint(-2, 3)) if integer_scores else rng.uniform(-2, 3)) for s in rng.sample(vocab, rng.randint(1, 25))}
        for m in pool
    }
    profiles["m6"] = {s: 0.0 for s in vocab[:5]}  # zero scores only: the no-positive branch
    questions = []
    for i in range(600):
        kws = [rng.choice(vocab + ["unknown"]) for _ in range(rng.randint(0, 6))]
        if i % 50 == 0:
            kws = kws[:1] * 3  # the same keyword three times counts three times
        questions.append((f"q{i}", kws))
    draw_keys = {qid: f"content of {qid}" for qid, _ in questions}
    batch = route_batch(questions, pool, 3, 5, profiles, draw_keys=draw_keys)
    gamma = global_competence({m: sum(p.values()) for m, p in profiles.items()})
    known = list(dict.fromkeys(s for p in profiles.values() for s in p))
    methods = set()
    for qid, kws in questions:
        ref = route_question(qid, kws, pool, 3, 5, profiles, gamma, exact_align, known, draw_key=draw_keys[qid])
        got = batch[qid]
        assert (got.experts, got.method, got.keywords) == (ref.experts, ref.method, ref.keywords), qid
        assert list(got.probabilities.items()) == list(ref.probabilities.items()), qid
        methods.add(ref.method)
    assert methods == {"skills", "uniform-no-keywords"}


def test_question_uniforms_are_uniform_and_weighted_draws_follow_the_probabilities():
    from symoe_agents.routing import draw_weighted, question_uniforms

    us = [u for i in range(20000) for u in question_uniforms(0, f"q{i}", 3)]
    assert all(0.0 <= u < 1.0 for u in us)
    counts = [0] * 10
    for u in us:
        counts[int(u * 10)] += 1
    assert all(abs(c / len(us) - 0.1) < 0.01 for c in counts), counts  # each decile within 1 point
    picks = [p for i in range(10000) for p in draw_weighted(question_uniforms(1, f"q{i}", 1), ["a", "b"], [0.7, 0.3])]
    assert abs(picks.count("a") / len(picks) - 0.7) < 0.02
    assert question_uniforms(0, "x", 3) == question_uniforms(0, "x", 3) != question_uniforms(1, "x", 3)


def test_draws_follow_the_draw_key_not_the_id():
    """The controller keys draws by a question's content: one id holding different questions
    (repeated ``moe.solve`` calls) must not repeat one draw, and one question keeps its draw."""
    from symoe_agents.routing_batch import route_batch

    profiles = {m: {"x": 1.0} for m in "abcdef"}
    pool = list("abcdef")
    draws = [route_batch([("1", ["x"])], pool, 3, 0, profiles, draw_keys={"1": f"question {i}"})["1"].experts for i in range(20)]
    assert len(set(draws)) > 1
    again = route_batch([("other-id", ["x"])], pool, 3, 0, profiles, draw_keys={"other-id": "question 0"})["other-id"].experts
    assert again == draws[0]
    uniform = [route_batch([("1", [])], pool, 3, 0, None, draw_keys={"1": f"question {i}"})["1"].experts for i in range(20)]
    assert len(set(uniform)) > 1
