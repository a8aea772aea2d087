"""profile -> pick-aggregator -> solve --profiles, end to end on the real embedded pool, on a
slice of the reference validation sets."""

import json

import pytest

from conftest import UPSTREAM, hand_instruction, listed_letters, read_jsonl, symoe_async
from symoe_agents.profiles import Profile, build_profiles, load_profiles, synthetic_aggregation_items  # noqa: F401

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


def _pool_config(tmp_path, api):
    """The real SmolLM2 server is a candidate aggregator; the skill inferencer and the
    experts are scripted STAND-IN hosted models whose answers are known by construction:
    ``skiller`` names two keywords per question, ``right`` always answers the gold letter,
    ``wrong1`` and ``wrong2`` never do."""
    hosted = "".join(f'[models.{m}]\nbackend = "openai"\nbase_url = "{api.base_url}"\nmodel = "{m}"\n' for m in ("right", "wrong1", "wrong2", "skiller"))
    path = tmp_path / "pool.toml"
    path.write_text(
        'k = 3\n[models.smollm2]\nbackend = "llamacpp"\nembedded = "smollm2-135m-instruct"\n' + hosted
        + '[roles]\nskill_inferencer = "skiller"\nexperts = ["right", "wrong1", "wrong2"]\naggregator = "smollm2"\n'
        "[sampling.skill_inferencer]\nsamples = 3\nmax_tokens = 24\n[sampling.aggregator]\nmax_tokens = 48\n"
    )  # fmt: skip
    return path


def _scripted(questions: list[dict]):
    """Replies of the stand-in experts: the question is found in the prompt."""

    def reply(req: dict):
        prompt = req["messages"][0]["content"]
        q = next(q for q in questions if q["question"] in prompt)
        wrong = [x for x in listed_letters(q["question"]) if x != q["gold_answer"]]
        return {
            # scripted, so that profile and solve name the same keywords: a real server that
            # batches (llama-server) may give other texts for the same seed in another batch
            "skiller": f"Keywords: subject {q['id']}, careful reading",
            "right": f"Checked every option. The answer is ({q['gold_answer']})",
            "wrong1": f"<think>scratch work nobody should see</think>The answer is ({wrong[0]})",
            "wrong2": f"Hmm. The answer is ({wrong[1]})",
        }[req["model"]]

    return reply


