"""profile -> pick-aggregator -> solve --profiles, end to end on the real embedded pool, on a
slice of the reference validation sets."""

import json

import pytest

from conftest import UPSTREAM, read_jsonl
from symoe_agents.profiles import Profile, build_profiles, load_profiles, synthetic_aggregation_items
from test_e2e import run_symoe

pytestmark = pytest.mark.servers


def test_build_profiles_arithmetic():
    keywords = {"q1": ["algebra", "geometry"], "q2": ["algebra"], "q3": []}
    correct = {"a": {"q1": True, "q2": False, "q3": True}, "b": {"q1": False}}
    p = build_profiles(keywords, correct, ["a", "b"])
    assert p["a"] == Profile(model="a", skills={"algebra": 0, "geometry": 1}, validation_accuracy=2 / 3)
    assert p["b"].skills == {"algebra": -1, "geometry": -1} and p["b"].validation_accuracy == 0


def test_synthetic_items_pick_one_right_two_wrong_seeded():
    answers = {
        "q1": {"a": ("A!", True), "b": ("B?", False), "c": ("C?", False), "d": ("D!", True)},
        "q2": {"a": ("x", True), "b": ("y", False)},  # only one wrong: skipped
        "q3": {"a": ("x", False), "b": ("y", False), "c": ("z", False)},  # none right: skipped
    }
    items = synthetic_aggregation_items(answers, seed=0)
    assert [it["id"] for it in items] == ["q1"]
    (it,) = items
    assert len(it["responses"]) == 3
    assert sum(r in ("A!", "D!") for r in it["responses"]) == 1
    assert synthetic_aggregation_items(answers, seed=0) == items
    assert any(synthetic_aggregation_items(answers, seed=s)[0] != it for s in range(1, 20))


@pytest.fixture(scope="module")
def validation(tmp_path_factory):
    if not UPSTREAM.is_dir():
        pytest.skip("../shared/upstream-data not present")
    out = []
    for name in ("MMLU_Pro_train.json", "GPQA_train.json"):
        data = json.loads((UPSTREAM / name).read_text())
        out += [{"id": f"{name[:4].lower()}-{i}", **r} for i, r in enumerate(data[:4])]
    path = tmp_path_factory.mktemp("val") / "val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


def test_profile_pick_aggregator_and_solve(validation, tmp_path):
    prof = tmp_path / "profiles"
    first = run_symoe("profile", validation, "-o", prof)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "24 new answers, 0 reused" in first.stdout

    # the profile arithmetic, recomputed from the raw answers that were kept
    skills = {r["id"]: r["keywords"] for r in read_jsonl(prof / "skills.jsonl")}
    answers = read_jsonl(prof / "answers.jsonl")
    assert len(answers) == 8 * 3 and all(a["text"] for a in answers)
    profiles = load_profiles(prof, ["smollm2", "smollm2-focused", "gemma3"])
    for model, p in profiles.items():
        mine = [a for a in answers if a["model"] == model]
        expected: dict[str, int] = {}
        for a in mine:
            for kw in skills[a["id"]]:
                expected[kw] = expected.get(kw, 0) + (1 if a["correct"] else -1)
        assert p.skills == expected
        assert p.validation_accuracy == sum(a["correct"] for a in mine) / len(mine)

    again = run_symoe("profile", validation, "-o", prof)  # resumes: nothing is asked again
    assert again.returncode == 0 and "0 new answers, 24 reused" in again.stdout
    assert "starting server" not in again.stderr

    pick = run_symoe("pick-aggregator", "--profiles", prof)
    choice = json.loads((prof / "_aggregator.json").read_text()) if pick.returncode == 0 else None
    if pick.returncode != 0:  # tiny models: possibly no question with 1 right and 2 wrong answers
        assert "no validation question has 1 correct and 2 incorrect" in pick.stderr
        (prof / "_aggregator.json").write_text(json.dumps({"aggregator": "gemma3"}))
        choice = {"aggregator": "gemma3"}
    else:
        assert set(choice["scores"]) == {"smollm2", "smollm2-focused", "gemma3"}
        assert f"chosen aggregator: {choice['aggregator']}" in pick.stdout

    q = tmp_path / "q.jsonl"
    q.write_text("".join(json.dumps({"id": f"t{i}", "question": r["question"]}) + "\n"
                         for i, r in enumerate(read_jsonl(validation)[:2])))  # fmt: skip
    out = tmp_path / "out.jsonl"
    solved = run_symoe("solve", q, "-o", out, "--profiles", prof, "--events", tmp_path / "ev.jsonl")
    assert solved.returncode == 0, solved.stderr[-2000:]
    (routing,) = [e for e in read_jsonl(tmp_path / "ev.jsonl") if e["kind"] == "routing"]
    from symoe_agents.alignment import sentence_transformers_available

    if sentence_transformers_available():
        assert "MiniLM" in routing["detail"]["alignment"]  # keywords mapped by embeddings
    for r in read_jsonl(out):
        assert r["routing"] in ("skills", "uniform-no-keywords")
        assert r["aggregator"] == choice["aggregator"]


def test_shipped_embedded_profiles_are_the_arithmetic_of_their_raw_answers():
    from symoe_agents.config import load_config
    from symoe_agents.inputs import read_questions

    cfg = load_config()
    d = cfg.profiles
    assert d is not None and d.is_dir()
    validation = read_questions(d.parent / "validation.jsonl")
    skills = {r["id"]: r["keywords"] for r in read_jsonl(d / "skills.jsonl")}
    assert set(skills) == {q.id for q in validation}
    answers = read_jsonl(d / "answers.jsonl")
    correct = {m: {a["id"]: a["correct"] for a in answers if a["model"] == m} for m in cfg.roles.experts}
    assert all(len(v) == len(validation) for v in correct.values())
    assert load_profiles(d, cfg.roles.experts) == build_profiles(skills, correct, cfg.roles.experts)
    choice = json.loads((d / "_aggregator.json").read_text())
    assert choice["scores"][choice["aggregator"]] == max(choice["scores"].values())  # the best scorer
