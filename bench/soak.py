"""Soak: `symoe solve` on the embedded pool under random faults, and what survived them.

    python bench/soak.py [--questions 100] [--faults 12] [--seed 0] [--out soak-out]
                         [--kinds server-kill,symoe-kill,symoe-term,second-run,disk-full]
                         [--disk-mb 64] [--no-disk-full]

It runs the real command line on N generated questions and, at random moments, injects
one of these faults until --faults have been injected (the kinds come up in a shuffled
turn, so that a short run still gets every kind of --kinds):

- server-kill:  SIGKILL one of the model servers symoe started (symoe restarts it and
                resends only the unanswered requests);
- symoe-kill:   SIGKILL symoe itself (no cleanup can run), then start the same command again;
- symoe-term:   SIGTERM symoe (a graceful stop), then start the same command again;
- second-run:   start the same command a second time while symoe runs, on the same answers
                file and cache. It must be refused at once (exit 2, naming the first run's
                pid) and start no server; the first run goes on undisturbed;
- disk-full:    fill the disk that holds the answers file, the cache and the run's scratch
                store (a small tmpfs the soak mounts, --disk-mb; it needs root). symoe must
                stop by itself (exit 2 with one line saying what failed, never a traceback)
                or, if only the cache failed, go on and save the rows it could not write to
                a spill file (in TMPDIR, a folder of --out that is not on the tmpfs). Then
                the soak frees the disk and starts the same command again.

After every fault it snapshots the answer cache (with the rows saved in spill files) and
the answers file; at the end it reports: questions finished, answers lost (a cached answer
or a written record that later vanished or changed: must be 0), duplicate records (must be
0), processes left (servers, launchers or watchdogs still alive after symoe ended: must be
0), tracebacks in symoe's output (must be 0), the second runs' refusals and times, the
disk-full outcomes, and answer calls repeated because of the faults (sends beyond the first
for the same cache key, from the cache's attempt counts). It is a script, not a test: it
takes minutes and prints a table.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
SERVER_MARKERS = ("llama-server", "llama_cpp.server", "watchdog.py", "launcher.py")
KINDS = ("server-kill", "symoe-kill", "symoe-term", "second-run", "disk-full")


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


def spill_state(spills: list[Path]) -> tuple[dict[str, str], Counter]:
    """Answers and attempts a run could not write to the cache and saved in a spill file
    (symoe_agents/cache.py: JSON lines ["answer", [key, model, role, question_id, sample,
    completion, stored_at]] or ["attempt", [key]]). The next run writes them into the cache,
    so an answer there is kept, not lost."""
    rows: dict[str, str] = {}
    tries: Counter = Counter()
    for path in spills:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:  # written into the cache and removed meanwhile
            continue
        for line in lines:
            try:
                kind, row = json.loads(line)
            except (ValueError, TypeError):
                continue
            if kind == "answer" and len(row) == 7:
                rows.setdefault(row[0], row[5])
            elif kind == "attempt" and len(row) == 1:
                tries[row[0]] += 1
    return rows, tries


def cache_state(path: Path, spills: list[Path] = ()) -> tuple[dict[str, str], dict[str, int]] | None:
    """Every answer kept (in the cache or a spill file) and the send count per key; None
    when the cache cannot be read now (not the same as empty: it must not read as a loss)."""
    # the spill first: the next run writes its rows into the cache, then removes it; read
    # in this order, a row is found in at least one of the two
    spilled, spilled_tries = spill_state([p for p in spills if p.exists()])
    if not path.exists():
        return spilled, dict(spilled_tries)
    for _ in range(5):
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            rows = dict(db.execute("SELECT key, completion FROM answers"))
            tries = Counter(dict(db.execute("SELECT key, n FROM attempts")))
            break
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # created, its tables not yet
                rows, tries = {}, Counter()
                break
            time.sleep(1.0)
        finally:
            db.close()
    else:
        return None
    for key, body in spilled.items():
        rows.setdefault(key, body)
    return rows, dict(tries + spilled_tries)


def records(path: Path) -> tuple[list[str], int]:
    """The ids of the answers file's complete records, and how many complete lines are not
    a record. A last line without its newline is a write cut short (a full disk, a kill):
    not a record, and the next run drops it."""
    if not path.exists():
        return [], 0
    text = path.read_bytes()
    ids, damaged = [], 0
    for line in text[: text.rfind(b"\n") + 1].splitlines():
        try:
            ids.append(json.loads(line)["id"])
        except (ValueError, TypeError, KeyError):
            damaged += 1
    return ids, damaged


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


def children_of(proc: psutil.Process) -> list[int]:
    try:
        return [p.pid for p in proc.children(recursive=True)]
    except psutil.Error:  # it ended
        return []


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


def fill(path: Path) -> int:
    """Write zeros to ``path`` until its disk is full; the bytes written. Unbuffered and in
    ever smaller blocks, so that no byte a write could still take is left free."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            block = bytes(size)
            while True:
                try:
                    n = f.write(block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                if not n:
                    break
                written += n
    return written


def error_line(text: str) -> str:
    """symoe's last `error:` line (what it said it stopped on), else its last line."""
    lines = [x for x in text.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error:")]
    return (errors or lines or [""])[-1][:300]


@dataclass
class Soak:
    args: argparse.Namespace
    rng: random.Random
    out_dir: Path
    data_dir: Path  # the answers file and the cache: the tmpfs when disk-full is among the kinds
    began: float = field(default_factory=time.time)
    faults: list[dict] = field(default_factory=list)
    runs: int = 0
    seconds: int = 0  # second runs started
    exit_codes: list[int] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    left_after_fault: list[str] = field(default_factory=list)
    snapshots_rows: dict[str, str] = field(default_factory=dict)
    snapshot_text: bytes = b""
    spawned: set[int] = field(default_factory=set)
    turn: list[str] = field(default_factory=list)

    @property
    def answers(self) -> Path:
        return self.data_dir / "answers.jsonl"

    @property
    def cache(self) -> Path:
        return self.data_dir / "answers.cache.sqlite"

    @property
    def tmp_dir(self) -> Path:
        """symoe's TMPDIR: off the tmpfs, so that a spill has somewhere to go when it is full."""
        return self.out_dir / "tmp"

    @property
    def ballast(self) -> Path:
        return self.data_dir / "ballast"

    def spills(self) -> list[Path]:
        """The cache's spill files, where symoe looks for them (its TMPDIR is this soak's)."""
        import tempfile

        from symoe_agents.cache import spill_files

        tempfile.tempdir = str(self.tmp_dir)
        return spill_files(self.cache)

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "symoe_agents.cli", "solve", str(self.out_dir / "questions.jsonl"), "-o", str(self.answers),
               "--events", str(self.out_dir / f"events-{self.runs:02d}.jsonl")]  # fmt: skip
        if self.args.config:
            cmd += ["--config", self.args.config]
        return cmd

    def env(self) -> dict[str, str]:
        return {**os.environ, "TMPDIR": str(self.tmp_dir)}

    def start(self) -> psutil.Popen:
        self.runs += 1
        log = open(self.out_dir / f"run-{self.runs:02d}.log", "w")  # noqa: SIM115
        p = psutil.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env())
        log.close()
        return p

    def snapshot(self) -> None:
        """Check that nothing seen earlier vanished or changed, then remember what is there now."""
        state = cache_state(self.cache, self.spills())
        if state is None:
            self.notes.append(f"t={time.time() - self.began:.0f} s: the cache could not be read; this snapshot skipped it")
        else:
            rows = state[0]
            for key, body in self.snapshots_rows.items():
                if rows.get(key) != body:
                    self.lost.append(f"cache answer {key[:12]} {'changed' if key in rows else 'vanished'}")
            self.snapshots_rows.update(rows)
        text = self.answers.read_bytes() if self.answers.exists() else b""
        text = text[: text.rfind(b"\n") + 1]  # a line cut short by a full disk or a kill is no record yet
        if not text.startswith(self.snapshot_text):
            self.lost.append("the answers file lost or changed lines it had")
        self.snapshot_text = text

    def next_kind(self) -> str:
        if not self.turn:
            self.turn = list(self.args.kinds)
            self.rng.shuffle(self.turn)
        return self.turn.pop()

    def inject(self, proc: psutil.Popen) -> bool:
        """One fault; False when none could be injected now (no server up, no lock taken yet)."""
        kind = self.next_kind()
        spawned = children_of(proc)
        self.spawned.update(spawned)
        t = round(time.time() - self.began, 1)
        if kind == "server-kill":
            done = self.server_kill(proc, t)
        elif kind == "second-run":
            done = self.second_run(proc, t)
        elif kind == "disk-full":
            done = self.disk_full(proc, spawned, t)
        else:
            done = self.stop_symoe(proc, kind, spawned, t)
        if not done:
            self.turn.insert(0, kind)  # its turn comes again, after the others'
        return done

    def server_kill(self, proc: psutil.Popen, t: float) -> bool:
        servers = servers_of(proc)
        if not servers:
            return False
        victim = self.rng.choice(servers)
        victim.send_signal(signal.SIGKILL)
        self.faults.append({"kind": "server-kill", "t": t, "pid": victim.pid})
        return True

    def stop_symoe(self, proc: psutil.Popen, kind: str, spawned: list[int], t: float) -> bool:
        proc.send_signal(signal.SIGKILL if kind == "symoe-kill" else signal.SIGTERM)
        code = int(proc.wait(timeout=120))
        self.exit_codes.append(code)
        left = wait_gone(spawned, within=5.0)
        self.left_after_fault += [f"after {kind}: pid {pid}" for pid in left]
        self.faults.append({"kind": kind, "t": t, "exit": code, "left": len(left)})
        return True

    def lock_holder(self) -> int | None:
        """The pid in the run lock beside the answers file (symoe_agents/run_lock.py writes
        "PID command" there once it holds the lock)."""
        try:
            pid = (self.answers.parent / f".{self.answers.name}.lock").read_text().split(" ", 1)[0]
        except OSError:
            return None
        return int(pid) if pid.isdigit() else None

    def second_run(self, proc: psutil.Popen, t: float) -> bool:
        """The same command again while ``proc`` runs: refused at once, naming ``proc``."""
        if self.lock_holder() != proc.pid:
            return False  # the first has not taken its lock yet: the second would win it, and the first be refused
        self.seconds += 1
        log_path = self.out_dir / f"second-{self.seconds:02d}.log"
        began = time.monotonic()
        with open(log_path, "w") as log:
            # the identical command line, its events file included: a refused run writes nothing there
            second = psutil.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env())
        servers: set[int] = set()
        code = None
        while code is None and time.monotonic() - began < 60:
            servers.update(p.pid for p in servers_of(second))
            self.spawned.update(children_of(second))  # whatever it started counts in processes left
            try:
                code = int(second.wait(timeout=0.02))
            except psutil.TimeoutExpired:
                pass
        ran = code is None
        if ran:  # not refused: it is doing the whole batch a second time
            second.send_signal(signal.SIGTERM)
            code = int(second.wait(timeout=120))
        seconds = round(time.monotonic() - began, 2)
        text = log_path.read_text(errors="replace")
        refused = code == 2 and f"is in use by process {proc.pid} " in text
        first_on = proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        self.faults.append({"kind": "second-run", "t": t, "exit": code, "refused": refused, "s": seconds,
                            "servers": len(servers), "killed_after_60s": ran, "first_still_running": first_on,
                            "traceback": "Traceback" in text, "message": error_line(text)})  # fmt: skip
        return True

    def disk_full(self, proc: psutil.Popen, spawned: list[int], t: float) -> bool:
        """Fill the tmpfs under the answers file and the cache; symoe must stop by itself
        (or go on, keeping what the cache could not take in a spill file). Then free it."""
        began = time.monotonic()
        ballast = fill(self.ballast)
        not_stopped = False
        try:
            code = int(proc.wait(timeout=self.args.disk_wait))
        except psutil.TimeoutExpired:  # a finding: it went on answering what it could not keep (or hung)
            not_stopped = True
            proc.send_signal(signal.SIGTERM)
            try:
                code = int(proc.wait(timeout=120))
            except psutil.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                code = int(proc.wait(timeout=30))
        seconds = round(time.monotonic() - began, 1)
        self.ballast.unlink()  # before the snapshot: it reads the cache as the next run will find it
        self.exit_codes.append(code)
        left = wait_gone(spawned, within=5.0)
        self.left_after_fault += [f"after disk-full: pid {pid}" for pid in left]
        text = (self.out_dir / f"run-{self.runs:02d}.log").read_text(errors="replace")
        spilled = [x[:300] for x in text.splitlines() if "could not be written to the answer cache" in x]
        self.faults.append({"kind": "disk-full", "t": t, "exit": code, "s": seconds, "ballast_mb": round(ballast / 2**20, 1),
                            "not_stopped": not_stopped, "left": len(left), "traceback": "Traceback" in text,
                            "message": error_line(text), "spill": spilled})  # fmt: skip
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
            done = len(set(records(self.answers)[0]))
            if done >= len(questions) or self.runs > self.args.faults + 10:
                break
            proc = self.start()  # a run that ended early (for example a failed question) is resumed
        return self.report(questions)

    def report(self, questions: list[dict]) -> dict:
        ids, damaged = records(self.answers)
        rows, tries = cache_state(self.cache, self.spills()) or ({}, {})
        restarts = 0
        for ev in self.out_dir.glob("events-*.jsonl"):
            restarts += sum(1 for x in ev.read_text().splitlines() if '"server_restart"' in x)
        kinds = [f["kind"] for f in self.faults]
        left = self.left_after_fault + leftovers(self.out_dir, self.spawned)  # one scan of the process table
        logs = sorted(self.out_dir.glob("run-*.log")) + sorted(self.out_dir.glob("second-*.log"))
        tracebacks = [p.name for p in logs if "Traceback" in p.read_text(errors="replace")]
        # a run whose unwritten rows could be saved nowhere (or a SIGKILL) loses attempt rows:
        # calls repeated is then a lower bound
        unsaved = [p.name for p in logs if "nor saved beside it" in p.read_text(errors="replace")]
        return {
            "questions": len(questions),
            "finished": len(set(ids)),
            "answers_lost": len(self.lost),
            "duplicate_records": len(ids) - len(set(ids)),
            "damaged_records": damaged,
            "processes_left": len(left),
            "tracebacks": len(tracebacks),
            "faults": len(self.faults),
            "faults_by_kind": {k: kinds.count(k) for k in sorted(set(kinds))},
            "symoe_runs": self.runs,
            "server_restarts": restarts,
            "distinct_answers": len(rows),
            "answer_calls_sent": sum(tries.values()),
            "answer_calls_repeated": sum(tries.values()) - len(tries),
            "attempt_rows_unsaved_in": unsaved,
            "spills_left": [str(p) for p in self.spills() if p.exists()],
            "second_runs": [f for f in self.faults if f["kind"] == "second-run"],
            "disk_fulls": [f for f in self.faults if f["kind"] == "disk-full"],
            "wall_s": round(time.time() - self.began, 1),
            "lost_detail": self.lost[:20],
            "left_detail": left[:20],
            "traceback_in": tracebacks,
            "notes": self.notes,
        }


