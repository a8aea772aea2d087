"""Swap-aware serving against first-come-first-served swapping, on a replayed arrival trace.

    python bench/serve_trace.py [--requests 240] [--rate 8] [--skew 1.2] [--ensemble-share 0.25]
                                [--models 6] [--k 2] [--samples 2] [--start-delay 0.5] [--decode-s 0.1]
                                [--window-s 0.25] [--max-wait-s 5] [--max-windows 4] [--max-queue 256]
                                [--overhead-requests 200] [--rss-requests 2000] [--rss-in-flight 32] [--seed 0]

    quick check: python bench/serve_trace.py --requests 40 --rss-requests 200

It is a benchmark script, not a test: it takes minutes and prints markdown tables.

The pool is --models STAND-IN servers (bench/swap_server.py), each its own process started
by symoe's ``command`` backend: a start costs --start-delay seconds (the model's load, a
sleep that uses no CPU) and every completion --decode-s seconds (its decoding, any number
at once). Loads are real process starts; nothing is simulated inside symoe.

1. The trace (seeded, --seed): --requests requests with Poisson arrivals at --rate per
   second. Each asks one pool model by its own name, drawn with Zipf-like popularity
   (weight 1/rank^--skew over a seeded ranking of the pool), or, for --ensemble-share of
   them, model "symoe" (the ensemble: --samples skill samples, --k experts, the aggregator).
2. symoe serve: the trace is sent, each request at its arrival time, non-streamed with the
   ``openai`` client, to ``symoe serve`` (its own process, on a free port). Measured: each
   request's latency (sent to answered), throughput, model loads (``server_ready`` events),
   and from /health the longest wait of a group for its model and the longest group (turn).
   Goal: the longest wait is at most max_wait_s plus one group.
3. First-come-first-served swapping on the same trace and stand-ins (what llama-swap and
   Ollama do by default): one request at a time in arrival order; before each call the
   model it needs is loaded if it is not the loaded one (symoe's own ``ServerManager``,
   ``acquire(model, exclusive=True)``: the other server stops, the needed one starts). An
   ensemble request makes the calls serve made for it (its experts as serve reported them):
   the skill samples, its experts, the aggregator, in the order that needs the fewest loads
   (the skill model's expert first, the aggregator's last, a model drawn twice called
   twice in a row; the samples of one model sent together), which favours this baseline.
   Its "longest wait for a model" is the longest a request waited, from its arrival, for
   its first call to begin. Goal: symoe serve makes at least 5x fewer loads.

   The defaults put about 5 arrivals into each load's time (0.5 s start delay plus this
   machine's ~0.16 s to start a Python process; 8 requests a second), as on a shared GPU
   whose models take 20 s to load and get a request every 4 s: the regime where the
   swapping policy decides the throughput. First come, first served takes about 5 minutes
   of the run's 8 here; a longer --start-delay scales that up.
4. Overhead: a second ``symoe serve`` over instant stand-ins (no start delay, no decoding);
   --overhead-requests sequential requests to one pool model, alternately through serve
   (its relay path) and straight to that model's server: the mean difference is serve's own
   cost per request; once on kept-alive connections (the openai client's default), once
   with a new connection per request.
5. Memory: --rss-requests requests (the trace's mix of models and ensemble share) through
   that instant serve at --rss-in-flight at once; the serve process's RSS (its own, not its
   model servers') every 500 requests. Goal: flat.

Everything it starts is stopped on exit, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import openai
import psutil

from symoe_agents.config import load_config
from symoe_agents.events import EventLog
from symoe_agents.servers import ServerManager

from swap_server import pool_toml  # bench/ is this script's folder, first on sys.path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ENSEMBLE = "symoe"
RSS_EVERY = 500
OPTIONS = "The options are: (A) {a} (B) {b} (C) {c} (D) {d}"


# -- the pool and its config ------------------------------------------------------------


def pool(n: int) -> list[str]:
    return [f"m{i + 1}" for i in range(n)]


def config_text(args, start_delay: float, decode_s: float) -> str:
    """A pool of stand-in servers, one per model, and the roles and serve options."""
    lines = pool_toml(pool(args.models), start_delay, decode_s, "standin-", k=args.k, seed=args.seed, samples=args.samples,
                      request_timeout_s=300, retries=1)
    lines += [
        "",
        "[serve]",
        f"window_s = {args.window_s}",
        f"max_wait_s = {args.max_wait_s}",
        f"max_windows = {args.max_windows}",
        f"max_queue = {args.max_queue}",
        "shutdown_grace_s = 10",
    ]
    return "\n".join(lines) + "\n"


def write_config(folder: Path, name: str, args, start_delay: float, decode_s: float) -> Path:
    path = folder / name
    path.write_text(config_text(args, start_delay, decode_s))
    load_config(path)  # fails here, with the config's own message, if it is not valid
    return path


# -- the trace --------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    index: int
    at: float  # seconds after the trace starts
    model: str  # a pool model's name, or "symoe" for the ensemble
    question: str


def popularity(args, rng: random.Random) -> dict[str, float]:
    """Zipf-like weights over a seeded ranking of the pool: rank r weighs 1/r^skew."""
    ranked = pool(args.models)
    rng.shuffle(ranked)
    return {m: 1.0 / (rank + 1) ** args.skew for rank, m in enumerate(ranked)}


def question(i: int, rng: random.Random) -> str:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    right = a + b
    return f"Request {i}: what is {a} + {b}? " + OPTIONS.format(a=right - 1, b=right, c=right + 1, d=right + 10)


def make_trace(n: int, args, weights: dict[str, float], rng: random.Random) -> list[Request]:
    models, w = list(weights), list(weights.values())
    out, t = [], 0.0
    for i in range(n):
        t += rng.expovariate(args.rate)
        model = ENSEMBLE if rng.random() < args.ensemble_share else rng.choices(models, w)[0]
        out.append(Request(i, t, model, question(i, rng)))
    return out


# -- symoe serve as a process -----------------------------------------------------------


class ServeProcess:
    """``symoe serve`` on a free port; its stderr goes to a file, which gives the port."""

    def __init__(self, config: Path, events: Path, log: Path):
        self.events = events
        self.log = log
        events.unlink(missing_ok=True)  # serve appends: a kept folder's last run must not count
        self.stderr = open(log, "w")  # noqa: SIM115 (closed in stop)
        cmd = [sys.executable, "-m", "symoe_agents.cli", "serve", "--port", "0", "--config", str(config), "--events", str(events)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.stderr, cwd=ROOT)
        self.port = self._wait_port(120)
        self.base = f"http://127.0.0.1:{self.port}"

    def _wait_port(self, within: float) -> int:
        marker = "serving the ensemble on http://127.0.0.1:"
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if marker in text:
                return int(text.split(marker, 1)[1].split("/", 1)[0])
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"symoe serve did not start; its stderr ends:\n{self.log.read_text(errors='replace')[-3000:]}")

    def client(self, **options) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base + "/v1", api_key="none", max_retries=0, timeout=600, **options)

    def stop(self) -> int | None:
        """SIGTERM and wait (serve stops its model servers first); SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # its servers' watchdogs stop them when it dies
                self.proc.wait(10)
        self.stderr.close()
        return self.proc.returncode

    def rss(self) -> tuple[int, int]:
        """(RSS, peak RSS) of the serve process itself, in bytes."""
        rss = psutil.Process(self.proc.pid).memory_info().rss
        peak = 0
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
        return rss, peak

    def event_list(self) -> list[dict]:
        return [json.loads(line) for line in self.events.read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def serving(config: Path, events: Path, log: Path):
    serve = ServeProcess(config, events, log)
    try:
        yield serve
    finally:
        code = serve.stop()
        if code not in (0, None):
            print(f"[serve_trace] symoe serve exited {code}; its stderr is in {log}", file=sys.stderr)


async def health(base: str) -> dict:
    def get() -> dict:
        with urllib.request.urlopen(base + "/health", timeout=30) as r:
            return json.loads(r.read())

    return await asyncio.to_thread(get)


# -- results ----------------------------------------------------------------------------


@dataclass
class Outcome:
    latency: float | None = None  # None: failed
    wait: float = 0.0  # until its first model call began (first-come-first-served only)
    experts: list[str] = field(default_factory=list)  # an ensemble request's experts, as serve reported them
    error: str | None = None


@dataclass
class RunResult:
    name: str
    outcomes: list[Outcome]
    wall_s: float
    loads: int
    longest_wait_s: float
    longest_turn_s: float | None = None  # symoe serve only
    switches: int | None = None
    load_s: float = 0.0  # mean start-to-ready time of a load (first come, first served only)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]  # nearest rank


# -- the trace through symoe serve -------------------------------------------------------


async def send_one(client: openai.AsyncOpenAI, req: Request) -> Outcome:
    began = time.monotonic()
    try:
        r = await client.chat.completions.create(model=req.model, messages=[{"role": "user", "content": req.question}])
    except openai.APIError as exc:
        return Outcome(error=f"{type(exc).__name__}: {str(exc)[:200]}")
    experts = [e["model"] for e in (r.model_extra or {}).get("symoe", {}).get("experts", [])]
    return Outcome(latency=time.monotonic() - began, experts=experts)


async def replay_on_serve(serve: ServeProcess, trace: list[Request]) -> RunResult:
    """Each request sent at its arrival time; all in flight at once as they come."""
    async with serve.client() as client:
        t0 = time.monotonic()

        async def at_its_time(req: Request) -> tuple[Outcome, float]:
            await asyncio.sleep(max(0.0, t0 + req.at - time.monotonic()))
            out = await send_one(client, req)
            return out, time.monotonic()

        done = await asyncio.gather(*(at_its_time(r) for r in trace))
    wall = max(t for _, t in done) - t0
    turns = (await health(serve.base))["turns"]
    loads = sum(e["kind"] == "server_ready" for e in serve.event_list())
    return RunResult("symoe serve", [o for o, _ in done], wall, loads, turns["longest_wait_s"], turns["longest_turn_s"], turns["switches"])


# -- the same trace, first come first served ----------------------------------------------


def ensemble_calls(experts: list[str], cfg, samples: int) -> list[list[str]]:
    """An ensemble request's calls as consecutive batches of one model each, in the order
    that needs the fewest loads: skill samples, experts (the skill model's first, the
    aggregator's last, repeats together), the aggregation."""
    skill, agg = cfg.roles.skill_inferencer, cfg.roles.aggregator
    order = sorted(experts, key=lambda m: (m != skill, m == agg, m))
    batches = [[skill] * samples]
    for m in order:
        if batches[-1][0] == m:
            batches[-1].append(m)
        else:
            batches.append([m])
    if batches[-1][0] == agg:
        batches[-1].append(agg)
    else:
        batches.append([agg])
    return batches


class OneClient:
    """An openai client for the server that runs now: a new start is a new port."""

    def __init__(self) -> None:
        self.base: str | None = None
        self.client: openai.AsyncOpenAI | None = None

    async def to(self, endpoint) -> openai.AsyncOpenAI:
        if endpoint.base_url != self.base:
            await self.aclose()
            self.base = endpoint.base_url
            self.client = openai.AsyncOpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key or "none", max_retries=0, timeout=300)
        assert self.client is not None
        return self.client

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.close()
        self.client, self.base = None, None


