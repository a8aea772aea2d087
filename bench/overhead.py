"""Controller overhead: the same requests sent directly with AsyncOpenAI and through symoe.

    python bench/overhead.py [--requests 24] [--rounds 3] [--instant-requests 2000] [--concurrency 64]

1. A real llama.cpp server (the embedded SmolLM2): --requests expert prompts at the
   model's concurrency (llama-server's 8 slots), greedy, 64 tokens each. Once with ``AsyncOpenAI``
   and a semaphore, once as a symoe expert group (``GroupRunner.run``: the agent
   runner's semaphore, throttle, timeout, tenacity and the record keeping). The two
   alternate for --rounds rounds on the same server; the table gives the median tokens
   per second of each and their ratio (goal: symoe >= 97% of direct).
2. A STAND-IN server that answers at once (bench/instant_server.py, its own process, so
   its CPU time is not counted here): --instant-requests requests at --concurrency in
   flight, directly, through symoe, and through symoe with the answer cache (every answer
   written to SQLite; then a second pass answered from it). Requests per second, and this
   process's CPU time per request (goal: symoe's own share under 1 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai

from symoe_agents.agents import Agent, sampling_params
from symoe_agents.cache import AnswerCache
from symoe_agents.config import Sampling, load_config, parse_config
from symoe_agents.controller import Controller
from symoe_agents.events import EventLog
from symoe_agents.formats import AnswerFormat
from symoe_agents.preparation import answer_instruction
from symoe_agents.prompting import load_template
from symoe_agents.schedule import Group, Requests
from symoe_agents.servers import ServerManager

HERE = Path(__file__).resolve().parent


def prompts(n: int, template) -> list:
    instruction = answer_instruction(AnswerFormat.MULTIPLE_CHOICE, ["A", "B", "C", "D"])
    return [
        template.render(question=f"What is {i} + {i + 7}? The options are: (A) {2 * i + 7} (B) {2 * i + 8} (C) {2 * i + 6} (D) {i}",
                        answer_instruction=instruction)
        for i in range(n)
    ]  # fmt: skip


async def direct(endpoint, agent: Agent, rendered, seed: int, concurrency: int, timeout: float) -> tuple[float, int, float]:
    """(wall s, completion tokens, CPU s) sending every request with AsyncOpenAI."""
    slots = asyncio.Semaphore(concurrency)
    cpu, began = time.process_time(), time.perf_counter()
    async with openai.AsyncOpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, max_retries=0, timeout=timeout) as client:

        async def one(i: int) -> int:
            async with slots:
                r = await client.chat.completions.create(
                    model=endpoint.served_model, messages=[{"role": "user", "content": rendered[i].text}],
                    **sampling_params(agent, seed, f"q{i}", 0),
                )  # type: ignore[call-overload]  # fmt: skip
                return r.usage.completion_tokens if r.usage else 0

        tokens = sum(await asyncio.gather(*(one(i) for i in range(len(rendered)))))
    return time.perf_counter() - began, tokens, time.process_time() - cpu


async def through_symoe(controller: Controller, model: str, agent: Agent, rendered) -> tuple[float, int, float, int]:
    """(wall s, completion tokens, CPU s, failures) running the requests as one expert group."""
    n = len(rendered)
    group = Group("expert", model, controller.manager.server_key(model), Requests([f"q{i}" for i in range(n)], [0] * n))
    done = {"tokens": 0, "failed": 0}

    def on_final(i, c) -> None:
        done["tokens"] += c.completion_tokens
        done["failed"] += c.error is not None

    cpu, began = time.process_time(), time.perf_counter()
    await controller.groups.run(group, agent, lambda i: rendered[i], on_final)
    return time.perf_counter() - began, done["tokens"], time.process_time() - cpu, done["failed"]


async def real_server(args) -> list[str]:
    cfg = load_config()
    agent = greedy_expert("smollm2")
    rendered = prompts(args.requests, agent.template)
    events = EventLog()
    d_rates, s_rates = [], []
    async with ServerManager(cfg, events) as manager:
        endpoint = await manager.acquire("smollm2")
        controller = Controller(cfg, manager, events)
        await direct(endpoint, agent, rendered[:4], cfg.seed, 4, 300)  # warm-up
        for r in range(args.rounds):
            wall, tok, _ = await direct(endpoint, agent, rendered, cfg.seed, cfg.in_flight("smollm2"), cfg.concurrency.request_timeout_s)
            d_rates.append(tok / wall)
            wall, tok, _, failed = await through_symoe(controller, "smollm2", agent, rendered)
            assert failed == 0
            s_rates.append(tok / wall)
            print(f"[overhead] llama.cpp round {r + 1}: direct {d_rates[-1]:.1f} tok/s, symoe {s_rates[-1]:.1f} tok/s", file=sys.stderr, flush=True)
    d, s = statistics.median(d_rates), statistics.median(s_rates)
    return [
        f"| llama.cpp SmolLM2, {args.requests} requests x {args.rounds} rounds, {cfg.in_flight('smollm2')} in flight | "
        f"{d:.1f} tok/s | {s:.1f} tok/s | {100 * s / d:.1f}% (goal >= 97%: {'met' if s / d >= 0.97 else 'NOT met'}) |",
        f"| per round (direct / symoe tok/s) | {' '.join(f'{x:.1f}' for x in d_rates)} | {' '.join(f'{x:.1f}' for x in s_rates)} | |",
    ]


def instant_config(concurrency: int):
    """A pool of one model: the instant stand-in server, started by symoe's command backend."""
    return parse_config(
        {
            "models": {"instant": {"backend": "command", "served_model_name": "instant",
                                   "command": [sys.executable, str(HERE / "instant_server.py"), "--port", "{port}", "--model", "{model}"]}},
            "roles": {"skill_inferencer": "instant", "experts": ["instant"], "aggregator": "instant"},
            "concurrency": {"max_in_flight": concurrency, "request_timeout_s": 60, "retries": 0},
        },
        "<bench instant>",
    )  # fmt: skip