async def test_profile_pick_aggregator_and_solve(tmp_path):
    import hashlib

    from conftest import ROOT
    from standins.openai_standin import ScriptedAPI

    questions = []
    for name in ("MMLU_Pro_train.json", "GPQA_train.json"):
        data = json.loads((UPSTREAM / name).read_text())
        questions += [{"id": f"{name[:4].lower()}-{i}", **r} for i, r in enumerate(data[:3])]
    validation = tmp_path / "val.jsonl"
    validation.write_text("".join(json.dumps(q) + "\n" for q in questions))
    n = len(questions)
    prof = tmp_path / "profiles"
    async with ScriptedAPI([], _scripted(questions)) as api:
        cfg = _pool_config(tmp_path, api)
        code, out, err = await symoe_async("profile", validation, "-o", prof, "--config", cfg)
        assert code == 0, err[-2000:]
        assert f"{3 * n} new answers, 0 reused" in out

        # every answer is kept with the sha256 of exactly the prompt the model received
        received = {(r["model"], hashlib.sha256(r["messages"][0]["content"].encode()).hexdigest()) for r in api.requests if r["model"] != "skiller"}
        answers = read_jsonl(prof / "answers.jsonl")
        assert len(answers) == 3 * n and {(a["model"], a["prompt_sha256"]) for a in answers} == received
        # the profile arithmetic, by hand: +1 per keyword of a question answered right, -1 if wrong
        skills = {r["id"]: r["keywords"] for r in read_jsonl(prof / "skills.jsonl")}
        profiles = load_profiles(prof, ["right", "wrong1", "wrong2"])
        for model, sign in (("right", 1), ("wrong1", -1), ("wrong2", -1)):
            expected: dict[str, int] = {}
            for kws in skills.values():
                for kw in kws:
                    expected[kw] = expected.get(kw, 0) + sign
            assert profiles[model].skills == expected
            assert profiles[model].validation_accuracy == (1.0 if sign > 0 else 0.0)
        assert all(sorted(skills[q["id"]]) == ["careful reading", f"subject {q['id']}"] for q in questions)  # named 3 times each

        again_code, again_out, again_err = await symoe_async("profile", validation, "-o", prof, "--config", cfg)
        assert again_code == 0 and f"0 new answers, {3 * n} reused" in again_out
        assert "starting server" not in again_err
        # another sampling setting is another call: asked again (the keywords are the same calls: kept)
        other = tmp_path / "other.toml"
        other.write_text(cfg.read_text() + "[sampling.expert]\nmax_tokens = 77\n")
        code, out, err = await symoe_async("profile", validation, "-o", prof, "--config", other)
        assert code == 0 and f"{3 * n} new answers, 0 reused" in out and "starting server" not in err
        assert all(r["max_tokens"] == 77 for r in api.requests[-3 * n :])

        sent = len(api.requests)
        code, out, err = await symoe_async("pick-aggregator", "--profiles", prof, "--config", cfg)
        assert code == 0, err[-2000:]
        choice = json.loads((prof / "_aggregator.json").read_text())
        assert choice["items"] == n  # each question has exactly 1 right and 2 wrong answers
        assert choice["aggregator"] == "right" and "chosen aggregator: right" in out
        assert choice["scores"]["right"] == 1.0 and choice["scores"]["wrong1"] == choice["scores"]["wrong2"] == 0.0
        assert set(choice["scores"]) == {"right", "wrong1", "wrong2", "smollm2"}
        aggregations = read_jsonl(prof / "aggregations.jsonl")
        assert sorted((a["model"], a["id"]) for a in aggregations) == sorted((m, q["id"]) for m in choice["scores"] for q in questions)
        # the synthetic task is solve's aggregator prompt: built here by hand from the template file
        template = (ROOT / "prompts" / "aggregator.md").read_text().rstrip("\n")
        by_question = {}
        for req in api.requests[sent:]:
            if req["model"] == "right":
                prompt = req["messages"][0]["content"]
                q = next(q for q in questions if f"Question: {q['question']}" in prompt)
                by_question[q["id"]] = prompt
        assert sorted(by_question) == sorted(q["id"] for q in questions)
        for q in questions:
            prompt = by_question[q["id"]]
            assert "scratch work" not in prompt and "<think>" not in prompt
            body = prompt.split("Responses from the models:\n", 1)[1].split(f"\n\nQuestion: {q['question']}", 1)[0]
            shown = body.split("\n\n")
            assert [s.split("\n", 1)[0] for s in shown] == ["Response 1:", "Response 2:", "Response 3:"]
            right = f"Checked every option. The answer is ({q['gold_answer']})"
            assert sum(s.endswith("\n" + right) for s in shown) == 1  # 1 right and 2 wrong, as shuffled
            letters = listed_letters(q["question"])
            expected = template.replace("{responses}", body).replace("{question}", q["question"])
            assert prompt == expected.replace("{answer_instruction}", hand_instruction("multiple_choice", letters))
        agg_sent = len(api.requests)
        code, _, _ = await symoe_async("pick-aggregator", "--profiles", prof, "--config", cfg)
        assert code == 0 and len(api.requests) == agg_sent  # every aggregation reused: same prompts

        keyed = [q for q in questions if skills[q["id"]]]
        qfile = tmp_path / "q.jsonl"
        qfile.write_text("".join(json.dumps({"id": f"t-{q['id']}", "question": q["question"], "gold_answer": q["gold_answer"]}) + "\n" for q in keyed))
        out_path = tmp_path / "out.jsonl"
        code, _, err = await symoe_async("solve", qfile, "-o", out_path, "--profiles", prof, "--config", cfg, "--events", tmp_path / "ev.jsonl")
        # another skill inferencer setting: the keywords are inferred again; the experts' answers, the same calls, are kept
        fewer = tmp_path / "fewer.toml"
        fewer.write_text(cfg.read_text().replace("samples = 3", "samples = 2"))
        asked_before_fewer = len(api.requests)
        again = await symoe_async("profile", validation, "-o", prof, "--config", fewer)
    assert again[0] == 0 and f"0 new answers, {3 * n} reused" in again[1]
    assert [r["model"] for r in api.requests[asked_before_fewer:]].count("skiller") == 2 * n  # asked again, 2 samples each
    latest = {r["id"]: r for r in read_jsonl(prof / "skills.jsonl")}
    assert all(len(r["samples"]) == 2 for r in latest.values()) and len(read_jsonl(prof / "skills.jsonl")) == 2 * n
    assert code == 0, err[-2000:]
    (routing,) = [e for e in read_jsonl(tmp_path / "ev.jsonl") if e["kind"] == "routing"]
    assert "MiniLM" in routing["detail"]["alignment"]  # the [embed] extra is part of the test install
    records = read_jsonl(out_path)
    assert len(records) == len(keyed)
    for r in records:
        # the same question gets the same keywords; only 'right' has positive scores on them
        assert r["skills"] == skills[r["id"].removeprefix("t-")]
        assert r["routing"] == "skills" and r["experts"] == ["right", "right", "right"]
        assert r["aggregator"] == "right" and r["aggregator_status"] == "answered"
        assert (r["final_answer"], r["final_source"], r["correct"]) == (r["gold_answer"], "aggregator", True)


