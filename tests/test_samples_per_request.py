"""Samples of one prompt in one request (the OpenAI ``n``) on a real llama-server: each
sample's text and token count, the first sample equal to a lone request with its seed,
a refusal, and the cache keys that tell such samples from lone ones."""

import openai
import pytest

from conftest import llama_server_argv, pids_alive
from symoe_agents.agents import AgentRunner, build_agent
from symoe_agents.config import Concurrency, load_config
from symoe_agents.events import EventLog
from symoe_agents.prompting import PromptTemplate
from symoe_agents.servers import Endpoint, ServerManager, ServerProcess, free_port
from symoe_agents.servers.embedded import embedded_model_path
from symoe_agents.servers.probe import http_get


@pytest.fixture
async def smol(tmp_path):
    port = free_port()
    proc = ServerProcess(
        "smol", llama_server_argv(embedded_model_path("smollm2-135m-instruct"), port, "smol", "-np", "4", "-c", "8192"),
        port, tmp_path / "log", env={"LLAMA_API_KEY": "k-n"},
    )  # fmt: skip
    proc.spawn()

    async def ready(p):
        return (await http_get("127.0.0.1", p, "/health", {}))[0] == 200

    try:
        await proc.wait_ready(ready, 60)
        yield Endpoint(f"http://127.0.0.1:{port}/v1", "smol", "k-n")
    finally:
        await proc.stop(5)
    assert pids_alive([proc.pid]) == []


def RenderedPrompt(text: str):
    return PromptTemplate("t", "{q}").render(q=text)


def _agent(max_tokens: int):
    import dataclasses

    agent = build_agent(load_config(), "skill_inferencer", "smollm2")
    return dataclasses.replace(agent, sampling=agent.sampling.model_copy(update={"max_tokens": max_tokens, "temperature": 0.9}))


async def test_n_samples_come_back_each_with_its_own_text_and_tokens(smol):
    agent = _agent(24)
    prompt = RenderedPrompt("Name three skills a chemist needs, as a comma-separated list.")
    async with AgentRunner(smol, Concurrency(request_timeout_s=60, retries=0), run_seed=0, max_in_flight=4) as runner:
        many = await runner.call_many(agent, prompt, "stream-1", 0, 4)
        alone = await runner.call(agent, prompt, "stream-1", 0)
        assert runner.calls_sent == 2
    assert len(many) == 4 and all(c.error is None and c.text for c in many)
    assert len({c.text for c in many}) > 1  # four samples, not one text four times
    # the first sample is what a lone request with the same seed gets
    assert (many[0].text, many[0].completion_tokens) == (alone.text, alone.completion_tokens)
    # each sample's own token count (from its logprobs): a cut-off one used exactly max_tokens,
    # and the prompt, processed once, counts once
    for c in many:
        assert 0 < c.completion_tokens <= 24
        assert (c.finish_reason == "length") == (c.completion_tokens == 24)
    assert many[0].prompt_tokens == alone.prompt_tokens > 0 and all(c.prompt_tokens == 0 for c in many[1:])


async def test_more_samples_than_the_servers_slots_is_a_clear_failure_for_each(smol):
    async with AgentRunner(smol, Concurrency(request_timeout_s=60, retries=0), run_seed=0, max_in_flight=4) as runner:
        out = await runner.call_many(_agent(8), RenderedPrompt("Say hi."), "s", 0, 6)  # 4 slots
    assert len(out) == 6 and len({id(c) for c in out}) == 6
    assert all(c.error and "HTTP 400" in c.error and c.retryable is False for c in out)
    with pytest.raises(openai.BadRequestError):  # what the server itself says, for the record
        client = openai.AsyncOpenAI(base_url=smol.base_url, api_key=smol.api_key, max_retries=0)
        try:
            await client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "hi"}], n=6, max_tokens=4)
        finally:
            await client.close()


def test_a_sample_asked_with_others_has_a_key_of_its_own():
    from symoe_agents.controller import Controller

    cfg = load_config()
    ctrl = Controller(cfg, ServerManager(cfg, EventLog()), EventLog())
    agent = build_agent(cfg, "skill_inferencer", "smollm2")
    prompt = RenderedPrompt("q")
    lone = [ctrl.call_key(agent, "smollm2", "s", i, prompt) for i in range(5)]
    batched = [ctrl.call_key(agent, "smollm2", "s", i, prompt, 0, 5) for i in range(5)]
    assert len(set(lone + batched)) == 10
    assert ctrl.call_key(agent, "smollm2", "s", 3, prompt, 3, 1) == lone[3]  # a batch of one is a lone request
    # a request of 4 samples is another request than one of 5, and another first sample another seed
    assert ctrl.call_key(agent, "smollm2", "s", 0, prompt, 0, 4) != batched[0]
    assert ctrl.call_key(agent, "smollm2", "s", 1, prompt, 1, 5) != batched[1]


async def test_a_batch_with_one_sample_lost_is_sent_again_whole_and_the_cached_ones_stay(tmp_path):
    """Resume after a crash that kept 4 of a question's 5 skill samples: the request of 5 goes
    again (its cache keys name a request of 5), the 4 kept answers are not replaced, and the
    lost one is filled."""
    import sqlite3

    from symoe_agents import SymbolicMoE
    from symoe_agents.config import parse_config

    data = load_config().model_dump(mode="json")
    data["roles"] = {"skill_inferencer": "smollm2", "experts": ["smollm2"], "aggregator": "smollm2"}
    data["k"] = 1
    data["sampling"]["skill_inferencer"].update(max_tokens=12, samples=5)
    data["sampling"]["expert"]["max_tokens"] = data["sampling"]["aggregator"]["max_tokens"] = 8
    cfg = parse_config(data, "test")
    cache = tmp_path / "c.sqlite"
    q = [{"id": "q", "question": "Which skills does balancing a chemical equation need?"}]
    async with SymbolicMoE(cfg, cache=cache) as moe:
        (first,) = await moe.solve_batch(q)
    with sqlite3.connect(cache) as db:
        roles = {r for (r,) in db.execute("SELECT DISTINCT role FROM answers")}
        (skills_role,) = [r for r in roles if r.startswith("skill")]
        keys = {k for (k,) in db.execute("SELECT key FROM answers WHERE role = ?", (skills_role,))}
        assert len(keys) == 5
        db.execute("DELETE FROM answers WHERE role = ? AND sample = 2", (skills_role,))
    events = EventLog()
    async with SymbolicMoE(cfg, cache=cache, events=events) as moe:
        (second,) = await moe.solve_batch(q)
    end = next(e for e in events.events if e.kind == "group_end" and e.group.startswith("skills:"))
    assert (end.detail["cached"], end.detail["calls"]) == (4, 1)
    assert [second.skill_samples[i] for i in (0, 1, 3, 4)] == [first.skill_samples[i] for i in (0, 1, 3, 4)]
    assert len(second.skill_samples) == 5 and second.skill_samples[2]
    with sqlite3.connect(cache) as db:  # the lost sample came back under its key as one of 5, not as a lone request's
        assert {k for (k,) in db.execute("SELECT key FROM answers WHERE role = ?", (skills_role,))} == keys
