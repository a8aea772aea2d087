"""symoe eval: benchmark converters and method tables (pure), and every method end to end on
the real embedded pool with a report row checked against its own records."""

import json
import re

import pytest

from conftest import UPSTREAM, read_jsonl
from symoe_agents.eval.benchmarks import from_aime, from_gpqa, from_medmcqa, from_mmlu_pro, select
from symoe_agents.eval.report import markdown
from symoe_agents.formats import option_letters
from symoe_agents.methods import METHOD_NAMES, build_methods
from symoe_agents.records import Question


def test_mmlu_pro_and_medmcqa_rows_become_upstream_records():
    r = from_mmlu_pro({"question": "Q?", "options": ["a", "b", "c"], "answer": "C", "category": "law"})
    assert r == {"question": "Q? The options are: (A) a (B) b (C) c", "gold_answer": "C", "category": "law"}
    m = from_medmcqa({"question": "M?", "opa": "w", "opb": "x", "opc": "y", "opd": "z", "cop": 2, "subject_name": "Anatomy"})
    assert m["gold_answer"] == "C" and option_letters(m["question"]) == list("ABCD") and m["category"] == "Anatomy"


def test_gpqa_options_are_shuffled_seeded_and_the_gold_letter_follows_the_correct_answer():
    row = {"Question": "G?", "Correct Answer": "RIGHT", "Incorrect Answer 1": "w1", "Incorrect Answer 2": "w2", "Incorrect Answer 3": "w3"}
    golds = set()
    for seed in range(12):
        r = from_gpqa(row, seed)
        assert f"({r['gold_answer']}) RIGHT" in r["question"]
        assert from_gpqa(row, seed) == r
        golds.add(r["gold_answer"])
    assert len(golds) > 1  # the correct answer is not always (A)


def test_aime_rows_are_math():
    assert from_aime({"problem": "Find n.", "answer": 33}) == {"question": "Find n.", "gold_answer": "33", "answer_format": "math"}


def test_select_by_category_and_limit():
    qs = [Question(id=str(i), question="q", category=c) for i, c in enumerate(["law", "Law", "math", None])]
    assert [q.id for q in select(qs, None, ["law"])] == ["0", "1"]
    assert [q.id for q in select(qs, 1, ["law", "math"])] == ["0"]


def test_methods_table():
    acc = {"a": 0.2, "b": 0.6, "c": 0.4}
    ms = {m.name: m for m in build_methods(list(METHOD_NAMES), ["a", "b", "c"], 2, acc)}
    assert ms["single"].fixed == ("b",) and not ms["single"].aggregate
    assert ms["top-k"].fixed == ("b", "c") and ms["top-k"].aggregate
    assert ms["self-moa"].fixed == ("b", "b")
    assert ms["moa"].layers == 2 and ms["moa"].fixed == ("b", "c")
    assert ms["majority"].routing == "skills" and not ms["majority"].aggregate
    assert ms["random"].routing == "uniform"
    with pytest.raises(ValueError, match="unknown method"):
        build_methods(["best-of-n"], ["a"], 1, {})


def test_markdown_has_a_row_per_method():
    rows = [{"method": m, "questions": 2, "accuracy": 0.5, "by_benchmark": {"x": 0.5}, "by_category": {"x": 0.5},
             "unanswered": 1, "aggregator_unparsable": 2, "aggregator_failed": 3, "fallbacks": 4, "aggregations_skipped": 5,
             "truncated_calls": 6, "calls_per_question": 4.0, "tokens_per_question": 10, "cost_per_1k_usd": 1.25,
             "device_s_per_question": 0.5, "model_loads": 2, "wall_s": 1.0}
            for m in ("symoe", "single")]  # fmt: skip
    md = markdown(rows)
    assert "| no answer | agg. unparsable | agg. failed | fallbacks | agg. skipped | truncated |" in md
    assert "| symoe | 2 | 50.0 | 50.0 | 1 | 2 | 3 | 4 | 5 | 6 | 4.0 | 10 | 1.2500 | 0.50 | 2 | 1.0 |" in md and "| single |" in md


def hand_loads(method: str, recruited: set[str]) -> int:
    """Server starts of one method on the embedded pool, worked out from the documented plan:
    smollm2 and smollm2-focused share server S, which also serves the skills and the
    aggregators; gemma3 has server G; the experts on the skill server run first; one server
    at a time; MoA runs its proposers twice."""
    experts = (["S"] if recruited & {"smollm2", "smollm2-focused"} else []) + (["G"] if "gemma3" in recruited else [])
    skills = ["S"] if method in ("symoe", "majority") else []
    aggregate = [] if method in ("majority", "single") else ["S"]
    sequence = skills + experts * (2 if method == "moa" else 1) + aggregate
    return sum(1 for i, server in enumerate(sequence) if i == 0 or sequence[i - 1] != server)