def test_shipped_embedded_profiles_are_the_arithmetic_of_their_raw_answers():
    from symoe_agents.config import load_config
    from symoe_agents.inputs import read_questions

    cfg = load_config()
    d = cfg.profiles
    assert d is not None and d.is_dir()
    validation = read_questions(d.parent / "validation.jsonl")
    skills = {r["id"]: r["keywords"] for r in read_jsonl(d / "skills.jsonl")}
    assert set(skills) == {q.id for q in validation}
    gold = {q.id: q.gold_answer for q in validation}
    letters = {q.id for q in validation if q.gold_answer in ("A", "B", "C", "D")}
    assert len(letters) == 22 and all(gold[q].isdigit() for q in set(gold) - letters)  # 22 letters, 2 integers

    def right(extracted, qid):  # written out here: a letter, or these tiny models' plain integers
        return extracted == gold[qid] if qid in letters else extracted is not None and extracted.strip() == gold[qid]

    answers = read_jsonl(d / "answers.jsonl")
    assert sorted((a["model"], a["id"]) for a in answers) == sorted((m, q) for m in cfg.roles.experts for q in gold)
    for a in answers:
        assert a["error"] is None and a["prompt_sha256"] and a["correct"] == right(a["extracted"], a["id"])
    profiles = load_profiles(d, cfg.roles.experts)
    for m in cfg.roles.experts:  # the arithmetic, by hand
        mine = [a for a in answers if a["model"] == m]
        expected: dict[str, int] = {}
        for a in mine:
            for kw in skills[a["id"]]:
                expected[kw] = expected.get(kw, 0) + (1 if a["correct"] else -1)
        assert profiles[m].skills == expected
        assert profiles[m].validation_accuracy == sum(a["correct"] for a in mine) / len(mine)
    choice = json.loads((d / "_aggregator.json").read_text())
    aggregations = read_jsonl(d / "aggregations.jsonl")
    for m, score in choice["scores"].items():
        mine = [a for a in aggregations if a["model"] == m]
        assert len(mine) == choice["items"] and score == sum(right(a["extracted"], a["id"]) for a in mine) / choice["items"]
    assert choice["scores"][choice["aggregator"]] == max(choice["scores"].values())  # the best scorer
