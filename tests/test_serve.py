"""``symoe serve`` end to end: the real command, the real embedded pool (llama.cpp servers),
and the unmodified ``openai`` client (``AsyncOpenAI``) over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time

import httpx2 as httpx
import openai
import psutil
import pytest

from symoe_agents.config import load_config
from conftest import KEPT, read_jsonl, small_pool_toml, symoe_cmd, wait_gone

pytestmark = pytest.mark.servers

KEY = "sk-test-serve-0123456789abcdef"


class Serve:
    """One ``symoe serve`` process on a free port; its stderr is collected by a thread."""

    def __init__(self, tmp_path, *args: str, key: str | None = None, serve_toml: str = ""):
        self.config = small_pool_toml(tmp_path, samples=2, max_tokens=48, extra=f"\n[serve]\n{serve_toml}\n")
        self.events = tmp_path / "events.jsonl"
        env = dict(os.environ)
        extra = []
        if key is not None:
            env["SYMOE_TEST_SERVE_KEY"] = key
            extra = ["--api-key-env", "SYMOE_TEST_SERVE_KEY"]
        self.proc = subprocess.Popen(
            [*symoe_cmd(), "serve", "--port", "0", "--config", str(self.config), "--events", str(self.events), *extra, *args],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
        )  # fmt: skip
        KEPT.add(self.proc.pid)
        self.lines: list[str] = []
        self.port: int | None = None
        ready = threading.Event()

        def drain() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line)
                if "serving the ensemble on http://127.0.0.1:" in line:
                    self.port = int(line.split("127.0.0.1:")[1].split("/")[0])
                    ready.set()
            ready.set()

        self.reader = threading.Thread(target=drain, daemon=True)
        self.reader.start()
        ready.wait(120)
        assert self.port is not None, "".join(self.lines)[-3000:]
        self.base = f"http://127.0.0.1:{self.port}"

    def client(self, key: str | None = KEY) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base + "/v1", api_key=key or "none", max_retries=0, timeout=300)

    def tree(self) -> list[int]:
        try:
            return [self.proc.pid, *(c.pid for c in psutil.Process(self.proc.pid).children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> int:
        pids = self.tree()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(90)
        self.close()
        assert wait_gone(pids, 15) == [], "processes left after symoe serve stopped"
        return code

    def close(self) -> None:
        KEPT.discard(self.proc.pid)
        self.reader.join(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def events_since(self, t0: float) -> list[dict]:
        return [e for e in read_jsonl(self.events) if e["ts"] >= t0]

    async def group_ends(self, t0: float) -> list[dict]:
        """The group ends logged since ``t0``, once the window's aggregation group has ended:
        an answer is sent as its record is made, before its group's end is logged."""
        deadline = time.monotonic() + 30
        while not any(e["kind"] == "group_end" and e["group"].startswith("aggregate:") for e in self.events_since(t0)):
            assert time.monotonic() < deadline, "the aggregation group never ended"
            await asyncio.sleep(0.1)
        return [e for e in self.events_since(t0) if e["kind"] == "group_end"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = Serve(tmp_path_factory.mktemp("serve"), "--cache", str(tmp_path_factory.mktemp("cache") / "serve.cache.sqlite"),
              key=KEY, serve_toml="window_s = 1.0")  # fmt: skip
    try:
        yield s
        environs = []
        for pid in s.tree()[1:]:  # the model servers (and their watchdogs) it started
            with open(f"/proc/{pid}/environ", "rb") as f:
                environs.append(f.read())
    finally:
        code = s.stop()
    assert code == 0, "".join(s.lines)[-3000:]
    assert environs, "no model server was running"
    fragments = {KEY[i : i + 8] for i in range(len(KEY) - 7)}
    for where, text in [("stderr", "".join(s.lines)), ("events", s.events.read_text()), *(("environ", e.decode("latin-1")) for e in environs)]:
        assert not any(f in text for f in fragments), f"a part of the key is in the {where}"


def stage_sum(symoe: dict) -> dict[str, int]:
    stages = symoe["usage"].values()
    prompt = sum(s["prompt_tokens"] for s in stages)
    completion = sum(s["completion_tokens"] for s in stages)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def test_models_lists_the_methods_and_the_pool(served):
    async with served.client() as c:
        models = await c.models.list()
    ids = [m.id for m in models.data]
    assert ids == ["symoe", "moa", "self-moa", "majority", "top-k", "single", "smollm2", "smollm2-focused", "gemma3"]


async def test_chat_answer_with_usage_summed_over_the_stages(served):
    async with served.client() as c:
        r = await c.chat.completions.create(model="symoe", messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is 6 * 7?"},
        ])  # fmt: skip
    symoe = r.model_extra["symoe"]
    assert r.object == "chat.completion" and r.model == "symoe"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert symoe["usage"]["skills"]["calls"] == 2 and symoe["usage"]["experts"]["calls"] == 3 and symoe["usage"]["aggregator"]["calls"] == 1
    assert all(symoe["usage"][s]["completion_tokens"] > 0 for s in ("skills", "experts", "aggregator"))
    assert r.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == stage_sum(symoe)
    for field in ("prompt_tokens", "completion_tokens"):  # the stage's count is its calls' own
        assert symoe["usage"]["experts"][field] == sum(e[field] for e in symoe["experts"])
    assert len(symoe["experts"]) == 3 and {e["model"] for e in symoe["experts"]} <= {"smollm2", "smollm2-focused", "gemma3"}
    chosen = json.loads((load_config().profiles / "_aggregator.json").read_text())["aggregator"]
    assert symoe["aggregator"] == chosen and symoe["method"] == "symoe"
    assert symoe["final_source"] in ("aggregator", None)
    assert symoe["cost"]["calls"] == 6 and symoe["cost"]["prompt_tokens"] == r.usage.prompt_tokens