@pytest.mark.servers
def test_eval_every_method_end_to_end(tmp_path):
    from test_e2e import run_symoe

    from symoe_agents.config import load_config

    data = load_config().model_dump(mode="json")
    data["k"] = 2
    data["sampling"] = {"skill_inferencer": {"samples": 2, "max_tokens": 24, "temperature": 0.7},
                        "expert": {"max_tokens": 48, "temperature": 0.7}, "aggregator": {"max_tokens": 48, "temperature": 0.7}}  # fmt: skip
    import tomllib  # noqa: F401 - the config is written as TOML below

    lines = ["k = 2", f'profiles = "{data["profiles"]}"']
    for name, m in data["models"].items():
        lines.append(f"[models.{name}]")
        for key in ("backend", "embedded", "chat_format"):
            if m.get(key):
                lines.append(f'{key} = "{m[key]}"')
        if m["sampling"].get("temperature") is not None:
            lines.append(f"sampling = {{ temperature = {m['sampling']['temperature']} }}")
    lines += ['[roles]', 'skill_inferencer = "smollm2"', 'experts = ["smollm2", "smollm2-focused", "gemma3"]', 'aggregator = "smollm2"',
              "[sampling.skill_inferencer]", "samples = 2", "max_tokens = 24",
              "[sampling.expert]", "max_tokens = 48", "[sampling.aggregator]", "max_tokens = 48",
              "[cost]", "device_hour = 3.6"]  # fmt: skip
    cfg = tmp_path / "small.toml"
    cfg.write_text("\n".join(lines) + "\n")
    out = tmp_path / "report"
    proc = run_symoe("eval", UPSTREAM / "MMLU_Pro_train.json", "--limit", "2", "--config", cfg, "-o", out, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["method"]: r for r in json.loads((out / "report.json").read_text())}
    assert list(rows) == list(METHOD_NAMES)
    expected_calls = {"symoe": 2 + 2 + 1, "majority": 2 + 2, "single": 1, "top-k": 2 + 1, "moa": 2 * 2 + 1,
                      "self-moa": 2 + 1, "random": 2 + 1}  # fmt: skip
    md = (out / "report.md").read_text()
    for name, row in rows.items():
        records = read_jsonl(out / f"{name}.jsonl")
        assert len(records) == row["questions"] == 2
        for r in records:  # MMLU-Pro golds are letters: right exactly when the final letter is the gold
            assert r["correct"] == (r["final_answer"] is not None and r["final_answer"] == r["gold_answer"])
            if name in ("majority", "single"):
                assert r["aggregator_status"] is None and r["final_source"] == ("vote" if r["final_answer"] else None)
            else:
                assert r["aggregator_status"] in ("answered", "unparsable")
                assert r["final_source"] == ("aggregator" if r["aggregator_status"] == "answered" else None)
        assert row["accuracy"] == sum(r["correct"] for r in records) / 2
        assert row["unanswered"] == sum(r["final_answer"] is None for r in records)
        statuses = [r["aggregator_status"] for r in records]
        assert row["aggregator_unparsable"] == statuses.count("unparsable")
        assert row["aggregator_failed"] == statuses.count("failed")
        assert row["fallbacks"] == 0 and row["aggregations_skipped"] == 0  # neither is on in this config
        assert row["truncated_calls"] == sum(len(r["truncated"]) for r in records)
        assert row["calls_per_question"] == expected_calls[name]
        assert row["model_loads"] == sum(1 for e in read_jsonl(out / f"{name}.events.jsonl") if e["kind"] == "server_start")
        recruited = {e for r in records for e in r["experts"]}
        assert row["model_loads"] == hand_loads(name, recruited), (name, recruited)
        assert re.search(rf"^\| {re.escape(name)} \| 2 \| ", md, re.M)
        assert row["wall_s"] > 0 and row["tokens_per_question"] > 0
        # cost: each record's device time at $3.6 a device-hour; the row per 1,000 questions
        device = [r["usage"]["device_s"] for r in records]
        assert all(d > 0 for d in device)
        assert row["cost_per_1k_usd"] == pytest.approx(1000 * sum(device) / 1000 / 2, rel=1e-9)
        assert row["device_s_per_question"] == pytest.approx(sum(device) / 2, rel=1e-9)
        assert f"| {row['cost_per_1k_usd']:.4f} | {row['device_s_per_question']:.2f} |" in md
        assert set(row["by_benchmark"]) == {"MMLU_Pro_train"}
    assert rows["single"]["model_loads"] == 1  # one fixed model, no skills, no aggregator
    assert all(r["aggregator"] is None for r in read_jsonl(out / "majority.jsonl"))
    assert (out / "accuracy.png").stat().st_size > 1000
    assert (out / "accuracy_vs_cost.png").stat().st_size > 1000
