"""Schedules side by side on the embedded CPU pool: model loads and wall time.

    python bench/schedules.py [--questions 30] [--modes grouped,co-resident,naive,moa]

- grouped:      the paper's schedule: route the batch, one model at a time, each loaded once
- co-resident:  expert servers side by side when their memory fits (schedule.co_residency)
- naive:        each question solved on its own: every model it needs loaded per question
- moa:          the eval harness's Mixture-of-Agents baseline (top-k proposers, 2 layers,
                then the aggregator), run as one grouped batch like every eval method

calls/question counts every HTTP call (skill samples, experts, every MoA layer, the
aggregator); tokens/question is prompt + completion over all of them.

Every mode routes the same questions to the same experts (routing is seeded per question
id), so the differences are the schedule's alone. Prints a table; it is a benchmark, not a
test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from symoe_agents import EventLog, SymbolicMoE
from symoe_agents.config import load_config, parse_config
from symoe_agents.methods import build_methods
from symoe_agents.profiles import load_profiles

ROOT = Path(__file__).resolve().parent.parent


def questions(n: int) -> list[dict]:
    base = [json.loads(line) for line in (ROOT / "examples" / "questions.jsonl").read_text().splitlines() if line.strip()]
    extra = [
        {"id": f"add-{i}", "question": f"What is {i} + {i + 3}? The options are: (A) {2 * i + 3} (B) {2 * i + 4} (C) {2 * i + 2}",
         "gold_answer": "A"}
        for i in range(max(0, n - len(base)))
    ]  # fmt: skip
    return (base + extra)[:n]


def config(mode: str):
    data = load_config().model_dump(mode="json")
    if mode == "co-resident":
        for m in data["models"].values():
            m["memory_gib"] = 0.6  # measured RSS of these servers: 0.4-0.6 GB
        data["schedule"].update(co_residency=True, device_memory_gib=4.0)
    return parse_config(data, f"<bench {mode}>")


async def run(mode: str, qs: list[dict]) -> dict:
    events = EventLog()
    began = time.monotonic()
    results = []
    calls = tokens = 0
    async with SymbolicMoE(config(mode), events=events) as moe:
        if mode == "naive":
            for q in qs:
                results += await moe.solve_batch([q])
                calls += moe.summary.calls_sent
                tokens += moe.summary.prompt_tokens + moe.summary.completion_tokens
        else:
            method = None
            if mode == "moa":  # the eval harness's Mixture-of-Agents baseline: top-k proposers, 2 layers
                cfg = moe.config
                accuracy = {m: p.validation_accuracy for m, p in load_profiles(cfg.profiles, cfg.roles.experts).items()}
                (method,) = build_methods(["moa"], cfg.roles.experts, cfg.k, accuracy)
            results = await moe.solve_batch(qs, method=method)
            calls = moe.summary.calls_sent
            tokens = moe.summary.prompt_tokens + moe.summary.completion_tokens
    wall = time.monotonic() - began
    loads = sum(1 for e in events.events if e.kind == "server_start")
    startup = sum(e.duration_s or 0 for e in events.events if e.kind == "server_ready")
    graded = [r for r in results if r.correct is not None]
    return {"mode": mode, "questions": len(qs), "loads": loads, "startup_s": startup, "wall_s": wall,
            "s_per_q": wall / len(qs), "calls_per_q": calls / len(qs), "tokens_per_q": tokens / len(qs),
            "correct": sum(1 for r in graded if r.correct), "graded": len(graded),
            "experts": sorted({e for r in results for e in r.experts})}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=30)
    ap.add_argument("--modes", default="grouped,co-resident,naive,moa")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()
    qs = questions(args.questions)
    rows = []
    for mode in args.modes.split(","):
        print(f"running {mode} on {len(qs)} questions ...", flush=True)
        rows.append(asyncio.run(run(mode, qs)))
    print()
    print(f"| {'schedule':<12} | questions | model loads | server start-up s | wall s | s/question | calls/question | tokens/question | correct |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['mode']:<12} | {r['questions']} | {r['loads']} | {r['startup_s']:.1f} | {r['wall_s']:.1f} | "
              f"{r['s_per_q']:.2f} | {r['calls_per_q']:.1f} | {r['tokens_per_q']:.0f} | {r['correct']}/{r['graded']} |")  # fmt: skip
    grouped = next((r for r in rows if r["mode"] == "grouped"), None)
    if grouped:
        for r in rows:
            if r is not grouped:
                print(f"{r['mode']}: {r['wall_s'] / grouped['wall_s']:.2f}x the grouped wall time, "
                      f"{r['loads'] / max(grouped['loads'], 1):.1f}x its loads")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
