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
   written to SQLite; then a second pass answered from it), and through symoe traced
   (OpenTelemetry on, the SDK's in-memory exporter: a question span and a call span per
   request, the worst case: each request its own question). Requests per second, and this
   process's CPU time per request (goal: symoe's own share under 1 ms).
3. Tracing on against off, the whole method (``SymbolicMoE.solve_batch``: 5 skill samples,
   k = 3 experts, the aggregator; a question's 9 calls share its trace) on the same instant
   stand-in: --pipeline-questions questions, --rounds rounds alternating off and on (the
   in-memory exporter). Goal for parts 2 and 3: tracing costs under 5%.
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
    rows: dict[str, list[tuple[float, float]]] = {"direct": [], "symoe": [], "symoe + tracing (in-memory exporter)": [],
                                                  "symoe + cache (writing)": [], "symoe + cache (all hits)": []}  # fmt: skip
    from symoe_agents.telemetry import Tracing

    provider, exporter = in_memory_provider()
    spans = 0
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
                traced = Controller(cfg, manager, events, tracing=Tracing(provider))
                run = traced.groups.trace = Tracing(provider).run("bench", n)
                wall, _, cpu, failed = await through_symoe(traced, "instant", agent, rendered)
                run.close()  # the questions' spans end here (no record is made in this bench)
                assert failed == 0
                spans = len(exporter.get_finished_spans())
                exporter.clear()
                rows["symoe + tracing (in-memory exporter)"].append((n / wall, 1000 * cpu / n))
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
    plain_rps = statistics.median(v for v, _ in rows["symoe"])
    traced_rps = statistics.median(v for v, _ in rows["symoe + tracing (in-memory exporter)"])
    cost = 100 * (1 - traced_rps / plain_rps)
    pairs = " ".join(f"{100 * (1 - t / p):+.1f}%" for (p, _), (t, _) in zip(rows["symoe"], rows["symoe + tracing (in-memory exporter)"]))
    out.append("")
    out.append(f"tracing on vs off: {cost:+.1f}% fewer requests/s (goal under 5%: {'met' if cost < 5 else 'NOT met'}); "
               f"per round {pairs}; {spans} spans a pass")  # fmt: skip
    return out


def in_memory_provider():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def pipeline(args) -> list[str]:
    """Tracing off and on over whole batches: (wall s, CPU s) per round, alternating."""
    from symoe_agents import SymbolicMoE

    cfg = instant_config(args.concurrency)
    questions = [{"id": f"q{i}", "question": f"What is {i} + {i + 7}? (A) {2 * i + 7} (B) {2 * i + 8}"} for i in range(args.pipeline_questions)]
    provider, exporter = in_memory_provider()
    rounds: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    spans = 0
    for r in range(args.rounds + 1):  # the first pair warms up
        for mode in ("off", "on"):
            cpu, began = time.process_time(), time.perf_counter()
            async with SymbolicMoE(cfg, check=False, tracer_provider=provider if mode == "on" else None) as moe:
                results = await moe.solve_batch(questions)
            wall, cpu = time.perf_counter() - began, time.process_time() - cpu
            assert len(results) == len(questions) and not any(x.errors for x in results)
            if mode == "on":
                spans = len(exporter.get_finished_spans())
                exporter.clear()
            if r:
                rounds[mode].append((wall, cpu))
        print(f"[overhead] pipeline round {r} done", file=sys.stderr, flush=True)
    n = len(questions)
    out = []
    for mode, vals in rounds.items():
        wall, cpu = statistics.median(w for w, _ in vals), statistics.median(c for _, c in vals)
        out.append(f"| tracing {mode} | {n / wall:.1f} | {1000 * cpu / n:.2f} |")
    cpu_cost = 100 * (statistics.median(c for _, c in rounds["on"]) / statistics.median(c for _, c in rounds["off"]) - 1)
    wall_cost = 100 * (statistics.median(w for w, _ in rounds["on"]) / statistics.median(w for w, _ in rounds["off"]) - 1)
    out.append("")
    out.append(f"tracing on vs off, whole method: wall {wall_cost:+.1f}%, CPU {cpu_cost:+.1f}% "
               f"(goal under 5%: {'met' if max(wall_cost, cpu_cost) < 5 else 'NOT met'}); {spans} spans a batch of {n}")  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--instant-requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--pipeline-questions", type=int, default=300)
    ap.add_argument("--skip-real", action="store_true", help="only the stand-in parts")
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
    print()
    whole = asyncio.run(pipeline(args))
    print(f"whole method on the instant stand-in, {args.pipeline_questions} questions, median of {args.rounds} rounds:")
    print("| tracing | questions/s | CPU ms/question (this process) |")
    print("| --- | ---: | ---: |")
    print("\n".join(whole))


if __name__ == "__main__":
    main()
