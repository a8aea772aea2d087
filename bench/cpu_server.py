"""The embedded pool's server against llama-cpp-python's, on this machine's cores.

    python bench/cpu_server.py [--rounds 3] [--models smollm2,gemma3] [--in-flight 1,4,8]

For each embedded model, symoe starts both servers through its own ``llamacpp`` backend (the
launch symoe runs: llama-server with its slots and the threads rule, and llama-cpp-python's
server as symoe ran it before), both up at once. Each round sends, at each in-flight count
c, c requests "Write a long, detailed essay about <topic>" (200 tokens, temperature 0.7, a
seed per round and request) to one server, then the other, the order reversed every round.
Throughput is completion tokens over the batch's wall time. The table gives the median over
rounds and, in parentheses, the median per-round ratio to llama-cpp-python (goal: at least
2.2x at 8 in flight, at least 0.95x at 1), and each server's resident memory.

Needs llama-cpp-python for the baseline: pip install -e ".[llama-cpp-python]".
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import time

import openai
import psutil

from symoe_agents.config import parse_config
from symoe_agents.events import EventLog
from symoe_agents.servers import ServerManager

EMBEDDED = {"smollm2": ("smollm2-135m-instruct", None), "gemma3": ("gemma3-270m", "gemma")}
VARIANTS = ("llama-server", "llama-cpp-python")
TOPICS = ["the history of bridges", "volcanoes", "the printing press", "coral reefs", "jazz", "glaciers",
          "the Silk Road", "honeybees", "lighthouses", "the water cycle", "chess", "tides"]  # fmt: skip


def bench_config(model: str):
    embedded, chat_format = EMBEDDED[model]
    models = {}
    for v in VARIANTS:
        m = {"backend": "llamacpp", "embedded": embedded, "server": v}
        if chat_format:
            m["chat_format"] = chat_format
        models[v] = m
    roles = {"skill_inferencer": VARIANTS[0], "experts": list(VARIANTS), "aggregator": VARIANTS[0]}
    return parse_config({"models": models, "roles": roles}, "bench")


async def batch(client: openai.AsyncOpenAI, served: str, c: int, rnd: int, max_tokens: int) -> float:
    async def one(i: int) -> int:
        r = await client.chat.completions.create(
            model=served, messages=[{"role": "user", "content": f"Write a long, detailed essay about {TOPICS[i % len(TOPICS)]}."}],
            max_tokens=max_tokens, temperature=0.7, seed=1000 + 17 * rnd + i,
        )  # fmt: skip
        return r.usage.completion_tokens if r.usage else 0

    began = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(i) for i in range(c))))
    return tokens / (time.perf_counter() - began)


def rss_mb(pid: int) -> float:
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return float("nan")


async def one_model(model: str, args) -> list[str]:
    cfg = bench_config(model)
    events = EventLog()
    rates: dict[tuple[str, int], list[float]] = {}
    rss: dict[str, list[float]] = {v: [] for v in VARIANTS}
    async with ServerManager(cfg, events) as manager:
        endpoints = {v: await manager.acquire(v, exclusive=False) for v in VARIANTS}
        pids = {e.model: e.pid for e in events.events if e.kind == "server_start"}
        for v in VARIANTS:
            rss[v].append(rss_mb(pids[v]))
        clients = {v: openai.AsyncOpenAI(base_url=e.base_url, api_key=e.api_key, max_retries=0, timeout=600) for v, e in endpoints.items()}
        try:
            for v in VARIANTS:  # warm-up: the first request of a fresh server pays for its buffers
                await batch(clients[v], endpoints[v].served_model, 2, -1, 16)
            for rnd in range(args.rounds):
                order = VARIANTS if rnd % 2 == 0 else VARIANTS[::-1]
                for c in args.in_flight:
                    for v in order:
                        rates.setdefault((v, c), []).append(await batch(clients[v], endpoints[v].served_model, c, rnd, args.max_tokens))
                        rss[v].append(rss_mb(pids[v]))
                line = ", ".join(f"{v} c={c}: {rates[(v, c)][-1]:.0f}" for c in args.in_flight for v in VARIANTS)
                print(f"[cpu_server] {model} round {rnd + 1}: {line} tok/s", file=sys.stderr, flush=True)
        finally:
            for client in clients.values():
                await client.close()
    threads = manager.cpu_threads
    rows = [f"| {model} | " + " | ".join(f"c={c}" for c in args.in_flight) + " | RSS idle/peak MB |",
            "| --- | " + " | ".join("---:" for _ in args.in_flight) + " | ---: |"]  # fmt: skip
    for v in VARIANTS:
        cells = []
        for c in args.in_flight:
            ratios = [a / b for a, b in zip(rates[(v, c)], rates[("llama-cpp-python", c)])]
            cells.append(f"{statistics.median(rates[(v, c)]):.0f} ({statistics.median(ratios):.2f}x)")
        name = f"{v} ({threads} threads, 8 slots)" if v == "llama-server" else f"{v} (its default threads)"
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {rss[v][0]:.0f} / {max(rss[v]):.0f} |")
    if 8 in args.in_flight and 1 in args.in_flight:
        r8 = statistics.median(a / b for a, b in zip(rates[("llama-server", 8)], rates[("llama-cpp-python", 8)]))
        r1 = statistics.median(a / b for a, b in zip(rates[("llama-server", 1)], rates[("llama-cpp-python", 1)]))
        rows.append(f"\n{model}: {r8:.2f}x at 8 in flight (goal >= 2.2x: {'met' if r8 >= 2.2 else 'NOT met'}), "
                    f"{r1:.2f}x at 1 (goal >= 0.95x: {'met' if r1 >= 0.95 else 'NOT met'})")  # fmt: skip
    return rows


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default="smollm2,gemma3")
    ap.add_argument("--in-flight", default="1,4,8", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--max-tokens", type=int, default=200)
    args = ap.parse_args()
    if importlib.util.find_spec("llama_cpp") is None:
        sys.exit('the baseline needs llama-cpp-python: pip install -e ".[llama-cpp-python]"')
    models = args.models.split(",")
    unknown = [m for m in models if m not in EMBEDDED]
    if unknown:
        sys.exit(f"unknown model(s) {unknown}; choose from {sorted(EMBEDDED)}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in psutil.getloadavg())}; cores: {psutil.cpu_count()}")
    for model in models:
        print("\n".join(await one_model(model, args)), flush=True)
        print()


if __name__ == "__main__":
    asyncio.run(main())
