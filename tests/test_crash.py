"""symoe SIGKILLed mid-run, on real llama.cpp servers: its servers go too, and the re-run
finishes without duplicates, without changing earlier answers, without asking again."""

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from conftest import EXAMPLES, pids_alive, read_jsonl, small_pool_toml, symoe_cmd, wait_gone
from symoe_agents.cache import AnswerCache

pytestmark = pytest.mark.servers

QUESTIONS = EXAMPLES / "questions.jsonl"


def cache_rows(path: Path, strict: bool = True) -> dict[str, dict]:
    """The cache's answers. ``strict=False`` only while polling a live run, where the file
    or its table may not exist yet; after a kill every read must succeed."""
    if not path.exists() and not strict:
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return {k: {"role": r, "completion": json.loads(c)} for k, r, c in db.execute("SELECT key, role, completion FROM answers")}
    except sqlite3.OperationalError:  # not created yet
        if strict:
            raise
        return {}
    finally:
        db.close()


def start(args, log: Path) -> subprocess.Popen:
    with open(log, "w") as f:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([*symoe_cmd(), *map(str, args)], stdout=subprocess.DEVNULL, stderr=f)


def kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 240) -> list[int]:
    """SIGKILL ``proc`` once ``ready()``; return the pids of every process it had started."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"symoe ended (code {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    spawned = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    return spawned


def test_sigkill_mid_run_takes_the_servers_and_the_rerun_resumes(tmp_path):
    config = small_pool_toml(tmp_path)
    out, cache = tmp_path / "answers.jsonl", tmp_path / "answers.cache.sqlite"
    args = ["solve", QUESTIONS, "-o", out, "--config", config, "--events", tmp_path / "events.jsonl"]

    # 1. killed in the middle of the expert phase: some expert answers are cached, no question is finished
    run1 = start(args, tmp_path / "run1.log")
    spawned = kill_when(
        run1, lambda: sum(r["role"] == "expert" for r in cache_rows(cache, strict=False).values()) >= 2, "two expert answers"
    )
    assert spawned, "symoe had no server running when it was killed"
    assert wait_gone(spawned) == [], "symoe's servers or watchdogs outlived it"
    after1 = cache_rows(cache)
    assert sum(r["role"] == "expert" for r in after1.values()) >= 2
    assert not out.exists() or out.read_text() == ""

    # 2. killed again once the first questions are written
    run2 = start(args, tmp_path / "run2.log")
    spawned = kill_when(run2, lambda: out.exists() and out.read_text().count("\n") >= 1, "a finished question")
    assert wait_gone(spawned) == []
    written2 = out.read_bytes()
    after2 = cache_rows(cache)
    assert len(after2) >= len(after1)

    # 3. runs to the end
    run3 = subprocess.run([*symoe_cmd(), *map(str, args)], capture_output=True, text=True, timeout=600)
    assert run3.returncode == 0, run3.stderr[-3000:]
    assert "resuming" in run3.stderr

    records = read_jsonl(out)
    ids = [r["id"] for r in records]
    assert all(r["errors"] == [] for r in records)
    assert sorted(ids) == sorted(q["id"] for q in read_jsonl(QUESTIONS))  # each question exactly once
    assert out.read_bytes().startswith(written2)  # finished questions were not touched
    final = cache_rows(cache)
    for snapshot in (after1, after2):  # earlier answers unchanged, and still what the records say
        for key, row in snapshot.items():
            assert final[key] == row
    texts = {s for r in records for s in r["skill_samples"]}
    texts |= {a["text"] for r in records for a in r["expert_answers"]}
    texts |= {r["aggregator_response"] for r in records}
    assert {row["completion"]["text"] for row in after2.values()} <= texts
    # answers cached before a kill were never requested again
    with AnswerCache(cache) as answers:  # every run has ended: nothing else holds the file now
        sent = answers.attempt_counts()
    assert all(sent[key] == 1 for key in after1), {k: sent[k] for k in after1 if sent[k] != 1}
    reused = [a for r in records for a in r["expert_answers"] if a["cached"]]
    assert len(reused) >= 2
    events = read_jsonl(tmp_path / "events.jsonl")
    assert pids_alive([e["pid"] for e in events if e["kind"] == "server_start"]) == []
