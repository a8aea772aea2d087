"""Cost per call, per question and per run; the --max-cost budget stop and its resume.

Hosted prices run on a STAND-IN hosted API (tests/standins/openai_standin.py) whose every
completion reports the same usage (7 prompt tokens, 3 completion tokens), so each call's
price is known by hand. Device time runs on the real embedded llama.cpp servers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import read_jsonl, small_pool_toml, symoe_async
from standins.openai_standin import ScriptedAPI
from symoe_agents.config import parse_config
from symoe_agents.costs import ShareClock, call_cost
from symoe_agents.config import Price
from symoe_agents.errors import ConfigError

# USD per million tokens, (input, output); the stand-in's usage is 7 in, 3 out per call
PRICES = {"sk": (1.0, 2.0), "e1": (3.0, 5.0), "e2": (0.0, 10.0), "agg": (4.0, 0.0)}
PER_CALL = {m: (7 * i + 3 * o) / 1e6 for m, (i, o) in PRICES.items()}  # sk 13e-6, e1 36e-6, e2 30e-6, agg 28e-6


def priced_toml(tmp_path: Path, api: ScriptedAPI, in_flight: int = 2, extra: str = "") -> Path:
    models = "".join(
        f'[models.{m}]\nbackend = "openai"\nbase_url = "{api.base_url}"\nmodel = "{m}"\nprice = {{ input_per_mtok = {i}, output_per_mtok = {o} }}\n'
        for m, (i, o) in PRICES.items()
    )
    path = tmp_path / "priced.toml"
    path.write_text(f'k = 2\n{models}[roles]\nskill_inferencer = "sk"\nexperts = ["e1", "e2"]\naggregator = "agg"\n'
                    f"[sampling.skill_inferencer]\nsamples = 1\n[concurrency]\nmax_in_flight = {in_flight}\n{extra}")  # fmt: skip
    return path


def questions(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Question {i}: which? (A) one (B) two"}) + "\n" for i in range(n)))
    return path


async def test_hosted_calls_cost_their_tokens_at_the_models_prices(tmp_path):
    async with ScriptedAPI([]) as api:
        cfg, q, out = priced_toml(tmp_path, api), questions(tmp_path, 6), tmp_path / "a.jsonl"
        code, _, stderr = await symoe_async("solve", q, "--config", cfg, "-o", out, timeout=300)
        assert code == 0, stderr[-3000:]
        records = read_jsonl(out)
        total = 0.0
        for r in records:
            u = r["usage"]
            assert u["skills"]["cost_usd"] == pytest.approx(PER_CALL["sk"], rel=1e-12)
            for a in r["expert_answers"]:
                assert a["cost_usd"] == pytest.approx(PER_CALL[a["model"]], rel=1e-12) and a["device_s"] == 0
            assert u["experts"]["cost_usd"] == pytest.approx(sum(PER_CALL[e] for e in r["experts"]), rel=1e-12)
            assert r["aggregator_answer"]["cost_usd"] == pytest.approx(PER_CALL["agg"], rel=1e-12)
            want = PER_CALL["sk"] + sum(PER_CALL[e] for e in r["experts"]) + PER_CALL["agg"]
            assert u["cost_usd"] == pytest.approx(want, rel=1e-12) and u["device_s"] == 0
            total += want
        assert f"cost: ${total:.4f} (${1000 * total / 6:.4f} per 1,000 questions)" in stderr

        # the same questions again, answered from the cache: paid by the first run, free now
        again = tmp_path / "b.jsonl"
        code, _, stderr = await symoe_async("solve", q, "--config", cfg, "-o", again, "--cache", tmp_path / "a.cache.sqlite", timeout=300)
        assert code == 0, stderr[-3000:]
        for r in read_jsonl(again):
            assert r["usage"]["cost_usd"] == 0 and all(a["cached"] for a in r["expert_answers"])
            # each call still says what it cost when it was made
            assert [a["cost_usd"] for a in r["expert_answers"]] == pytest.approx([PER_CALL[e] for e in r["experts"]])
        assert "cost: $" not in stderr


@pytest.mark.parametrize("stage", ["skills", "experts"])
async def test_max_cost_stops_cleanly_and_the_same_command_resumes_without_asking_again(tmp_path, stage):
    n = 8
    async with ScriptedAPI([]) as api:
        if stage == "skills":  # one request in flight: the skill group stops within a call or two of the budget
            cfg = priced_toml(tmp_path, api, in_flight=1)
            budget = 4.5 * PER_CALL["sk"]  # spent inside the skill group (8 calls of 13e-6)
        else:  # after the 8 skill calls, within the first expert group; the next one starts nothing
            cfg = priced_toml(tmp_path, api, in_flight=2)
            budget = 8 * PER_CALL["sk"] + 3 * PER_CALL["e1"]
        q, out = questions(tmp_path, n), tmp_path / "a.jsonl"
        code, _, stderr = await symoe_async("solve", q, "--config", cfg, "-o", out, "--max-cost", budget, timeout=300)
        assert code == 3, stderr[-3000:]
        assert "Traceback" not in stderr
        spent = float(re.search(r"the calls cost \$([0-9.]+) of the \$([0-9.]+) allowed", stderr).group(1))
        first = [(b["model"], b["messages"][0]["content"]) for b in api.requests]
        if stage == "skills":
            assert all(m == "sk" for m, _ in first) and 5 <= len(first) < n  # it stopped: the group did not finish
        else:
            assert [m for m, _ in first].count("sk") == n and 0 < len(first) - n < 2 * n
            assert len({m for m, _ in first} - {"sk"}) == 1  # the one expert group that crossed it; after it, nothing is sent
        assert spent == pytest.approx(sum(PER_CALL[m] for m, _ in first), abs=1e-4)  # every call sent was paid and kept
        assert spent >= budget
        assert "Re-run the same command" in stderr
        assert read_jsonl(out) == []  # no question reached its aggregator

        # resumed: the answers paid for come from the cache, only the rest is asked
        code, _, stderr = await symoe_async("solve", q, "--config", cfg, "-o", out, timeout=300)
        assert code == 0, stderr[-3000:]
        second = [(b["model"], b["messages"][0]["content"]) for b in api.requests[len(first):]]
        assert not set(first) & set(second)  # no call asked twice
        assert len(first) + len(second) == n + n * 2 + n  # skills, 2 experts, the aggregator: each once
    assert sorted(r["id"] for r in read_jsonl(out)) == sorted(f"q{i}" for i in range(n))


async def test_a_budget_nothing_can_spend_is_refused_before_anything_starts(tmp_path):
    async with ScriptedAPI([]) as api:
        path = tmp_path / "free.toml"
        path.write_text(priced_toml(tmp_path, api).read_text().replace("price = ", "#"))
        code, _, stderr = await symoe_async("solve", questions(tmp_path, 2), "--config", path, "-o", tmp_path / "o.jsonl", "--max-cost", "1", timeout=120)
        assert code == 2 and "no model of a role has a price above 0" in stderr and api.calls == 0


def test_prices_belong_to_the_kind_of_model():
    local = {"backend": "llamacpp", "model_path": "/m.gguf"}
    hosted = {"backend": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "x"}
    roles = {"skill_inferencer": "a", "experts": ["a"], "aggregator": "a"}
    with pytest.raises(ConfigError, match="a local model costs device time, not tokens"):
        parse_config({"models": {"a": {**local, "price": {"input_per_mtok": 1}}}, "roles": roles}, "t")
    with pytest.raises(ConfigError, match="a hosted model costs tokens, not device time"):
        parse_config({"models": {"a": {**hosted, "price": {"device_hour": 1}}}, "roles": roles}, "t")
    for unspendable in ({"models": {"a": hosted}, "roles": roles, "cost": {"device_hour": 1, "max_usd": 1}},  # no local model
                        {"models": {"a": hosted, "b": {**hosted, "price": {"input_per_mtok": 1}}}, "roles": roles, "cost": {"max_usd": 1}},  # b has no role
                        {"models": {"a": {**hosted, "price": {"input_per_mtok": 0}}}, "roles": roles, "cost": {"max_usd": 1}}):  # fmt: skip
        with pytest.raises(ConfigError, match="no model of a role has a price above 0"):
            parse_config(unspendable, "t")
    with pytest.raises(ConfigError, match="finite"):
        parse_config({"models": {"a": {**hosted, "price": {"output_per_mtok": float("inf")}}}, "roles": roles}, "t")
    cfg = parse_config({"models": {"a": local}, "roles": roles, "cost": {"device_hour": 2.5}}, "t")
    assert cfg.price("a").device_hour == 2.5  # the run's default device price
    assert call_cost(Price(device_hour=3.6), 10**6, 10**6, 2.0) == pytest.approx(0.002)  # 2 s at $0.001 a second
    assert call_cost(Price(input_per_mtok=2, output_per_mtok=8), 500_000, 250_000, 9.0) == pytest.approx(3.0)


def test_share_clock_splits_busy_time_among_open_sequences(monkeypatch):
    import symoe_agents.costs as costs

    now = [0.0]
    monkeypatch.setattr(costs.time, "monotonic", lambda: now[0])
    clock = ShareClock()
    a = clock.enter()  # t=0: a alone
    now[0] = 2.0
    b = clock.enter(2)  # t=2: b holds 2 sequences; 3 open
    now[0] = 5.0
    share_a = clock.leave(a)  # 2 s alone + 3 s at a third
    now[0] = 7.0
    share_b = clock.leave(b, 2)  # 3 s at a third + 2 s at a half, per sequence
    assert share_a == pytest.approx(3.0) and share_b == pytest.approx(2.0)
    assert share_a + 2 * share_b == pytest.approx(7.0)  # the busy time, all of it, once


@pytest.mark.servers
async def test_local_calls_cost_their_share_of_the_device(tmp_path):
    """Real servers: each call's cost is its device time at the device-hour price; a group's
    calls share out the server's load and hold no more than the time the group held it."""
    cfg = small_pool_toml(tmp_path, extra="\n[cost]\ndevice_hour = 3.6\n")  # $0.001 a device-second
    q, out, ev = questions(tmp_path, 3), tmp_path / "a.jsonl", tmp_path / "ev.jsonl"
    code, _, stderr = await symoe_async("solve", q, "--config", cfg, "-o", out, "--events", ev, timeout=600)
    assert code == 0, stderr[-3000:]
    records, events = read_jsonl(out), read_jsonl(ev)
    ends = {e["group"]: e for e in events if e["kind"] == "group_end"}
    by_group: dict[str, float] = {g: 0.0 for g in ends}
    for r in records:
        u = r["usage"]
        calls = [*r["expert_answers"], r["aggregator_answer"]]
        for c in calls:
            assert c["device_s"] > 0 and c["cost_usd"] == pytest.approx(c["device_s"] / 1000, rel=1e-9)
        for stage in ("skills", "experts", "aggregator"):
            assert u[stage]["cost_usd"] == pytest.approx(u[stage]["device_s"] / 1000, rel=1e-9)
        assert u["cost_usd"] == pytest.approx(u["device_s"] / 1000, rel=1e-9)
        by_group[next(g for g in ends if g.startswith("skills:"))] += u["skills"]["device_s"]
        for a in r["expert_answers"]:
            by_group[f"expert:{a['model']}"] += a["device_s"]
        by_group[f"aggregate:{r['aggregator']}"] += r["aggregator_answer"]["device_s"]
    for g, attributed in by_group.items():
        held, load = ends[g]["detail"]["held_s"], ends[g]["detail"]["load_s"]
        assert load - 1e-3 <= attributed <= held + 1e-3, (g, attributed, load, held)
        assert attributed > 0.5 * held  # the group's requests kept its server busy
        if load >= 0.5:  # the load is shared out: what no call holds (idle gaps) is far less than it
            assert held - attributed < load, (g, attributed, load, held)
    total = sum(r["usage"]["cost_usd"] for r in records)
    assert f"cost: ${total:.4f}" in stderr


async def test_eval_max_cost_is_one_budget_and_a_stop_keeps_the_finished_methods_report(tmp_path):
    from conftest import ROOT

    bench = ROOT.parent / "shared" / "upstream-data" / "MMLU_Pro_train.json"
    async with ScriptedAPI([]) as api:
        cfg, out = priced_toml(tmp_path, api), tmp_path / "report"
        # symoe on 2 questions costs about 2 x 107e-6; random, next, cannot finish in what is left
        code, stdout, stderr = await symoe_async("eval", bench, "--limit", "2", "--config", cfg, "-o", out, "--methods", "symoe,random",
                                                 "--max-cost", 2.6e-4, timeout=300)  # fmt: skip
        assert code == 3, stderr[-3000:]
        assert "Traceback" not in stderr and "budget spent" in stderr and "stopped." in stderr
    rows = json.loads((out / "report.json").read_text())
    assert [r["method"] for r in rows] == ["symoe"] and rows[0]["questions"] == 2
    assert rows[0]["cost_usd"] == pytest.approx(sum(r["usage"]["cost_usd"] for r in read_jsonl(out / "symoe.jsonl")))
    assert "| symoe | 2 |" in stdout
