"""The controller end to end against the SGLang STAND-IN: deterministic answers, so routing by
profiles, the group order and the load count can be checked exactly."""

import json
import sys

from conftest import ROOT, pids_alive
from symoe_agents import EventLog, SymbolicMoE
from symoe_agents.config import parse_config

STANDIN = ROOT / "tests" / "standins" / "sglang_standin.py"


def config(tmp_path, profiles=None, aggregator="g2"):
    py = tmp_path / "sglang-python"
    py.write_text(f"#!/bin/sh\nexec {sys.executable} {STANDIN} \"$@\"\n")
    py.chmod(0o755)
    model = lambda path: {"backend": "sglang", "model_path": path, "python": str(py), "start_timeout_s": 20}  # noqa: E731
    data = {
        "k": 3,
        "models": {"g1": model("org/One"), "g2": model("org/Two"), "g3": model("org/Three")},
        "roles": {"skill_inferencer": "g1", "experts": ["g1", "g2", "g3"], "aggregator": aggregator},
        "sampling": {"skill_inferencer": {"samples": 3}},
        "schedule": {"gpus": [0]},  # preflight: there is no GPU here; the stand-in needs none
    }
    if profiles:
        data["profiles"] = str(profiles)
    return parse_config(data, "test")


def write_profiles(d):
    d.mkdir()
    for name, skills in {"g1": {"arithmetic": 5, "algebra": 2}, "g2": {"arithmetic": -3}, "g3": {"history": 4}}.items():
        (d / f"{name}.json").write_text(json.dumps({"model": name, "skills": skills}))


async def test_profile_routing_and_schedule_through_the_controller(tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_LOAD_S", "0.2")
    write_profiles(tmp_path / "profiles")
    events = EventLog()
    async with SymbolicMoE(config(tmp_path, tmp_path / "profiles", aggregator="g1"), events=events) as moe:
        results = await moe.solve_batch([f"What is {i} + 1? The options are: (A) x (B) y" for i in range(4)])
    for r in results:
        # the stand-in always answers "Keywords: arithmetic, algebra": only g1 has a positive score
        assert r.skills == ["arithmetic", "algebra"]
        assert r.routing == "skills" and r.experts == ["g1", "g1", "g1"]
        assert [a.extracted for a in r.expert_answers] == ["A", "A", "A"]
        assert r.final_answer == "A" and r.final_source == "aggregator"
    # skills, experts and aggregation all on g1: one load for the whole run
    assert [e.model for e in events.events if e.kind == "server_start"] == ["g1"]
    assert [e.group for e in events.events if e.kind == "group_start"] == ["skills:g1", "expert:g1", "aggregate:g1"]
    assert pids_alive([e.pid for e in events.events if e.kind == "server_start"]) == []


async def test_an_expert_whose_server_fails_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_LOAD_S", "0.2")
    cfg = config(tmp_path, aggregator="g1")
    data = cfg.model_dump()
    data["models"]["g2"]["model_path"] = "org/Broken"
    data["models"]["g2"]["extra_args"] = ["--no-such-flag"]  # the stand-in's argparse exits 2
    cfg = parse_config(data, "test")
    events = EventLog()
    async with SymbolicMoE(cfg, events=events, seed=1) as moe:
        results = await moe.solve_batch([f"Q{i}? The options are: (A) x (B) y" for i in range(6)])
    broken = [a for r in results for a in r.expert_answers if a.model == "g2"]
    assert broken, "seed 1 should recruit g2 at least once"
    for a in broken:
        assert a.text is None and "exited with code 2" in a.error
    mixed = 0
    for r in results:  # a question with any working expert still got its answer
        if any(a.model != "g2" for a in r.expert_answers):
            assert r.final_answer is not None
            mixed += any(a.model == "g2" for a in r.expert_answers)
        else:  # recruited only the broken expert: said so, not guessed
            assert r.final_answer is None and "aggregator skipped: no expert answered" in " ".join(r.errors)
        if any(a.model == "g2" for a in r.expert_answers):
            assert any("server unavailable" in e for e in r.errors)
    assert mixed, "seed 1 should give some question both g2 and a working expert"
    assert any(e.kind == "server_failed" and e.model == "g2" for e in events.events)
    # exactly the questions that recruited the broken expert list an error
    assert moe.summary.failed_questions == sum(1 for r in results if "g2" in r.experts)
    for r in results:
        expected = "no-expert-answers" if set(r.experts) == {"g2"} else "answered"
        assert r.aggregator_status == expected


def test_a_questions_cut_off_calls_are_listed_in_call_order_not_finishing_order():
    from symoe_agents.controller import _in_call_order

    # as noted on a batching server: slot 2 finished before slot 0, sample 3 before sample 1
    noted = ["skills smollm2 (sample 3)", "skills smollm2 (sample 1)", "expert smollm2 (slot 2), an earlier layer",
             "expert smollm2 (slot 2)", "expert gemma3 (slot 0)", "aggregator smollm2"]  # fmt: skip
    assert _in_call_order(noted) == [
        "skills smollm2 (sample 1)", "skills smollm2 (sample 3)", "expert gemma3 (slot 0)",
        "expert smollm2 (slot 2), an earlier layer", "expert smollm2 (slot 2)", "aggregator smollm2",
    ]  # fmt: skip