async def call_batch(manager: ServerManager, clients: OneClient, models: list[str], text: str) -> None:
    """One model's calls of a request: load it if it is not the loaded one, then ask."""
    endpoint = await manager.acquire(models[0], exclusive=True)
    client = await clients.to(endpoint)
    await asyncio.gather(*(client.chat.completions.create(model=endpoint.served_model, messages=[{"role": "user", "content": text}])
                           for _ in models))  # fmt: skip


async def replay_fcfs(config: Path, trace: list[Request], experts_of: dict[int, list[str]], args) -> RunResult:
    cfg = load_config(config)
    ready_s: list[float] = []  # each load's start-to-ready time
    events = EventLog()
    events.listen(lambda e: ready_s.append(e.duration_s or 0.0) if e.kind == "server_ready" else None)
    outcomes: list[Outcome] = []
    clients = OneClient()
    async with ServerManager(cfg, events) as manager:
        try:
            t0 = time.monotonic()
            last = t0
            for req in trace:  # a FIFO: the next request starts when the last one is done
                arrived = t0 + req.at
                await asyncio.sleep(max(0.0, arrived - time.monotonic()))
                began = time.monotonic()
                if req.model == ENSEMBLE:
                    batches = ensemble_calls(experts_of[req.index], cfg, args.samples)
                else:
                    batches = [[req.model]]
                try:
                    for models in batches:
                        await call_batch(manager, clients, models, req.question)
                except openai.APIError as exc:
                    outcomes.append(Outcome(error=f"{type(exc).__name__}: {str(exc)[:200]}"))
                    continue
                last = time.monotonic()
                outcomes.append(Outcome(latency=last - arrived, wait=began - arrived))
        finally:
            await clients.aclose()
    wait = max((o.wait for o in outcomes if o.latency is not None), default=0.0)
    result = RunResult("first come, first served", outcomes, last - t0, len(ready_s), wait)
    result.load_s = sum(ready_s) / len(ready_s) if ready_s else 0.0
    return result


