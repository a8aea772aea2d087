"""Soak: `symoe solve` on the embedded pool under random faults, and what survived them.

    python bench/soak.py [--questions 100] [--faults 12] [--seed 0] [--out soak-out]

It runs the real command line on N generated questions and, at random moments, injects
one of these faults until --faults have been injected:

- server-kill:  SIGKILL one of the model servers symoe started (symoe restarts it and
                resends only the unanswered requests);
- symoe-kill:   SIGKILL symoe itself (no cleanup can run), then start the same command again;
- symoe-term:   SIGTERM symoe (a graceful stop), then start the same command again.

After every fault it snapshots the answer cache and the answers file; at the end it reports:
questions finished, answers lost (a cached answer or a written record that later vanished
or changed: must be 0), duplicate records (must be 0), processes left (servers, launchers
or watchdogs still alive after symoe ended: must be 0), and answer calls repeated because
of the faults (sends beyond the first for the same cache key, from the cache's attempt
counts). It is a script, not a test: it takes minutes and prints a table.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
SERVER_MARKERS = ("llama-server", "llama_cpp.server", "watchdog.py", "launcher.py")


def make_questions(n: int, seed: int) -> list[dict]:
    """Short questions in the three answer formats, so that the run takes minutes, not hours."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        kind = i % 3
        if kind == 0:
            right = a + b
            opts = [right, right + 1, right - 2, right + 10]
            rng.shuffle(opts)
            letters = "ABCD"
            text = f"What is {a} + {b}? The options are: " + " ".join(f"({letters[j]}) {v}" for j, v in enumerate(opts))
            out.append({"id": f"s{i}", "question": text, "gold_answer": letters[opts.index(right)]})
        elif kind == 1:
            out.append({"id": f"s{i}", "question": f"Compute {a} * {b}.", "gold_answer": str(a * b), "answer_format": "math"})
        else:
            out.append({"id": f"s{i}", "question": f"Name the capital city of country number {i} in your memory, in one word.",
                        "answer_format": "free"})  # fmt: skip
    return out


