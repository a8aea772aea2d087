"""The agent runner against a STAND-IN hosted API (scripted status codes, hangs)."""

import pytest

from standins.openai_standin import ScriptedAPI
from symoe_agents.agents import Agent, AgentRunner
from symoe_agents.config import Concurrency, Sampling
from symoe_agents.prompting import load_template
from symoe_agents.servers import Endpoint

AGENT = Agent("expert", "hosted-x", load_template("skills"), Sampling(temperature=0.0, max_tokens=5))
PROMPT = load_template("skills").render(question="Q")


def runner(api: ScriptedAPI, **conc) -> AgentRunner:
    ep = Endpoint(base_url=api.base_url, served_model="gpt-x", api_key="sk-test-123", key_env="MY_KEY")
    return AgentRunner(ep, Concurrency(**{"retries": 3, "request_timeout_s": 5, **conc}), run_seed=0)


@pytest.mark.parametrize("transient", [429, 500, 503])
async def test_transient_errors_are_retried(transient):
    async with ScriptedAPI([transient, transient, 200]) as api, runner(api) as r:
        c = await r.call(AGENT, PROMPT, "q1")
    assert c.error is None and c.text == "The answer is (B)"
    assert api.calls == 3
    assert api.auth_headers[-1] == "Bearer sk-test-123"


@pytest.mark.parametrize("status, hint", [(400, "HTTP 400"), (401, "$MY_KEY"), (403, "$MY_KEY"), (404, "serves 'gpt-x'")])
async def test_client_errors_are_not_retried_and_say_what_to_check(status, hint):
    async with ScriptedAPI([status, 200]) as api, runner(api) as r:
        c = await r.call(AGENT, PROMPT, "q1")
    assert api.calls == 1
    assert c.text is None and "model 'hosted-x'" in c.error and hint in c.error
    assert "$MY_KEY" in c.error  # which key variable was used, whatever the status
    assert "sk-test-123" not in c.error  # the key itself never appears


async def test_retries_are_bounded():
    async with ScriptedAPI([503] * 10) as api, runner(api, retries=2) as r:
        c = await r.call(AGENT, PROMPT, "q1")
    assert api.calls == 3 and "HTTP 503" in c.error


async def test_a_hanging_endpoint_times_out():
    async with ScriptedAPI(["hang", 200]) as api, runner(api, request_timeout_s=1, retries=1) as r:
        c = await r.call(AGENT, PROMPT, "q1")
    assert c.error is None and api.calls == 2  # the hang timed out, the retry answered


async def test_sampling_and_seed_are_passed_on():
    import json

    seen = []

    class Capturing(ScriptedAPI):
        async def _handle(self, reader, writer):  # record the body, then answer as usual
            orig = reader.readexactly

            async def grab(n):
                data = await orig(n)
                seen.append(json.loads(data))
                return data

            reader.readexactly = grab
            await super()._handle(reader, writer)

    async with Capturing([200, 200]) as api, runner(api) as r:
        await r.call(AGENT, PROMPT, "q1", sample=2)
        await r.call(AGENT, PROMPT, "q1", sample=0)
    body = seen[0]
    # the seed of (run seed 0, role, stream "q1", sample 2), worked out here: sha256, first 4 bytes, 31 bits
    import hashlib

    want = int.from_bytes(hashlib.sha256(b"0\x1fexpert\x1fq1\x1f2").digest()[:4], "big") & 0x7FFFFFFF
    assert body["temperature"] == 0.0 and body["max_tokens"] == 5 and body["seed"] == want
    assert seen[1]["seed"] != want  # another sample, another seed
    assert body["messages"] == [{"role": "user", "content": PROMPT.text}]


async def test_a_request_waiting_out_its_backoff_gives_its_slot_to_the_next():
    """One slot, two requests: the first gets a 503 and backs off (at least 0.5 s); the
    second is sent in that time, not after the first's retry."""
    import asyncio

    async with ScriptedAPI([503, 200, 200], text=lambda req: req["messages"][0]["content"][-2:]) as api, runner(api, max_in_flight=1) as r:
        first = load_template("skills").render(question="Q1")
        second = load_template("skills").render(question="Q2")
        a, b = await asyncio.gather(r.call(AGENT, first, "q1"), r.call(AGENT, second, "q2"))
    assert a.error is None and b.error is None and api.calls == 3
    sent = [m["messages"][0]["content"] for m in api.requests]
    assert sent == [first.text, second.text, first.text]  # the retry went last
    assert r.peak_in_flight == 1


async def test_the_runner_keeps_at_most_its_limit_in_flight():
    import asyncio

    open_now = {"n": 0, "peak": 0}

    class Slow(ScriptedAPI):
        async def _handle(self, reader, writer):
            open_now["n"] += 1
            open_now["peak"] = max(open_now["peak"], open_now["n"])
            await asyncio.sleep(0.2)
            open_now["n"] -= 1
            await super()._handle(reader, writer)

    async with Slow([]) as api:
        ep = Endpoint(base_url=api.base_url, served_model="gpt-x", api_key="k")
        async with AgentRunner(ep, Concurrency(request_timeout_s=5), run_seed=0, max_in_flight=5) as r:
            done = await asyncio.gather(*(r.call(AGENT, PROMPT, f"q{i}") for i in range(12)))
    assert all(c.error is None for c in done) and api.calls == 12
    assert open_now["peak"] == 5 and r.peak_in_flight == 5


async def test_a_request_of_n_samples_holds_n_of_the_in_flight_limit():
    import asyncio

    open_now = {"n": 0, "peak": 0}

    class Slow(ScriptedAPI):  # counts the sequences open at the server: a request's n
        async def _handle(self, reader, writer):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
            body = await reader.readexactly(length)
            n = __import__("json").loads(body).get("n", 1)
            open_now["n"] += n
            open_now["peak"] = max(open_now["peak"], open_now["n"])
            await asyncio.sleep(0.2)
            open_now["n"] -= n
            replay = asyncio.StreamReader()
            replay.feed_data(head + body)
            replay.feed_eof()
            await super()._handle(replay, writer)

    async with Slow([]) as api:
        ep = Endpoint(base_url=api.base_url, served_model="gpt-x", api_key="k")
        async with AgentRunner(ep, Concurrency(request_timeout_s=5), run_seed=0, max_in_flight=5) as r:
            wide = [r.call_many(AGENT, PROMPT, f"w{i}", 0, 3) for i in range(3)]
            narrow = [r.call(AGENT, PROMPT, f"n{i}") for i in range(4)]
            await asyncio.gather(*wide, *narrow)
    assert api.calls == 7
    assert 3 < open_now["peak"] <= 5 and 3 < r.peak_in_flight <= 5  # never 3 + 3 open at once


async def test_a_server_that_answers_fewer_samples_than_asked_fails_the_missing_ones_clearly():
    """The stand-in, like an OpenAI-compatible server that ignores ``n``, answers one choice."""
    async with ScriptedAPI([200]) as api, runner(api) as r:
        out = await r.call_many(AGENT, PROMPT, "q1", 0, 3)
    assert api.calls == 1 and (api.requests[0]["n"], api.requests[0]["logprobs"], api.requests[0]["top_logprobs"]) == (3, True, 1)
    assert out[0].error is None and out[0].text == "The answer is (B)" and out[0].prompt_tokens == 7
    for c in out[1:]:
        assert c.text is None and c.retryable is False
        assert "answered 1 of 3 samples asked in one request: set samples_per_request = 1" in c.error
