"""Answers of known truth, in the phrasings real models use, replayed through ``symoe solve``
over the paper's four reference validation sets: every record must be scored as the truth
says. Every role runs on a STAND-IN hosted API (tests/standins/openai_standin.py) that
answers each question right or wrong, by design, in one of many phrasings; the aggregator's
reply is the final answer. The truth and the option letters are worked out here from the
data, not by symoe's code.
"""

from __future__ import annotations

import hashlib
import json

from conftest import UPSTREAM, listed_letters, read_jsonl, symoe_async
from standins.openai_standin import ScriptedAPI

PER_SET = 15

# {x}: the chosen letter, {y}: another of the question's letters, {q}: the question, echoed
CHOICE_PHRASINGS = [
    "Let me reason step by step. The options differ in one detail.\nThe answer is ({x})",
    "The answer is ({x}).\n\nNote that ({y}) is a common trap here; I would not pick it.",
    "({y}) is wrong because of the units. Eliminating it, the answer is {x}.",
    "**Answer: ({x})**",
    "The correct answer is **{x}**.",
    "### Final Answer\n\n**{x}**",
    "Final answer: {x}",
    "Thus, the answer is $\\boxed{{{x}}}$.",
    "\\boxed{{\\text{{({x})}}}}",
    "<think>Maybe ({y})? No, that fails.</think>\nThe answer is ({x})",
    "I compared ({y}) and ({x}); ({x}) fits best.",
    "The answer is option {x}, since the others fail.",
    "After checking each option, I choose ({x}).",
    "({x}) is correct.",
    "Some might think the answer is ({y}). However, on closer inspection, ({x}) is correct.",
    "The answer is not ({y}); it is ({x}).",
    "If ({y}) were correct, the units would not match. Hence ({x}).",
    "Question: {q}\n\nLet me think about it. Therefore, ({x}).",
    "Response 2 says the answer is ({y}), but it misreads the question. The correct answer is ({x}).",
    "The best choice is {x}.",
    "Answer: {x}) as explained above",
    "The answer is ({x}) because it matches the definition. ({y}) would need more evidence.",
]
# {v}: the value given, {w}: another value
MATH_PHRASINGS = [
    "Working it out carefully.\nThe answer is \\boxed{{{v}}}",
    "First I got \\boxed{{{w}}}, but that double counts. Correcting: \\boxed{{{v}}}",
    "<think>\\boxed{{{w}}}?</think> So the answer is \\boxed{{{v}}}.",
    "The answer is {v}.",
    "**Final Answer**: $\\boxed{{{v}}}$",
    "Answer: ${v}$",
]


def _plan(qid: str, question: dict, n: int) -> tuple[str, bool]:
    """The aggregator's reply for the ``n``-th question of its kind, and whether it is right:
    the phrasings are taken in turn, so each is used; right or wrong is fixed per question."""
    h = int.from_bytes(hashlib.sha256(qid.encode()).digest()[:8], "big")
    right = h % 3 != 0
    gold = question["gold_answer"]
    if "The options are:" in question["question"]:
        letters = listed_letters(question["question"])
        others = [x for x in letters if x != gold]
        x = gold if right else others[h % len(others)]
        y = others[(h // 7) % len(others)] if right else gold
        return CHOICE_PHRASINGS[n % len(CHOICE_PHRASINGS)].format(x=x, y=y, q=question["question"]), right
    value = int(gold.split()[0])  # "080 or 081 (both were accepted)": 80 is right too
    given = value if right else value + 1
    # equivalent forms of the same value: zero-padded, a fraction
    form = (h // 5) % 3
    v = f"{given:03d}" if form == 1 else f"\\frac{{{2 * given}}}{{2}}" if form == 2 else str(given)
    return MATH_PHRASINGS[n % len(MATH_PHRASINGS)].format(v=v, w=value + 7), right


async def test_answers_of_known_truth_are_scored_as_the_truth_says(tmp_path):
    questions = []
    for name in ("MMLU_Pro_train.json", "GPQA_train.json", "MedMCQA_train.json", "AIME24_train.json"):
        data = json.loads((UPSTREAM / name).read_text())
        questions += [{"id": f"{name.split('_')[0]}-{i}", **r} for i, r in enumerate(data[:PER_SET])]
    choice = [q for q in questions if "The options are:" in q["question"]]
    math = [q for q in questions if "The options are:" not in q["question"]]
    assert len(choice) >= len(CHOICE_PHRASINGS) and len(math) >= len(MATH_PHRASINGS)
    plan = {q["id"]: _plan(q["id"], q, n) for kind in (choice, math) for n, q in enumerate(kind)}
    by_text = {q["question"]: q["id"] for q in questions}

    def reply(req: dict):
        prompt = req["messages"][0]["content"]
        if req["model"] == "skills":
            return "Keywords: reasoning, knowledge"
        qid = next(i for text, i in by_text.items() if f"Question: {text}\n" in prompt)
        if req["model"] == "agg":
            return plan[qid][0]
        return "Some expert reasoning. The answer is unclear to me."

    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in questions))
    async with ScriptedAPI([], reply) as api:
        cfg = tmp_path / "c.toml"
        cfg.write_text(
            "k = 2\n"
            + "".join(f'[models.{m}]\nbackend = "openai"\nbase_url = "{api.base_url}"\nmodel = "{m}"\n' for m in ("skills", "e1", "e2", "agg"))
            + '[roles]\nskill_inferencer = "skills"\nexperts = ["e1", "e2"]\naggregator = "agg"\n[sampling.skill_inferencer]\nsamples = 2\n'
        )  # fmt: skip
        out = tmp_path / "out.jsonl"
        code, _, err = await symoe_async("solve", qfile, "--config", cfg, "-o", out, timeout=600)
    assert code == 0, err[-3000:]
    records = {r["id"]: r for r in read_jsonl(out)}
    assert len(records) == len(questions) == 4 * PER_SET
    wrong = []
    for q in questions:
        r = records[q["id"]]
        reply_text, right = plan[q["id"]]
        expected_format = "multiple_choice" if "The options are:" in q["question"] else "math"
        if (r["answer_format"], r["final_source"], r["correct"]) != (expected_format, "aggregator", right):
            wrong.append((q["id"], r["answer_format"], r["final_answer"], r["correct"], right, reply_text))
    assert wrong == []
    summary = err
    truth = sum(right for _, right in plan.values())
    assert f"accuracy: {truth}/{len(questions)}" in summary
    assert 0 < truth < len(questions)  # both outcomes are exercised