def experts_for_fcfs(trace: list[Request], served: RunResult, cfg, rng: random.Random) -> dict[int, list[str]]:
    """The experts serve recruited for each ensemble request; k drawn at random where it failed."""
    out = {}
    for req, outcome in zip(trace, served.outcomes):
        if req.model == ENSEMBLE:
            out[req.index] = outcome.experts or [rng.choice(cfg.roles.experts) for _ in range(cfg.k)]
    return out


# -- overhead and memory, on instant stand-ins ---------------------------------------------


def server_port(serve: ServeProcess, model: str) -> int:
    ready = [e for e in serve.event_list() if e["kind"] == "server_ready" and e.get("model") == model]
    return ready[-1]["port"]


async def timed(client: openai.AsyncOpenAI, model: str, text: str) -> float:
    began = time.perf_counter()
    await client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
    return time.perf_counter() - began


#: a new connection for every request (the server closes it after answering)
NEW_CONNECTIONS = {"default_headers": {"Connection": "close"}}


async def overhead(serve: ServeProcess, model: str, n: int, **options) -> tuple[float, float]:
    """(mean ms direct, mean ms through serve), the two alternating request by request, so
    that both see the same machine load. ``options``: the openai clients' (the headers)."""
    async with serve.client(**options) as through:
        await timed(through, model, "warm-up")  # loads the model, opens the connections
        port = server_port(serve, model)
        async with openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, **options) as direct:
            await timed(direct, f"standin-{model}", "warm-up")
            d, s = [], []
            for i in range(n):
                d.append(await timed(direct, f"standin-{model}", f"direct {i}"))
                s.append(await timed(through, model, f"through {i}"))
    return 1000 * sum(d) / n, 1000 * sum(s) / n