def cache_state(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    if not path.exists():
        return {}, {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        rows = dict(db.execute("SELECT key, completion FROM answers"))
        tries = dict(db.execute("SELECT key, n FROM attempts"))
        return rows, tries
    except sqlite3.OperationalError:
        return {}, {}
    finally:
        db.close()


def servers_of(proc: psutil.Process) -> list[psutil.Process]:
    try:
        kids = proc.children(recursive=True)
    except psutil.Error:
        return []
    found = []
    for k in kids:
        try:
            cmd = " ".join(k.cmdline())
            if ("llama-server" in cmd or "llama_cpp.server" in cmd) and "launcher.py" not in cmd:
                found.append(k)
        except psutil.Error:
            pass
    return found


def leftovers(out_dir: Path, spawned: set[int]) -> list[str]:
    """Processes this soak's symoe runs started (their servers from the events files, and
    every descendant seen at a fault), with watchdogs and launchers of those servers, that
    are still alive. Other programs' processes on the machine do not count."""
    servers = set(spawned)
    for ev in out_dir.glob("events-*.jsonl"):
        for line in ev.read_text().splitlines():
            if '"server_start"' in line:
                servers.add(json.loads(line)["pid"])
    left = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        cmd = p.info["cmdline"] or []
        mine = p.info["pid"] in servers or (
            any(m in " ".join(cmd) for m in SERVER_MARKERS) and cmd and cmd[-1].isdigit() and int(cmd[-1]) in servers
        )
        if mine and p.info["status"] != psutil.STATUS_ZOMBIE:
            left.append(f"{p.info['pid']}: {' '.join(cmd)[:100]}")
    return left


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # also when it ends between the lookup and the status
        return False


def wait_gone(pids: list[int], within: float) -> list[int]:
    deadline = time.monotonic() + within
    while True:
        alive = [pid for pid in pids if _alive(pid)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


@dataclass
class Soak:
    args: argparse.Namespace
    rng: random.Random
    out_dir: Path
    began: float = field(default_factory=time.time)
    faults: list[dict] = field(default_factory=list)
    runs: int = 0
    exit_codes: list[int] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    left_after_fault: list[str] = field(default_factory=list)
    snapshots_rows: dict[str, str] = field(default_factory=dict)
    snapshot_text: bytes = b""
    spawned: set[int] = field(default_factory=set)

    @property
    def answers(self) -> Path:
        return self.out_dir / "answers.jsonl"

    @property
    def cache(self) -> Path:
        return self.out_dir / "answers.cache.sqlite"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "symoe_agents.cli", "solve", str(self.out_dir / "questions.jsonl"), "-o", str(self.answers),
               "--events", str(self.out_dir / f"events-{self.runs:02d}.jsonl")]  # fmt: skip
        if self.args.config:
            cmd += ["--config", self.args.config]
        return cmd

    def start(self) -> psutil.Popen:
        self.runs += 1
        log = open(self.out_dir / f"run-{self.runs:02d}.log", "w")  # noqa: SIM115
        p = psutil.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return p

    def snapshot(self) -> None:
        """Check that nothing seen earlier vanished or changed, then remember what is there now."""
        rows, _ = cache_state(self.cache)
        for key, body in self.snapshots_rows.items():
            if rows.get(key) != body:
                self.lost.append(f"cache answer {key[:12]} {'changed' if key in rows else 'vanished'}")
        self.snapshots_rows.update(rows)
        text = self.answers.read_bytes() if self.answers.exists() else b""
        if not text.startswith(self.snapshot_text):
            self.lost.append("the answers file lost or changed lines it had")
        self.snapshot_text = text

    def inject(self, proc: psutil.Popen) -> bool:
        """One random fault; False when none could be injected now (no server up)."""
        kind = self.rng.choices(["server-kill", "symoe-kill", "symoe-term"], weights=[4, 4, 2])[0]
        spawned = [p.pid for p in proc.children(recursive=True)]
        self.spawned.update(spawned)
        if kind == "server-kill":
            servers = servers_of(proc)
            if not servers:
                return False
            victim = self.rng.choice(servers)
            victim.send_signal(signal.SIGKILL)
            self.faults.append({"kind": kind, "t": round(time.time() - self.began, 1), "pid": victim.pid})
            return True
        proc.send_signal(signal.SIGKILL if kind == "symoe-kill" else signal.SIGTERM)
        code = int(proc.wait(timeout=120))
        self.exit_codes.append(code)
        left = wait_gone(spawned, within=5.0)
        self.left_after_fault += [f"after {kind}: pid {pid}" for pid in left]
        self.faults.append({"kind": kind, "t": round(time.time() - self.began, 1), "exit": code, "left": len(left)})
        return True

    def run(self) -> dict:
        questions = make_questions(self.args.questions, self.args.seed)
        (self.out_dir / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
        proc = self.start()
        while True:
            if len(self.faults) < self.args.faults:
                delay = self.rng.uniform(self.args.min_gap, self.args.max_gap)
                try:
                    code = proc.wait(timeout=delay)
                except psutil.TimeoutExpired:
                    if self.inject(proc):
                        print(f"[soak] fault {len(self.faults)}/{self.args.faults}: {self.faults[-1]}", flush=True)
                        self.snapshot()
                    if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                        continue
                    proc = self.start()
                    continue
            else:
                code = proc.wait()
            self.exit_codes.append(code)
            self.snapshot()
            done = len({json.loads(x)["id"] for x in self.answers.read_text().splitlines()}) if self.answers.exists() else 0
            if done >= len(questions) or self.runs > self.args.faults + 10:
                break
            proc = self.start()  # a run that ended early (for example a failed question) is resumed
        return self.report(questions)

    def report(self, questions: list[dict]) -> dict:
        lines = self.answers.read_text().splitlines() if self.answers.exists() else []
        ids = [json.loads(x)["id"] for x in lines]
        rows, tries = cache_state(self.cache)
        restarts = 0
        for ev in self.out_dir.glob("events-*.jsonl"):
            restarts += sum(1 for x in ev.read_text().splitlines() if '"server_restart"' in x)
        kinds = [f["kind"] for f in self.faults]
        left = self.left_after_fault + leftovers(self.out_dir, self.spawned)  # one scan of the process table
        return {
            "questions": len(questions),
            "finished": len(set(ids)),
            "answers_lost": len(self.lost),
            "duplicate_records": len(ids) - len(set(ids)),
            "processes_left": len(left),
            "faults": len(self.faults),
            "faults_by_kind": {k: kinds.count(k) for k in sorted(set(kinds))},
            "symoe_runs": self.runs,
            "server_restarts": restarts,
            "distinct_answers": len(rows),
            "answer_calls_sent": sum(tries.values()),
            "answer_calls_repeated": sum(tries.values()) - len(tries),
            "wall_s": round(time.time() - self.began, 1),
            "lost_detail": self.lost[:20],
            "left_detail": left[:20],
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=100)
    ap.add_argument("--faults", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-gap", type=float, default=15.0, help="seconds between faults, at least")
    ap.add_argument("--max-gap", type=float, default=70.0, help="seconds between faults, at most")
    ap.add_argument("--config", help="a TOML config instead of the built-in embedded pool")
    ap.add_argument("--out", default="soak-out", help="folder for questions, answers, cache, events and logs (emptied first)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for f in out.iterdir():
        if f.is_file():
            f.unlink()
    soak = Soak(args, random.Random(args.seed), out)
    r = soak.run()
    (out / "soak.json").write_text(json.dumps({**r, "faults_detail": soak.faults}, indent=2))
    print()
    print(f"soak: {r['questions']} questions, {r['faults']} faults {r['faults_by_kind']}, {r['symoe_runs']} symoe runs, {r['wall_s']} s")
    rows = [
        ("questions finished", f"{r['finished']} / {r['questions']}"),
        ("answers lost", r["answers_lost"]),
        ("duplicate records", r["duplicate_records"]),
        ("processes left", r["processes_left"]),
        ("server restarts (by symoe)", r["server_restarts"]),
        ("answer calls sent", f"{r['answer_calls_sent']} for {r['distinct_answers']} distinct answers"),
        ("answer calls repeated", r["answer_calls_repeated"]),
    ]
    for name, value in rows:
        print(f"  {name:<28} {value}")
    for d in r["lost_detail"] + r["left_detail"]:
        print(f"  ! {d}")
    ok = r["answers_lost"] == 0 and r["duplicate_records"] == 0 and r["processes_left"] == 0 and r["finished"] == r["questions"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
