"""SmolLM2's weights as shipped (Q4_1) against its expanded copies (``dequantize``), on
llama-server, on this machine's cores.

    python bench/cpu_weights.py [--rounds 3] [--types q4_1,f16,bf16]

symoe starts one llama-server per weight type through its own ``llamacpp`` backend (16
slots of 2048 tokens, the threads rule), one at a time, in an order reversed every round.
Each round measures:
- prompt processing: 6 prompts of about 300 tokens at once, 1 token out (prompt tokens over
  the batch's wall time);
- decoding at 1 and at 16 in flight: 100 tokens each with ``ignore_eos`` (completion tokens
  over the batch's wall time).
The table gives the median over rounds and, in parentheses, the median per-round ratio to
Q4_1. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

import openai

from symoe_agents.config import parse_config
from symoe_agents.events import EventLog
from symoe_agents.servers import ServerManager

WORDS = ("energy matter history river language number system market cell law theory light city music "
         "animal planet memory signal water structure").split()  # fmt: skip


def bench_config(kinds: list[str]):
    models = {}
    for kind in kinds:
        m = {"backend": "llamacpp", "embedded": "smollm2-135m-instruct", "parallel": 16, "n_ctx": 2048}
        if kind != "q4_1":
            m["dequantize"] = kind
        models[kind] = m
    roles = {"skill_inferencer": kinds[0], "experts": kinds, "aggregator": kinds[0]}
    return parse_config({"models": models, "roles": roles}, "bench")


async def measure(client: openai.AsyncOpenAI, served: str, rnd: int) -> dict[str, float]:
    rng = random.Random(rnd)

    async def one(prompt: str, max_tokens: int, seed: int) -> tuple[int, int]:
        r = await client.chat.completions.create(
            model=served, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
            temperature=0.7, seed=seed, extra_body={"ignore_eos": True},
        )  # fmt: skip
        return (r.usage.prompt_tokens, r.usage.completion_tokens) if r.usage else (0, 0)

    out = {}
    prompts = [" ".join(rng.choice(WORDS) for _ in range(280)) for _ in range(6)]
    began = time.perf_counter()
    done = await asyncio.gather(*(one(p, 1, rnd * 100 + i) for i, p in enumerate(prompts)))
    out["prompt tok/s (6 x 300)"] = sum(p for p, _ in done) / (time.perf_counter() - began)
    for c in (1, 16):
        began = time.perf_counter()
        done = await asyncio.gather(*(one(f"Write about {rng.choice(WORDS)}.", 100, rnd * 100 + i) for i in range(c)))
        out[f"decode tok/s, {c} in flight"] = sum(t for _, t in done) / (time.perf_counter() - began)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--types", default="q4_1,f16,bf16")
    args = ap.parse_args()
    kinds = args.types.split(",")
    cfg = bench_config(kinds)
    results: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    manager = ServerManager(cfg, EventLog())
    async with manager:
        for rnd in range(args.rounds):
            for kind in kinds if rnd % 2 == 0 else kinds[::-1]:
                ep = await manager.acquire(kind)  # exclusive: the previous one stops first
                async with openai.AsyncOpenAI(base_url=ep.base_url, api_key=ep.api_key, max_retries=0, timeout=600) as client:
                    await measure(client, ep.served_model, 999)  # warm the server's caches; not counted
                    results[kind].append(await measure(client, ep.served_model, rnd))
                print(f"round {rnd + 1} {kind}: " + ", ".join(f"{v:.0f}" for v in results[kind][-1].values()), flush=True)
    columns = list(results[kinds[0]][0])
    print("\n| SmolLM2-135M weights | " + " | ".join(columns) + " |")
    print("| --- |" + " ---: |" * len(columns))
    base = results[kinds[0]]
    for kind in kinds:
        cells = []
        for col in columns:
            med = statistics.median(r[col] for r in results[kind])
            ratio = statistics.median(r[col] / b[col] for r, b in zip(results[kind], base))
            cells.append(f"{med:.0f} ({ratio:.2f}x)")
        print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    asyncio.run(main())
