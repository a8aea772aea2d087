"""The engine at scale (issue 12): prompts rendered when sent, answers on disk until their
question finishes, IO off the event loop, a busy cache that keeps its answers.

The models here are a STAND-IN hosted API (tests/standins/openai_standin.py): what is under
test is symoe's own memory and IO, not a model's answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import pytest

from standins.openai_standin import ScriptedAPI
from symoe_agents import SymbolicMoE, io_thread
from symoe_agents.agents import build_agent
from symoe_agents.answer_file import AnswerFile
from symoe_agents.cache import AnswerCache
from symoe_agents.config import parse_config
from symoe_agents.errors import OutputError
from symoe_agents.events import EventLog
from symoe_agents.group_runner import GroupRunner
from symoe_agents.loop_lag import LoopLagProbe
from symoe_agents.records import Completion, Question
from symoe_agents.schedule import Group, Requests
from symoe_agents.servers import ServerManager


def _hosted_config(api: ScriptedAPI | str, models: list[str], k: int = 2, in_flight: int = 4, **top):
    base_url = api if isinstance(api, str) else api.base_url
    keys = top.pop("keys", {})
    return parse_config(
        {
            "k": k,
            **top,
            "models": {m: {"backend": "openai", "base_url": base_url, "model": m, **({"api_key_env": keys[m]} if m in keys else {})}
                       for m in models},
            "roles": {"skill_inferencer": models[0], "experts": models[1:-1], "aggregator": models[-1]},
            "sampling": {"skill_inferencer": {"samples": 2}},
            "concurrency": {"max_in_flight": in_flight},
        },
        "test",
    )


async def test_a_group_renders_each_prompt_only_when_a_worker_sends_it():
    rendered = 0
    rendered_when_received: list[int] = []

    def reply(req: dict) -> str:
        rendered_when_received.append(rendered)
        return "The answer is (B)"

    async with ScriptedAPI([], text=reply) as api:
        cfg = _hosted_config(api, ["m", "e1", "e2", "agg"], in_flight=4)
        events = EventLog()
        manager = ServerManager(cfg, events)
        runner = GroupRunner(cfg, manager, events)
        agent = build_agent(cfg, "skill_inferencer", "m")
        group = Group("skills", "m", None, Requests([f"q{i}" for i in range(300)]))

        def prompt_of(i: int):
            nonlocal rendered
            rendered += 1
            return agent.template.render(question=f"Question {i}?")

        finals: dict[int, Completion] = {}
        try:
            stats = await runner.run(group, agent, prompt_of, finals.__setitem__)
        finally:
            await manager.aclose()
    assert len(finals) == 300 and all(c.error is None for c in finals.values()) and stats.calls == 300
    # when the server got its j-th request, at most j + 1 (sent) + 8 (a worker each, twice the
    # 4 in flight) + 1 (the first, rendered once to decide the server is needed) were rendered;
    # rendering the group up front had all 300 rendered before the first request
    assert max(r - j for j, r in enumerate(rendered_when_received)) <= 1 + 8 + 1


def _questions(n: int) -> list[Question]:
    return [Question(id=f"q{i}", question=f"Question number {i}: which option? (A) one (B) two") for i in range(n)]


async def test_answers_wait_on_disk_and_come_back_into_the_aggregation_prompt(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the run's store is made

    def reply(req: dict) -> str:
        prompt = req["messages"][-1]["content"]
        qid = prompt.split("Question number ", 1)[1].split(":", 1)[0]
        if req["model"] == "sk":
            return "Keywords: counting"
        if req["model"] == "agg":
            return "The answer is (B)"
        return f"Expert {req['model']} on question {qid}: the answer is (A)"

    stores_seen: list[int] = []
    records: list = []

    def on_result(r) -> None:
        stores_seen.append(len(list(tmp_path.glob("symoe-run-*.sqlite"))))
        records.append(r)

    async with ScriptedAPI([], text=reply) as api:
        cfg = _hosted_config(api, ["sk", "e1", "e2", "e3", "agg"], k=2)
        async with SymbolicMoE(cfg, check=False) as moe:
            summary = await moe.solve_each(_questions(40), on_result)
        agg_prompts = [r["messages"][-1]["content"] for r in api.requests if r["model"] == "agg"]
    assert summary.questions == 40 and len(records) == 40 and not summary.failed_questions
    assert stores_seen == [1] * 40  # the answers were on disk while questions finished
    assert not list(tmp_path.glob("symoe-run-*"))  # and the store is gone with the run
    assert len(agg_prompts) == 40
    for r in records:
        assert len(r.expert_answers) == 2 and [a.slot for a in r.expert_answers] == [0, 1]
        assert r.skill_samples == ["Keywords: counting"] * 2
        shown = next(p for p in agg_prompts if f"Question number {r.id[1:]}:" in p)
        for a in r.expert_answers:  # each aggregation prompt shows that question's own answers
            assert a.text == f"Expert {a.model} on question {r.id[1:]}: the answer is (A)" and a.text in shown
    calls = [*(a for r in records for a in r.expert_answers), *(r.aggregator_answer for r in records)]
    skill_calls = 40 * 2
    assert summary.calls_sent == len(calls) + skill_calls
    assert summary.prompt_tokens > sum(c.prompt_tokens for c in calls)  # the skill samples' tokens counted too


async def test_solve_batch_still_returns_every_record_in_input_order():
    async with ScriptedAPI([]) as api:
        cfg = _hosted_config(api, ["sk", "e1", "e2", "agg"], k=1)
        async with SymbolicMoE(cfg, check=False) as moe:
            results = await moe.solve_batch(list(reversed(_questions(12))))
    assert [r.id for r in results] == [f"q{i}" for i in reversed(range(12))]


async def test_a_scripted_model_stands_where_requests_meet_a_model():
    """``connect`` is the one seam between the engine and a model: nothing listens at the
    configured URL, so every answer here came through the scripted client."""
    from openai.types.chat import ChatCompletion

    seen: list[tuple[str, str]] = []

    class Scripted:
        def __init__(self, endpoint, timeout_s: float, max_in_flight: int):
            self.model = endpoint.served_model

        async def complete(self, **request) -> ChatCompletion:
            seen.append((self.model, request["model"]))
            text = "Keywords: counting" if request["model"] == "sk" else "The answer is (B)"
            return ChatCompletion.model_validate({
                "id": "scripted", "object": "chat.completion", "created": 0, "model": request["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
            })  # fmt: skip

        async def aclose(self) -> None:
            pass

    cfg = _hosted_config("http://127.0.0.1:9/v1", ["sk", "e1", "e2", "agg"], k=2)
    async with SymbolicMoE(cfg, check=False, connect=Scripted) as moe:
        results = await moe.solve_batch(_questions(5))
    assert [r.final_answer for r in results] == ["B"] * 5 and not any(r.errors for r in results)
    assert len(seen) == 5 * 2 + 5 * 2 + 5 and all(client == asked for client, asked in seen)


async def test_an_aggregator_that_cannot_start_still_lets_agreeing_questions_skip_it(monkeypatch):
    """The server is acquired at the first request that must be sent; when that fails, the
    requests after it that needed no server (here: questions whose experts agree) are still
    decided as such, not failed with it."""
    monkeypatch.delenv("SYMOE_TEST_ABSENT_KEY", raising=False)

    q0_calls = 0

    def reply(req: dict) -> str:
        nonlocal q0_calls
        prompt = req["messages"][-1]["content"]
        if req["model"] == "sk":
            return "Keywords: counting"
        if "Question number 0:" in prompt:  # q0's two experts disagree, whoever they are
            q0_calls += 1
            return "The answer is (A)" if q0_calls == 1 else "The answer is (B)"
        return "The answer is (B)"

    async with ScriptedAPI([], text=reply) as api:
        # acquiring the aggregator fails: its key is not set
        cfg = _hosted_config(api, ["sk", "e1", "e2", "agg"], k=2, aggregate="on-disagreement", keys={"agg": "SYMOE_TEST_ABSENT_KEY"})
        async with SymbolicMoE(cfg, check=False, seed=1) as moe:
            results = await moe.solve_batch(_questions(6))
    by_id = {r.id: r for r in results}
    assert by_id["q0"].aggregator_status == "failed" and "server unavailable" in by_id["q0"].errors[-1]
    for qid in ["q1", "q2", "q3", "q4", "q5"]:
        assert by_id[qid].aggregator_status == "skipped-consensus" and by_id[qid].final_answer == "B", by_id[qid]


async def test_an_error_raised_by_on_result_reaches_the_caller_as_itself():
    async with ScriptedAPI([]) as api:
        cfg = _hosted_config(api, ["sk", "e1", "e2", "agg"], k=1)

        def on_result(r) -> None:
            raise OutputError("the disk is full")

        async with SymbolicMoE(cfg, check=False) as moe:
            with pytest.raises(OutputError, match="the disk is full"):
                await moe.solve_each(_questions(3), on_result)


def _answer(text: str) -> Completion:
    return Completion(model="m", text=text, prompt_tokens=3, completion_tokens=4)


def test_a_cache_locked_by_another_process_keeps_the_answer_and_writes_it_later(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = AnswerCache(path, busy_timeout_s=0.2)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    cache.put("k1", _answer("first"), "expert", "q0", 0)
    io_thread.submit(lambda: None).result()  # the flush ran (and met the lock) before this
    assert cache.write_error is not None and "locked" in cache.write_error and cache.stored == 0
    other.execute("COMMIT")
    other.close()
    cache.put("k2", _answer("second"), "expert", "q1", 0)
    assert cache.get("k1").text == "first" and cache.get("k2").text == "second" and cache.stored == 2
    assert cache.write_error is None
    cache.close()


def test_a_locked_cache_retries_on_its_own_and_serves_what_waits(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = AnswerCache(path, busy_timeout_s=0.1, retry_s=0.2)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    cache.put("k1", _answer("waiting"), "expert", "q0", 0)
    io_thread.submit(lambda: None).result()
    assert cache.write_error is not None and cache.get("k1").text == "waiting"  # found while it waits
    other.execute("COMMIT")
    other.close()
    deadline = time.monotonic() + 10
    while cache.stored == 0 and time.monotonic() < deadline:  # no other put comes to flush it
        time.sleep(0.05)
    assert cache.stored == 1 and cache.write_error is None
    cache.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM answers").fetchone()[0] == 1


def test_answer_records_are_written_in_batches_in_order(tmp_path):
    from symoe_agents.records import QuestionResult

    out = tmp_path / "a.jsonl"
    qs = _questions(500)
    f = AnswerFile.open(out, qs)
    for q in qs:
        f.append(QuestionResult(id=q.id, question=q.question, answer_format="multiple_choice", skills=[], routing="fixed",
                                experts=[], expert_answers=[], aggregator=None))  # fmt: skip
    f.close()
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [q.id for q in qs]
    assert f.total == 500


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_stops_the_run_with_a_clear_error_instead_of_dropping_records(tmp_path):
    from symoe_agents.records import QuestionResult

    q = _questions(2)
    rec = [QuestionResult(id=x.id, question=x.question, answer_format="multiple_choice", skills=[], routing="fixed",
                          experts=[], expert_answers=[], aggregator=None) for x in q]  # fmt: skip
    f = AnswerFile.open(tmp_path / "a.jsonl", q, fresh=True)
    f._f.close()
    f._f = open("/dev/full", "w", encoding="utf-8")  # fault injection: the disk is full from here on
    f.append(rec[0])
    io_thread.submit(lambda: None).result()  # its write ran (and failed) before this
    with pytest.raises(OutputError, match="No space left on device.*answer cache"):
        f.append(rec[1])
    f.close()
    assert f.written == 0


async def test_the_loop_lag_probe_sees_a_loop_held_by_blocking_work():
    probe = LoopLagProbe(interval_s=0.01)
    probe.start()
    await asyncio.sleep(0.05)
    time.sleep(0.2)  # what the engine must never do: hold the loop
    await asyncio.sleep(0.05)
    report = probe.stop()
    assert report["max"] >= 150 and report["p99"] >= 150 and report["p50"] < 150


def test_a_run_store_left_by_a_killed_process_is_removed_and_its_own_goes_with_it(tmp_path):
    from symoe_agents.run_store import RunStore

    stale = tmp_path / "symoe-run-4194999-abc.sqlite"  # above the kernel's pid limit: that process is gone
    stale.write_bytes(b"")
    live = tmp_path / f"symoe-run-{os.getpid()}-other.sqlite"  # a living process's: kept
    live.write_bytes(b"")
    store = RunStore(str(tmp_path))
    assert not stale.exists() and live.exists() and Path(store.path).exists()
    store.put("q", "skills", 0, "text")
    assert asyncio.run(store.get("q", "skills")) == {"skills": {0: "text"}}
    store.close()
    assert not Path(store.path).exists()