def scrape(served) -> dict[tuple[str, tuple], float]:
    """/metrics, parsed by prometheus-client's own parser: (sample name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(served.base + "/metrics", timeout=30)  # like /health, without the key
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in text_string_to_metric_families(r.text) for s in fam.samples}


async def test_metrics_count_what_a_request_did(served):
    before = scrape(served)
    async with served.client() as c:
        r = await c.chat.completions.create(model="symoe", messages=[{"role": "user", "content": f"What is {time.time_ns()} + 1? Say only the number."}])
    after = scrape(served)

    def grew(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    def grew_all(name: str, **labels) -> float:  # summed over the labels not given
        def total(samples):
            return sum(v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))
        return total(after) - total(before)

    symoe = r.model_extra["symoe"]
    usage = symoe["usage"]
    assert grew("symoe_http_requests_total", model="symoe", code="200") == 1
    assert grew("symoe_stage_latency_seconds_count", stage="request") == 1
    for stage in ("skills", "experts", "aggregator"):  # a new question: every call made, none cached
        assert grew_all("symoe_calls_total", stage=stage, outcome="ok") == usage[stage]["calls"]
        assert grew("symoe_stage_latency_seconds_count", stage=stage) == usage[stage]["calls"]
    assert grew_all("symoe_calls_total", outcome="cached") == 0 and grew_all("symoe_errors_total") == 0
    assert grew_all("symoe_tokens_total", direction="input") == r.usage.prompt_tokens
    assert grew_all("symoe_tokens_total", direction="output") == r.usage.completion_tokens
    for e in symoe["experts"]:  # every expert's tokens are under its model
        assert grew_all("symoe_tokens_total", model=e["model"], direction="output") >= e["completion_tokens"]
    assert grew_all("symoe_questions_total") == 1 and grew("symoe_questions_total", source=symoe["final_source"] or "none") == 1
    health = httpx.get(served.base + "/health", timeout=30).json()
    loads = sum(v for (n, _), v in after.items() if n == "symoe_model_loads_total")
    assert loads == health["model_loads"] and after[("symoe_queue_depth", ())] == 0
    assert sum(v for (n, _), v in after.items() if n == "symoe_model_load_seconds_count") == loads


async def test_stream_with_openai_client(served):
    pieces, stages, closing, usage_chunk = [], [], None, None
    async with served.client() as c:
        chunks = [ch async for ch in await c.chat.completions.create(
            model="symoe", messages=[{"role": "user", "content": "Name a colour of the sky."}], stream=True, stream_options={"include_usage": True}
        )]  # fmt: skip
    for chunk in chunks:
        extra = chunk.model_extra or {}
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if "symoe" in extra and "stage" in extra["symoe"]:
            assert not pieces, "a stage arrived after the answer began"
            stages.append(extra["symoe"]["stage"])
        if chunk.choices and chunk.choices[0].finish_reason:
            closing = extra["symoe"]
        if chunk.usage is not None:
            usage_chunk = chunk.usage
    assert stages[0] == "queued" and any(s.startswith("skills") for s in stages) and any(s.startswith("aggregator") for s in stages)
    assert len(pieces) > 1, "the aggregator's answer came in one piece, not as it was written"
    assert closing is not None and usage_chunk is not None
    assert closing["usage"]["aggregator"]["prompt_tokens"] > 0 and closing["usage"]["aggregator"]["completion_tokens"] > 0
    assert usage_chunk.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == stage_sum(closing)


async def test_stream_wire_format_ends_with_done(served):
    events: list[str] = []
    async with httpx.AsyncClient(timeout=300) as http:
        body = {"model": "majority", "stream": True, "messages": [{"role": "user", "content": "What is 3 + 4?"}]}
        async with http.stream("POST", served.base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            raw = (await r.aread()).decode()
    assert raw.endswith("data: [DONE]\n\n")
    for block in raw.split("\n\n")[:-1]:
        assert block.startswith("data: ") or block.startswith(":"), block
        events.append(block)
    data = [json.loads(b[6:]) for b in events if b.startswith("data: ") and b != "data: [DONE]"]
    assert data[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(d["object"] == "chat.completion.chunk" and d["id"] == data[0]["id"] for d in data)
    last = data[-1]
    assert last["choices"][0]["finish_reason"] == "stop" and last["symoe"]["method"] == "majority" and last["symoe"]["aggregator"] is None
    text = "".join(d["choices"][0]["delta"].get("content") or "" for d in data)
    answers = [e for e in last["symoe"]["experts"] if e["extracted"] == last["symoe"]["final_answer"]]
    if last["symoe"]["final_answer"] is not None:  # a method without an aggregator: the winning expert's response
        assert answers and text


async def test_text_completions(served):
    async with served.client() as c:
        r = await c.completions.create(model="symoe", prompt="What is 10 - 4?")
    assert r.object == "text_completion" and r.choices[0].text
    assert r.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == stage_sum(r.model_extra["symoe"])


async def test_pool_model_by_its_own_name(served):
    async with served.client() as c:
        r = await c.chat.completions.create(model="gemma3", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8)
        stream = await c.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, stream=True)
        chunks = [ch async for ch in stream]
    assert r.model == "gemma3" and r.usage.completion_tokens > 0 and "symoe" not in (r.model_extra or {})
    assert chunks and all(ch.model == "smollm2" for ch in chunks)


async def test_refusals_say_what_to_fix(served):
    async with served.client(key="sk-wrong-key-0000000000") as wrong:
        with pytest.raises(openai.AuthenticationError):
            await wrong.models.list()
    async with served.client() as c:
        with pytest.raises(openai.BadRequestError, match="must be the user's"):
            await c.chat.completions.create(model="symoe", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
        with pytest.raises(openai.NotFoundError, match="no model 'gpt-9'"):
            await c.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.BadRequestError, match="'n' must be 1"):
            await c.chat.completions.create(model="symoe", n=2, messages=[{"role": "user", "content": "hi"}])
    async with httpx.AsyncClient() as http:
        health = await http.get(served.base + "/health")
        auth = {"Authorization": f"Bearer {KEY}"}
        huge = await http.post(served.base + "/v1/chat/completions", content=b"x" * (9 * 2**20), headers=auth)
        broken = await http.post(served.base + "/v1/chat/completions", content=b"{\"model\": ", headers=auth)
        no_key = await http.post(served.base + "/v1/chat/completions", json={"model": "symoe"})
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert huge.status_code == 413 and "over 8 MiB" in huge.json()["error"]["message"]
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]["message"]
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"


async def test_answered_request_comes_from_the_cache(served):
    ask = {"model": "symoe", "messages": [{"role": "user", "content": "What is 2 + 9?"}]}
    async with served.client() as c, httpx.AsyncClient() as http:
        first = await c.chat.completions.create(**ask)
        before = (await http.get(served.base + "/health")).json()["from_cache"]
        counted = scrape(served)
        t0 = time.time()
        again = await c.chat.completions.create(**ask)
        after = (await http.get(served.base + "/health")).json()["from_cache"]
    now = scrape(served)

    def grew(name: str, **labels) -> float:
        def total(samples):
            return sum(v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))
        return total(now) - total(counted)

    # the probe that answered it counts its 6 hits once; nothing was asked of a model
    assert grew("symoe_calls_total", outcome="cached") == 6 and grew("symoe_cache_hits_total") == 6
    assert grew("symoe_calls_total", outcome="ok") == 0 and grew("symoe_questions_total") == 1
    cost = again.model_extra["symoe"]["cost"]
    assert cost["calls"] == 6 and cost["cached_calls"] == 6
    assert again.choices[0].message.content == first.choices[0].message.content
    assert after == before + 1  # answered from the cache before a window took it (window_s is 1 s here)
    assert [e for e in served.events_since(t0) if e["kind"] in ("group_start", "server_start")] == []  # no window, no model


async def test_a_client_that_leaves_cancels_only_its_own_work(served):
    t0 = time.time()

    async def leaver() -> None:
        async with httpx.AsyncClient(timeout=300) as http:
            body = {"model": "symoe", "stream": True, "messages": [{"role": "user", "content": "Which planet is largest?"}]}
            async with http.stream("POST", served.base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and '"stage": "skills' in line:
                        return  # leaves as soon as its window starts

    async with served.client() as c:
        stayer = asyncio.ensure_future(c.chat.completions.create(model="symoe", messages=[{"role": "user", "content": "What is 5 + 5?"}]))
        await leaver()
        r = await stayer
    assert r.choices[0].message.content and r.model_extra["symoe"]["usage"]["aggregator"]["calls"] == 1
    ends = await served.group_ends(t0)
    skills = [e for e in ends if e["group"].startswith("skills")]
    assert [e["requests"] for e in skills] == [4], "both requests were not in one window"
    experts = [e for e in ends if e["group"].startswith("expert")]
    aggregation = [e for e in ends if e["group"].startswith("aggregate:")]
    seen = [(e["group"], e["requests"], e["detail"]) for e in ends]
    assert sum(e["detail"]["skipped"] for e in experts) == 3, seen  # the leaver's three expert calls were never sent
    assert [(e["requests"], e["detail"]["skipped"]) for e in aggregation] == [(2, 1)], seen


async def test_a_waiting_client_that_leaves_is_dropped_from_the_queue(served):
    t0 = time.time()
    async with httpx.AsyncClient(timeout=0.3) as http:  # leaves while its window still gathers (window_s is 1 s)
        with pytest.raises(httpx.TimeoutException):
            await http.post(served.base + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                            json={"model": "symoe", "messages": [{"role": "user", "content": "Is the sea salty?"}]})  # fmt: skip
    async with served.client() as c:
        r = await c.chat.completions.create(model="symoe", messages=[{"role": "user", "content": "What is 3 + 3?"}])
    assert r.choices[0].message.content
    ends = await served.group_ends(t0)
    assert [e["requests"] for e in ends if e["group"].startswith("skills")] == [2]  # the leaver's question was never asked


def test_queue_full_idle_release_and_sigterm(tmp_path):
    s = Serve(tmp_path, "--max-queue", "1", "--idle-release-s", "2", serve_toml="window_s = 2.0\nshutdown_grace_s = 240")
    try:

        async def scenario() -> None:
            async with s.client(key=None) as c, httpx.AsyncClient() as http:
                first = await c.chat.completions.create(model="single", messages=[{"role": "user", "content": "What is 1 + 1?"}])
                assert first.choices[0].message.content is not None
                deadline = time.monotonic() + 30
                while (await http.get(s.base + "/health")).json()["servers_up"] and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                assert (await http.get(s.base + "/health")).json()["servers_up"] == [], "idle servers were not released"

                ask = {"model": "symoe", "messages": [{"role": "user", "content": "What is 4 + 4?"}]}
                a = asyncio.ensure_future(c.chat.completions.create(**ask))
                await asyncio.sleep(0.3)  # a waits in the queue (its window gathers for window_s)
                with pytest.raises(openai.RateLimitError) as full:
                    await c.chat.completions.create(**ask)
                assert int(full.value.response.headers["Retry-After"]) >= 1
                deadline = time.monotonic() + 60
                while (await http.get(s.base + "/health")).json()["windows"] < 2:
                    assert time.monotonic() < deadline, "a's window never started"
                    await asyncio.sleep(0.1)  # a's window runs
                b = asyncio.ensure_future(c.chat.completions.create(model="symoe", messages=[{"role": "user", "content": "What is 8 + 1?"}]))
                await asyncio.sleep(0.3)
                pids = s.tree()
                assert len(pids) > 1, "no model server was running"
                s.proc.send_signal(signal.SIGTERM)
                answered = await a
                assert answered.choices[0].message.content is not None  # in flight: finished
                with pytest.raises(openai.InternalServerError, match="still queued"):
                    await b  # queued: failed at once with 503
                assert s.proc.wait(90) == 0
                assert wait_gone(pids, 15) == []

        asyncio.run(scenario())
    finally:
        if s.proc.poll() is None:
            s.stop()
        s.close()
    stops = [e for e in read_jsonl(s.events) if e["kind"] == "server_stop"]
    assert any("idle for 2 s" in e["detail"].get("reason", "") for e in stops)


@pytest.mark.parametrize(
    "args, env, says",
    [
        (["--api-key-env", "SYMOE_TEST_NO_SUCH_KEY"], {}, "set SYMOE_TEST_NO_SUCH_KEY to the key clients must send"),
        (["--api-key-env", "SYMOE_TEST_SHORT_KEY"], {"SYMOE_TEST_SHORT_KEY": "abc"}, "8 characters or more"),
        (["--host", "0.0.0.0"], {}, "without a key; give --api-key-env VAR"),
        (["--config", "/nonexistent/pool.toml"], {}, "pool.toml"),
    ],
)
def test_bad_options_exit_2_before_anything_starts(args, env, says):
    out = subprocess.run([*symoe_cmd(), "serve", *args], capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert out.returncode == 2, out.stderr
    assert says in out.stderr and "Traceback" not in out.stderr


def test_a_port_in_use_exits_2():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = subprocess.run([*symoe_cmd(), "serve", "--port", str(port)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in out.stderr and "Traceback" not in out.stderr


def test_a_run_budget_is_refused_by_serve(tmp_path):
    from symoe_agents.config import embedded_config_text

    config = tmp_path / "budget.toml"
    config.write_text(embedded_config_text() + "\n[cost]\ndevice_hour = 1.0\nmax_usd = 5.0\n")
    out = subprocess.run([*symoe_cmd(), "serve", "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "cost.max_usd is a budget for one run" in out.stderr and "Traceback" not in out.stderr
