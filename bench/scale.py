"""The engine at scale: `symoe solve` over large batches, memory, speed, loop lag and Ctrl-C.

    python bench/scale.py [--questions 2000,10000,100000] [--answer-bytes 1024] [--k 3]
                          [--interrupts 3] [--no-cache]

Every model is a hosted endpoint served by a STAND-IN (bench/instant_server.py, its own
process) that answers at once with about --answer-bytes of text, so what is measured is
symoe itself: the command runs as a child process and its peak RSS is the kernel's
(``wait4``'s ``ru_maxrss``), its wall time is from spawn to exit, and calls/s is the calls
its events file reports over that wall time. Four experts, k experts per question, one
skill sample per question (``--skill-samples``), so a question costs 2 + k calls.

Per size: questions, peak RSS, wall, calls/s, and the event loop's lag (p50/p99/max of a
probe that sleeps 10 ms at a time, from the ``run_end`` event). Then --interrupts runs of
the largest size up to 10,000 questions get a SIGINT spread over the measured wall; the
time from the signal to the process's exit is printed (goal: under 1 s). Goals: peak RSS
under 1 GiB at 100,000 questions, and under 2 KB of extra peak RSS per extra question
between 10,000 and 100,000.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPERTS = ["e1", "e2", "e3", "e4"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_inputs(folder: Path, n: int) -> Path:
    path = folder / f"q{n}.jsonl"
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"q{i}", "question": f"Question {i}: which of the options is the sum of {i} and {i + 7}? "
                                f"The options are: (A) {2 * i + 7} (B) {2 * i + 8} (C) {2 * i + 6} (D) {i}"}) + "\n")  # fmt: skip
    return path


def write_config(folder: Path, base_url: str, k: int, skill_samples: int, in_flight: int | None) -> Path:
    models = "".join(f'[models.{m}]\nbackend = "openai"\nbase_url = "{base_url}"\nmodel = "{m}"\n\n' for m in [*EXPERTS, "skiller", "judge"])
    path = folder / "scale.toml"
    path.write_text(
        f"k = {k}\n\n{models}"
        f'[roles]\nskill_inferencer = "skiller"\nexperts = {json.dumps(EXPERTS)}\naggregator = "judge"\n\n'
        f"[sampling.skill_inferencer]\nsamples = {skill_samples}\n\n"
        + (f"[concurrency]\nmax_in_flight = {in_flight}\n" if in_flight else "")
    )
    return path


def solve(inputs: Path, config: Path, folder: Path, no_cache: bool, interrupt_after: float | None = None) -> dict:
    """Run `symoe solve` once; its peak RSS, wall, exit code and events."""
    out, events = folder / f"{inputs.stem}.answers.jsonl", folder / f"{inputs.stem}.events.jsonl"
    for p in (out, events, out.with_suffix(".cache.sqlite")):
        p.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "symoe_agents.cli", "solve", str(inputs), "-o", str(out), "--config", str(config),
           "--events", str(events), "--fresh", *(["--no-cache"] if no_cache else [])]  # fmt: skip
    began = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    signalled = None
    if interrupt_after is not None:
        try:
            proc.wait(timeout=interrupt_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            signalled = time.monotonic()
    _, status, usage = os.wait4(proc.pid, 0)
    ended = time.monotonic()
    stderr = proc.stderr.read() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    evs = [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []
    return {
        "rc": proc.returncode, "wall": ended - began, "peak_kib": usage.ru_maxrss, "events": evs, "stderr": stderr,
        "answered": sum(1 for _ in out.open()) if out.exists() else 0,
        "to_exit": None if signalled is None else ended - signalled,
    }  # fmt: skip


def lag(events: list[dict]) -> str:
    end = [e for e in events if e["kind"] == "run_end"]
    probe = end[-1].get("detail", {}).get("loop_lag_ms") if end else None
    return f"{probe['p50']:.0f} / {probe['p99']:.0f} / {probe['max']:.0f}" if probe else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", default="2000,10000,100000", help="batch sizes, comma-separated")
    ap.add_argument("--answer-bytes", type=int, default=1024)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--skill-samples", type=int, default=1)
    ap.add_argument("--in-flight", type=int, default=None, help="sequences in flight per group (default: the config's, 8 for a hosted API)")
    ap.add_argument("--interrupts", type=int, default=3, help="SIGINT runs (0: none)")
    ap.add_argument("--no-cache", action="store_true", help="run with --no-cache (the run-scoped store holds the answers)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.questions.split(",")]

    port = free_port()
    server = subprocess.Popen([sys.executable, str(HERE / "instant_server.py"), "--port", str(port), "--answer-bytes", str(args.answer_bytes)])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            config = write_config(folder, f"http://127.0.0.1:{port}/v1", args.k, args.skill_samples, args.in_flight)
            print(f"symoe solve through a stand-in hosted endpoint: {args.answer_bytes}-byte answers, k={args.k}, "
                  f"{args.skill_samples} skill sample(s), {args.in_flight or 'default (8)'} in flight, cache {'off' if args.no_cache else 'on'}")  # fmt: skip
            print(f"{'questions':>10} {'peak RSS':>10} {'wall':>9} {'calls/s':>8} {'answered':>9}  loop lag p50/p99/max ms")
            rows = {}
            for n in sizes:
                inputs = write_inputs(folder, n)
                r = solve(inputs, config, folder, args.no_cache)
                calls = sum(int(e.get("detail", {}).get("calls", 0)) for e in r["events"] if e["kind"] == "group_end")
                rows[n] = r
                print(f"{n:>10} {r['peak_kib'] / 1024:>7.0f} MB {r['wall']:>7.1f} s {calls / r['wall']:>8.0f} {r['answered']:>9}  {lag(r['events'])}", flush=True)
                if r["rc"] != 0:
                    print(f"  exit {r['rc']}: {r['stderr'][-2000:]}")
            big = [n for n in sizes if n >= 10_000]
            if len(big) >= 2:
                lo, hi = big[0], big[-1]
                per = (rows[hi]["peak_kib"] - rows[lo]["peak_kib"]) * 1024 / (hi - lo)
                print(f"extra peak RSS per extra question, {lo} -> {hi}: {per:.0f} bytes (goal: under 2048)")
            if args.interrupts:
                n = max([s for s in sizes if s <= 10_000] or [min(sizes)])
                inputs = folder / f"q{n}.jsonl"
                wall = rows[n]["wall"]
                print(f"Ctrl-C during a {n}-question run (goal: exit within 1 s of the signal):")
                for j in range(args.interrupts):
                    at = wall * (j + 1) / (args.interrupts + 1)
                    r = solve(inputs, config, folder, args.no_cache, interrupt_after=at)
                    took = "finished before the signal" if r["to_exit"] is None else f"exit {r['rc']} after {r['to_exit'] * 1000:.0f} ms"
                    print(f"  SIGINT at {at:6.1f} s: {took}, {r['answered']} answers kept", flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