def mount_tmpfs(folder: Path, mb: int) -> str | None:
    """Mount a ``mb`` MB tmpfs on ``folder``; why not, or None when mounted."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(folder)], capture_output=True, text=True)
    except OSError as exc:
        return str(exc)
    return None if r.returncode == 0 else (r.stderr.strip() or f"mount exited {r.returncode}")


def keep_and_unmount(folder: Path, copy: Path) -> None:
    """Copy the answers and the cache off the tmpfs (they go with it), then unmount it; lazily,
    so that a process still holding a file there cannot keep it mounted."""
    copy.mkdir(exist_ok=True)
    for f in folder.iterdir():
        if f.is_file() and f.name != "ballast":
            shutil.copy2(f, copy / f.name)
    subprocess.run(["umount", "-l", str(folder)], check=False)


def empty(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.is_file():
            f.unlink()


def print_report(r: dict, disk_wait: float) -> bool:
    """The table, then every second run, every disk-full and every finding; True when all is as it must be."""
    print()
    print(f"soak: {r['questions']} questions, {r['faults']} faults {r['faults_by_kind']}, {r['symoe_runs']} symoe runs, {r['wall_s']} s")
    seconds = r["second_runs"]
    fulls = r["disk_fulls"]
    repeated = str(r["answer_calls_repeated"])
    if r["attempt_rows_unsaved_in"]:
        repeated += f" (at least: attempt rows could not be saved in {', '.join(r['attempt_rows_unsaved_in'])})"
    rows = [
        ("questions finished", f"{r['finished']} / {r['questions']}"),
        ("answers lost", r["answers_lost"]),
        ("duplicate records", r["duplicate_records"]),
        ("damaged records", r["damaged_records"]),
        ("processes left", r["processes_left"]),
        ("tracebacks in symoe output", r["tracebacks"]),
        ("server restarts (by symoe)", r["server_restarts"]),
        ("answer calls sent", f"{r['answer_calls_sent']} for {r['distinct_answers']} distinct answers"),
        ("answer calls repeated", repeated),
    ]
    if seconds:
        times = [f["s"] for f in seconds]
        rows.append(("second runs refused", f"{sum(f['refused'] for f in seconds)} / {len(seconds)}, "
                     f"in {min(times)}-{max(times)} s (median {statistics.median(times):.2f}), "
                     f"servers they started: {sum(f['servers'] for f in seconds)}"))  # fmt: skip
    if fulls:
        rows.append(("disk-full exits", ", ".join(f"{f['exit']} after {f['s']} s" + (f" (not stopped in {disk_wait:g} s: SIGTERM)" if f["not_stopped"] else "") for f in fulls)))
    for name, value in rows:
        print(f"  {name:<28} {value}")
    for f in seconds:
        print(f"  second run t={f['t']}: exit {f['exit']} in {f['s']} s, refused={f['refused']}, servers={f['servers']}: {f['message']}")
    for f in fulls:
        print(f"  disk-full t={f['t']}: exit {f['exit']} in {f['s']} s{', NOT STOPPED BY ITSELF' if f['not_stopped'] else ''}, traceback={f['traceback']}: {f['message']}")
        for s in f["spill"]:
            print(f"      {s}")
    for d in r["lost_detail"] + r["left_detail"] + [f"traceback in {x}" for x in r["traceback_in"]] + r["notes"]:
        print(f"  ! {d}")
    ok = (
        r["answers_lost"] == 0 and r["duplicate_records"] == 0 and r["processes_left"] == 0 and r["finished"] == r["questions"]
        and r["damaged_records"] == 0 and r["tracebacks"] == 0 and all(f["refused"] and not f["servers"] for f in seconds) and not any(f["not_stopped"] for f in fulls)
    )  # fmt: skip
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=100)
    ap.add_argument("--faults", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-gap", type=float, default=15.0, help="seconds between faults, at least")
    ap.add_argument("--max-gap", type=float, default=70.0, help="seconds between faults, at most")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"the faults to inject, comma-separated (default: all of {', '.join(KINDS)})")
    ap.add_argument("--disk-mb", type=int, default=64, help="size of the tmpfs under the answers file and the cache (disk-full)")
    ap.add_argument("--disk-wait", type=float, default=120.0, help="seconds symoe has to stop by itself on a full disk")
    ap.add_argument("--no-disk-full", action="store_true", help="leave out disk-full (it mounts a tmpfs: needs root)")
    ap.add_argument("--config", help="a TOML config instead of the built-in embedded pool")
    ap.add_argument("--out", default="soak-out", help="folder for questions, answers, cache, events and logs (emptied first)")
    args = ap.parse_args()
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in args.kinds if k not in KINDS]
    if unknown or not args.kinds:
        ap.error(f"--kinds: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(KINDS)}")
    if args.no_disk_full:
        args.kinds = [k for k in args.kinds if k != "disk-full"]
        if not args.kinds:
            ap.error("--no-disk-full left no kind of fault")
    out = Path(args.out).resolve()
    empty(out)
    empty(out / "tmp")  # a spill left by an earlier soak would be written into this soak's cache
    shutil.rmtree(out / "disk-copy", ignore_errors=True)
    data_dir = out
    if "disk-full" in args.kinds:
        data_dir = out / "disk"
        why = mount_tmpfs(data_dir, args.disk_mb)
        if why:
            print(f"soak: cannot mount a {args.disk_mb} MB tmpfs on {data_dir} for disk-full: {why}; "
                  "run as root, or pass --no-disk-full", file=sys.stderr)  # fmt: skip
            sys.exit(2)
    soak = Soak(args, random.Random(args.seed), out, data_dir)
    try:
        r = soak.run()
    finally:
        if data_dir != out:
            keep_and_unmount(data_dir, out / "disk-copy")
    (out / "soak.json").write_text(json.dumps({**r, "faults_detail": soak.faults}, indent=2))
    sys.exit(0 if print_report(r, args.disk_wait) else 1)


if __name__ == "__main__":
    main()
