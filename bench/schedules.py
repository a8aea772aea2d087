"""Schedules side by side on the embedded CPU pool: model loads and wall time.

    python bench/schedules.py [--questions N] [--modes grouped,co-resident,naive]

- grouped:      the paper's schedule: route the batch, one model at a time, each loaded once
- co-resident:  expert servers side by side when their memory fits (schedule.co_residency)
- naive:        each question solved on its own: every model it needs loaded per question

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
    async with SymbolicMoE(config(mode), events=events) as moe:
        if mode == "naive":
            for q in qs:
                results += await moe.solve_batch([q])
        else:
            results = await moe.solve_batch(qs)
    wall = time.monotonic() - began
    loads = sum(1 for e in events.events if e.kind == "server_start")
    startup = sum(e.duration_s or 0 for e in events.events if e.kind == "server_ready")
    calls = sum(len(r.expert_answers) + (1 if r.aggregator_answer else 0) for r in results)
    calls += len(qs) * moe.config.sampling.skill_inferencer.samples
    tokens = sum(r.tokens for r in results)
    return {"mode": mode, "questions": len(qs), "loads": loads, "startup_s": startup, "wall_s": wall,
            "s_per_q": wall / len(qs), "calls_per_q": calls / len(qs), "answer_tokens_per_q": tokens / len(qs),
            "experts": sorted({e for r in results for e in r.experts})}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--modes", default="grouped,co-resident,naive")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()
    qs = questions(args.questions)
    rows = []
    for mode in args.modes.split(","):
        print(f"running {mode} on {len(qs)} questions ...", flush=True)
        rows.append(asyncio.run(run(mode, qs)))
    print()
    print(f"| {'schedule':<12} | questions | model loads | server start-up s | wall s | s/question | calls/question | expert+agg tokens/question |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['mode']:<12} | {r['questions']} | {r['loads']} | {r['startup_s']:.1f} | {r['wall_s']:.1f} | "
              f"{r['s_per_q']:.2f} | {r['calls_per_q']:.1f} | {r['answer_tokens_per_q']:.0f} |")  # fmt: skip
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