def greedy_expert(model: str) -> Agent:
    """The expert agent both paths use: greedy, 64 tokens."""
    return Agent("expert", model, load_template("expert"), Sampling(temperature=0.0, max_tokens=64))


async def instant(args) -> list[str]:
    cfg = instant_config(args.concurrency)
    agent = greedy_expert("instant")
    rendered = prompts(args.instant_requests, agent.template)
    n = len(rendered)
    rows: dict[str, list[tuple[float, float]]] = {"direct": [], "symoe": [], "symoe + cache (writing)": [], "symoe + cache (all hits)": []}
    events = EventLog()
    with tempfile.TemporaryDirectory() as tmp:
        async with ServerManager(cfg, events) as manager:
            endpoint = await manager.acquire("instant")
            plain = Controller(cfg, manager, events)
            await direct(endpoint, agent, rendered[:200], 0, args.concurrency, 60)  # warm-up
            for r in range(args.rounds):
                wall, _, cpu = await direct(endpoint, agent, rendered, cfg.seed, args.concurrency, 60)
                rows["direct"].append((n / wall, 1000 * cpu / n))
                wall, _, cpu, failed = await through_symoe(plain, "instant", agent, rendered)
                assert failed == 0
                rows["symoe"].append((n / wall, 1000 * cpu / n))
                cache = AnswerCache(Path(tmp) / f"c{r}.sqlite")
                cached = Controller(cfg, manager, events, cache=cache)
                wall, _, cpu, _ = await through_symoe(cached, "instant", agent, rendered)
                rows["symoe + cache (writing)"].append((n / wall, 1000 * cpu / n))
                wall, _, cpu, _ = await through_symoe(cached, "instant", agent, rendered)
                assert cache.hits == n
                rows["symoe + cache (all hits)"].append((n / wall, 1000 * cpu / n))
                cache.close()
                print(f"[overhead] instant round {r + 1} done", file=sys.stderr, flush=True)
    base_cpu = statistics.median(c for _, c in rows["direct"])
    out = []
    for name, vals in rows.items():
        rps, cpu = statistics.median(v for v, _ in vals), statistics.median(c for _, c in vals)
        own = "" if name == "direct" else f"{cpu - base_cpu:+.3f}"
        out.append(f"| {name} | {rps:.0f} | {cpu:.3f} | {own} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--instant-requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--skip-real", action="store_true", help="only the stand-in part")
    args = ap.parse_args()
    if not args.skip_real:
        real = asyncio.run(real_server(args))
        print("| real server | direct AsyncOpenAI | through symoe | symoe / direct |")
        print("| --- | ---: | ---: | ---: |")
        print("\n".join(real))
        print()
    fast = asyncio.run(instant(args))
    print(f"instant stand-in server, {args.instant_requests} requests, {args.concurrency} in flight, median of {args.rounds} rounds:")
    print("| path | requests/s | CPU ms/request (this process) | symoe's own CPU ms/request (minus direct) |")
    print("| --- | ---: | ---: | ---: |")
    print("\n".join(fast))


if __name__ == "__main__":
    main()
