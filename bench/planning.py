"""Planning at scale: skill alignment, routing and grouping for many synthetic questions.

    python bench/planning.py [--sizes 1000,3000,10000,30000,100000] [--models 16] [--skills 5000]

A pool of --models experts with profiles over a vocabulary of --skills keywords (each
profile holds a random 60% of them, with scores in [-3, 5]). Each question has 3-6
keywords: 70% from the profile vocabulary, 30% paraphrases of them ("... methods") that
only embedding alignment can map. Every size runs in a fresh process, so peak memory is
that size's own.

What is timed is symoe's planning code: ``Aligner.mapping`` (embed the unknown keywords,
nearest profile keyword), ``routing_batch.route_batch`` and ``schedule.plan_schedule``. The
embedding model is a STAND-IN (hash-seeded random 384-d vectors, numpy), because its own
speed is not symoe's: MiniLM's throughput on this machine is printed once at the end
(``--minilm``) as the limit a real run adds.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import time

import numpy as np
import psutil

DIM = 384


class HashEmbedder:
    """STAND-IN embedder: a fixed pseudo-random vector per text (two rows of a random table
    picked by the text's hash, summed), no model, a few µs per text."""

    name = "hash-standin"
    table = np.random.default_rng(0).standard_normal((4096, DIM), dtype=np.float32)

    as_lists = False  # --embedder-lists: the list-of-floats embedder protocol that symoe had before commit cd99f8a, for before/after runs

    async def embed(self, texts: list[str]) -> np.ndarray:
        h = np.array([int.from_bytes(hashlib.blake2b(t.encode(), digest_size=4).digest(), "big") for t in texts], dtype=np.int64)
        out = self.table[h % 4096] + self.table[(h // 4096) % 4096]
        return out.tolist() if self.as_lists else out


def make_pool(models: int, skills: int, seed: int = 0):
    rng = random.Random(seed)
    vocab = [f"skill {i} {rng.choice(['algebra', 'law', 'biology', 'optics', 'history', 'coding'])}" for i in range(skills)]
    profiles = {}
    for m in range(models):
        chosen = rng.sample(vocab, int(skills * 0.6))
        profiles[f"model-{m:02d}"] = {s: float(rng.randint(-3, 5)) for s in chosen}
    return vocab, profiles


def make_questions(n: int, vocab: list[str], seed: int = 1) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kws = []
        for _ in range(rng.randint(3, 6)):
            s = rng.choice(vocab)
            kws.append(s if rng.random() < 0.7 else f"{s} methods")
        out.append((f"q{i}", kws))
    return out


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def one(n: int, models: int, skills: int) -> dict:
    from symoe_agents import routing_batch
    from symoe_agents.alignment import Aligner
    from symoe_agents.schedule import plan_schedule

    vocab, profiles = make_pool(models, skills)
    questions = make_questions(n, vocab)
    pool = list(profiles)
    servers = {m: f"llamacpp:{m}#000000" for m in pool}
    base = rss_mib()

    t0 = time.perf_counter()
    aligner = Aligner(list(dict.fromkeys(s for p in profiles.values() for s in p)), HashEmbedder())
    mapping = asyncio.run(aligner.mapping({k for _, kws in questions for k in kws}))
    t1 = time.perf_counter()

    def align(kws, _vocabulary):
        return [mapping[k] for k in kws if k in mapping]

    routes = routing_batch.route_batch(questions, pool, 3, 0, profiles, None, align)
    t2 = time.perf_counter()
    schedule = plan_schedule([q for q, _ in questions], routes, servers, pool[0], pool[1], 5)
    t3 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    assert schedule.requests == n * (5 + 3 + 1)
    return {
        "questions": n, "unique_keywords": len(mapping), "align_s": t1 - t0, "route_s": t2 - t1, "group_s": t3 - t2,
        "total_s": t3 - t0, "peak_rss_mib": peak, "planning_mib": peak - base,
    }  # fmt: skip


def minilm_rate(k: int = 2000) -> float | None:
    """Keywords per second that all-MiniLM-L6-v2 embeds on this machine's CPU."""
    from symoe_agents.alignment import SentenceTransformerEmbedder, sentence_transformers_available

    if not sentence_transformers_available():
        return None
    emb = SentenceTransformerEmbedder()
    texts = [f"skill {i} methods of analysis" for i in range(k)]
    asyncio.run(emb.embed(texts[:64]))  # load the model
    t = time.perf_counter()
    asyncio.run(emb.embed(texts))
    return k / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,3000,10000,30000,100000")
    ap.add_argument("--models", type=int, default=16)
    ap.add_argument("--skills", type=int, default=5000)
    ap.add_argument("--minilm", action="store_true", help="also measure MiniLM's embedding rate")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--embedder-lists", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    HashEmbedder.as_lists = args.embedder_lists
    if args.one:
        print(json.dumps(one(args.one, args.models, args.skills)))
        return
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(n), "--models", str(args.models), "--skills", str(args.skills)]
            + (["--embedder-lists"] if args.embedder_lists else []),
            capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"},
        )  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"[planning] {n} questions done", file=sys.stderr, flush=True)
    print(f"planning: {args.models} models, profiles over {args.skills} skills, 3-6 keywords per question (30% need embedding alignment)")
    print("| questions | unique keywords | align s | route s | group s | total s | µs/question | peak RSS MiB | planning MiB | KiB/question |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['questions']} | {r['unique_keywords']} | {r['align_s']:.3f} | {r['route_s']:.3f} | {r['group_s']:.3f} | "
            f"{r['total_s']:.3f} | {1e6 * r['total_s'] / r['questions']:.1f} | {r['peak_rss_mib']:.0f} | "
            f"{r['planning_mib']:.0f} | {1024 * r['planning_mib'] / r['questions']:.2f} |"
        )
    big = rows[-1]
    print(f"goal at {big['questions']} questions: total {big['total_s']:.2f} s (< 2 s: {'met' if big['total_s'] < 2 else 'NOT met'}), "
          f"peak {big['peak_rss_mib']:.0f} MiB (< 1024 MiB: {'met' if big['peak_rss_mib'] < 1024 else 'NOT met'})")  # fmt: skip
    if args.minilm:
        rate = minilm_rate()
        print(f"all-MiniLM-L6-v2 on this CPU: {rate:.0f} keywords/s" if rate else "MiniLM not installed")


if __name__ == "__main__":
    main()