async def rss_run(serve: ServeProcess, trace: list[Request], in_flight: int) -> list[tuple[int, int, int]]:
    """(requests done, RSS, peak RSS) before the first and after every RSS_EVERY requests."""
    samples = [(0, *serve.rss())]
    slots = asyncio.Semaphore(in_flight)
    done = [0]
    failed = [0]
    async with serve.client() as client:

        async def one(req: Request) -> None:
            async with slots:
                out = await send_one(client, req)
            failed[0] += out.error is not None
            done[0] += 1
            if done[0] % RSS_EVERY == 0 or done[0] == len(trace):
                samples.append((done[0], *serve.rss()))

        await asyncio.gather(*(one(r) for r in trace))
    if failed[0]:
        print(f"[serve_trace] memory run: {failed[0]} requests failed", file=sys.stderr)
    return samples


# -- the report ---------------------------------------------------------------------------


def table(rows: list[RunResult], max_wait_s: float) -> list[str]:
    out = [
        "| method | requests (failed) | model loads | mean latency s | p95 latency s | longest wait for a model s | max_wait_s + longest group s | throughput req/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ok = [o.latency for o in r.outcomes if o.latency is not None]
        failed = len(r.outcomes) - len(ok)
        bound = f"{max_wait_s + r.longest_turn_s:.2f}" if r.longest_turn_s is not None else "n/a"
        mean = sum(ok) / len(ok) if ok else float("nan")
        out.append(f"| {r.name} | {len(r.outcomes)} ({failed}) | {r.loads} | {mean:.2f} | {percentile(ok, 0.95):.2f} | "
                   f"{r.longest_wait_s:.2f} | {bound} | {len(ok) / r.wall_s:.2f} |")  # fmt: skip
    return out


def verdicts(serve: RunResult, fcfs: RunResult, max_wait_s: float) -> list[str]:
    ratio = fcfs.loads / serve.loads if serve.loads else float("inf")
    bound = max_wait_s + (serve.longest_turn_s or 0.0)
    return [
        f"- loads: first come, first served {fcfs.loads}, symoe serve {serve.loads}: {ratio:.1f}x fewer "
        f"(goal >= 5x: {'met' if ratio >= 5 else 'NOT met'})",
        f"- longest wait for a model {serve.longest_wait_s:.2f} s against max_wait_s + longest group {bound:.2f} s "
        f"({'met' if serve.longest_wait_s <= bound else 'NOT met'}); {serve.switches} switches between models",
    ]


def rss_lines(samples: list[tuple[int, int, int]]) -> list[str]:
    mib = 1024 * 1024
    out = ["| requests done | RSS MiB | peak RSS MiB |", "| ---: | ---: | ---: |"]
    out += [f"| {n} | {rss / mib:.1f} | {peak / mib:.1f} |" for n, rss, peak in samples]
    if len(samples) >= 3:
        first, last = samples[1], samples[-1]  # from the first RSS_EVERY requests on: start-up allocations are past
        grew = (last[2] - first[2]) / mib
        out.append(f"\npeak RSS from {first[0]} to {last[0]} requests: {grew:+.1f} MiB "
                   f"({100 * grew * mib / first[2]:+.1f}%; flat: {'yes' if abs(grew * mib) <= 0.05 * first[2] else 'NO'})")  # fmt: skip
    return out


def say(text: str) -> None:
    print(f"[serve_trace] {text}", file=sys.stderr, flush=True)


# -- main ---------------------------------------------------------------------------------


async def run(args, folder: Path) -> None:
    # SIGTERM cancels like Ctrl-C does: every finally runs (serve stopped, servers stopped)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    rng = random.Random(args.seed)
    weights = popularity(args, rng)
    trace = make_trace(args.requests, args, weights, rng)
    config = write_config(folder, "pool.toml", args, args.start_delay, args.decode_s)
    ensemble = sum(r.model == ENSEMBLE for r in trace)
    say(f"trace: {len(trace)} requests over {trace[-1].at:.1f} s, {ensemble} to the ensemble; popularity "
        + ", ".join(f"{m} {w / sum(weights.values()):.2f}" for m, w in sorted(weights.items(), key=lambda x: -x[1])))  # fmt: skip

    with serving(config, folder / "serve.events.jsonl", folder / "serve.log") as serve:
        say(f"symoe serve on port {serve.port}: replaying the trace")
        served = await replay_on_serve(serve, trace)
    say(f"symoe serve: {served.loads} loads in {served.wall_s:.1f} s; first come, first served next")
    fcfs = await replay_fcfs(config, trace, experts_for_fcfs(trace, served, load_config(config), rng), args)
    say(f"first come, first served: {fcfs.loads} loads in {fcfs.wall_s:.1f} s")

    instant = write_config(folder, "instant.toml", args, 0.0, 0.0)
    mix = make_trace(args.rss_requests, args, weights, random.Random(args.seed + 1))
    with serving(instant, folder / "instant.events.jsonl", folder / "instant.log") as fast:
        model = max(weights, key=weights.get)
        say(f"overhead: {args.overhead_requests} requests to {model}, direct and through serve")
        kept = await overhead(fast, model, args.overhead_requests)
        fresh = await overhead(fast, model, args.overhead_requests, **NEW_CONNECTIONS)
        say(f"memory: {args.rss_requests} requests at {args.rss_in_flight} in flight")
        samples = await rss_run(fast, mix, args.rss_in_flight)

    print("command: " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, ROOT), *sys.argv]))
    print(f"\n{len(trace)} requests over {trace[-1].at:.1f} s (Poisson, {args.rate:g}/s; Zipf skew {args.skew:g}; "
          f"{ensemble} to the ensemble, k={args.k}, {args.samples} skill samples), {args.models} stand-in models, "
          f"start {args.start_delay:g} s, decode {args.decode_s:g} s; serve window_s {args.window_s:g}, max_wait_s {args.max_wait_s:g}, "
          f"max_windows {args.max_windows}\n")  # fmt: skip
    print("\n".join(table([served, fcfs], args.max_wait_s)))
    print()
    print("\n".join(verdicts(served, fcfs, args.max_wait_s)))
    print(f"- a load (start to ready) took {fcfs.load_s:.2f} s on average: {args.rate * fcfs.load_s:.1f} arrivals per load; "
          f"wall: symoe serve {served.wall_s:.1f} s, first come, first served {fcfs.wall_s:.1f} s")  # fmt: skip
    print(f"\noverhead, {args.overhead_requests} sequential requests to pool model {model} on an instant stand-in, "
          "alternately straight to its server and through symoe serve:\n")  # fmt: skip
    print("| connections | direct ms/request | through serve ms/request | serve's own ms/request |")
    print("| --- | ---: | ---: | ---: |")
    for name, (direct_ms, serve_ms) in (("kept alive (the openai client's default)", kept), ("a new one per request", fresh)):
        print(f"| {name} | {direct_ms:.2f} | {serve_ms:.2f} | {serve_ms - direct_ms:+.2f} |")
    print(f"\nserve's memory over {args.rss_requests} requests ({args.rss_in_flight} in flight, instant stand-ins, the trace's mix):\n")
    print("\n".join(rss_lines(samples)))
    errors = [o.error for o in served.outcomes + fcfs.outcomes if o.error]
    if errors:
        print(f"\n{len(errors)} failed requests; the first: {errors[0]}")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=240, help="requests in the trace")
    ap.add_argument("--rate", type=float, default=8.0, help="mean arrivals per second (Poisson)")
    ap.add_argument("--skew", type=float, default=1.2, help="Zipf exponent of model popularity")
    ap.add_argument("--ensemble-share", type=float, default=0.25, help="share of requests to the ensemble ('symoe')")
    ap.add_argument("--models", type=int, default=6, help="stand-in models in the pool")
    ap.add_argument("--k", type=int, default=2, help="experts per ensemble request")
    ap.add_argument("--samples", type=int, default=2, help="skill samples per ensemble request")
    ap.add_argument("--start-delay", type=float, default=0.5, help="seconds a stand-in takes to start (a model load)")
    ap.add_argument("--decode-s", type=float, default=0.1, help="seconds a stand-in takes per completion")
    ap.add_argument("--window-s", type=float, default=0.25, help="serve.window_s")
    ap.add_argument("--max-wait-s", type=float, default=5.0, help="serve.max_wait_s")
    ap.add_argument("--max-windows", type=int, default=4, help="serve.max_windows")
    ap.add_argument("--max-queue", type=int, default=256, help="serve.max_queue")
    ap.add_argument("--overhead-requests", type=int, default=200, help="sequential requests for the overhead line")
    ap.add_argument("--rss-requests", type=int, default=2000, help="requests of the memory run")
    ap.add_argument("--rss-in-flight", type=int, default=32, help="requests at once in the memory run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="write the configs, events and serve logs here (default: a temporary folder)")
    args = ap.parse_args()
    if args.models < 2 or args.requests < 1:
        ap.error("--models needs at least 2 and --requests at least 1")
    return args


def main() -> None:
    args = parse_args()
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            folder = args.keep
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="serve-trace-")))
        try:
            asyncio.run(run(args, folder))  # Ctrl-C cancels it: every finally runs first
        except KeyboardInterrupt:
            raise SystemExit(130) from None
        except asyncio.CancelledError:  # SIGTERM
            raise SystemExit(143) from None


if __name__ == "__main__":
    main()
