"""Faults and inputs a new user runs into (issue 13): two runs on one output, options that
name the same file, outputs that cannot be written, a disk that fills up mid-run, a cache
another process keeps locked, a reader of stderr that goes away.

The models are a STAND-IN hosted API (tests/standins/openai_standin.py) in the test's event
loop, so that the test decides when a request is answered (a gate) and can fill the disk
at the moment a given request arrives; the command is the real ``symoe`` in a subprocess.
Full disks are real: a 2 MiB tmpfs filled with a ballast file (conftest ``small_disk``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import fill_disk, read_jsonl, symoe_async, symoe_cmd
from standins.openai_standin import ScriptedAPI
from symoe_agents import SymbolicMoE, run_lock
from symoe_agents.cache import AnswerCache, spill_files
from symoe_agents.cli import app
from symoe_agents.config import parse_config
from symoe_agents.errors import CacheError
from symoe_agents.events import EventLog
from symoe_agents.records import Question

N = 8  # questions per run


class GatedAPI(ScriptedAPI):
    """Answers only while ``gate`` is open; ``on_request(body)`` sees each request first."""

    def __init__(self, text="The answer is (B)"):
        super().__init__([], text=self._reply)
        self.gate = asyncio.Event()
        self.connections = 0  # requests that reached the server, answered or still held at the gate
        self.gate.set()
        self._text = text
        self.on_request = None

    def _reply(self, body: dict):
        if self.on_request is not None:
            self.on_request(body)
        return self._text

    async def _handle(self, reader, writer) -> None:
        self.connections += 1
        await self.gate.wait()
        await super()._handle(reader, writer)


def hosted_toml(tmp_path: Path, api: ScriptedAPI) -> Path:
    """A pool of four models behind the stand-in: skills, two experts, an aggregator."""
    models = "".join(f'[models.{m}]\nbackend = "openai"\nbase_url = "{api.base_url}"\nmodel = "{m}"\n' for m in ("sk", "e1", "e2", "agg"))
    path = tmp_path / "hosted.toml"
    path.write_text(f'k = 2\n{models}[roles]\nskill_inferencer = "sk"\nexperts = ["e1", "e2"]\naggregator = "agg"\n'
                    "[sampling.skill_inferencer]\nsamples = 1\n[concurrency]\nmax_in_flight = 2\n")  # fmt: skip
    return path


def questions_file(tmp_path: Path, n: int = N) -> Path:
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Question {i}: which? (A) one (B) two"}) + "\n" for i in range(n)))
    return path


def attempts(cache: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(cache)) as db:
        return dict(db.execute("SELECT key, n FROM attempts"))


def no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]


# -- part 1: one run per output ---------------------------------------------------------


async def test_a_second_solve_on_the_same_output_is_refused_at_once_naming_the_first(tmp_path):
    async with GatedAPI() as api:
        cfg, q, out = hosted_toml(tmp_path, api), questions_file(tmp_path), tmp_path / "a.jsonl"
        api.gate.clear()  # the first run waits for its answers while the second starts
        first = await asyncio.create_subprocess_exec(*symoe_cmd(), "solve", str(q), "--config", str(cfg), "-o", str(out),
                                                     stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)  # fmt: skip
        lock = run_lock.lock_path(out)
        for _ in range(600):  # the first holds the lock once its pid is in the lock file
            if lock.exists() and lock.read_text().startswith(f"{first.pid} "):
                break
            await asyncio.sleep(0.05)
        else:
            first.kill()
            pytest.fail("the first run never took the lock")
        await asyncio.sleep(1.0)  # the first's requests reach the gate
        held = api.connections
        # the same file by another name: a symbolic link to it
        link = tmp_path / "link.jsonl"
        link.symlink_to(out)
        for target in (out, link):
            code, _, stderr = await symoe_async("solve", q, "--config", cfg, "-o", target, timeout=120)
            assert code == 2 and f"is in use by process {first.pid}" in stderr, stderr
        assert api.connections == held  # the second sent nothing
        api.gate.set()
        _, first_err = await asyncio.wait_for(first.communicate(), 300)
        assert first.returncode == 0, first_err.decode()[-3000:]
    ids = [r["id"] for r in read_jsonl(out)]
    assert sorted(ids) == sorted(f"q{i}" for i in range(N))  # every id once
    assert not lock.exists()  # released and removed at the end
    # and the file resumes as usual afterwards
    code, _, stderr = await symoe_async("solve", q, "--config", cfg, "-o", out, timeout=120)
    assert code == 0 and "already answered" in stderr


def test_a_lock_left_by_a_killed_run_does_not_block_the_next(tmp_path):
    out = tmp_path / "a.jsonl"
    holder = subprocess.Popen(["python3", "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
                               "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'4242 symoe solve'); print('held', flush=True); time.sleep(60)",
                               str(run_lock.lock_path(out))], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Exception, match="in use by process 4242"):
            with run_lock.exclusive(out):
                pass
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the file stays, the kernel drops the lock
        holder.wait()
        holder.stdout.close()
    assert run_lock.lock_path(out).exists()
    with run_lock.exclusive(out):
        assert run_lock.lock_path(out).read_text().startswith(f"{os.getpid()} ")


async def test_profile_refuses_a_folder_another_run_is_writing(tmp_path):
    val = tmp_path / "val.jsonl"
    val.write_text('{"question": "Which? (A) one (B) two", "gold_answer": "A"}\n')
    folder = tmp_path / "profiles"
    with run_lock.exclusive(folder, "the profiles folder"):
        code, _, stderr = await symoe_async("profile", val, "-o", folder, timeout=120)
    assert code == 2 and f"the profiles folder {folder} is in use by process {os.getpid()}" in stderr, stderr
    no_traceback(stderr)


# -- part 2: paths that collide ---------------------------------------------------------


@pytest.mark.parametrize("case", ["events-is-input", "events-is-output", "output-links-to-input", "cache-is-output", "events-hardlinks-cache",
                                  "events-is-config"])
def test_two_options_naming_the_same_file_are_refused_before_anything_starts(tmp_path, case):
    q = questions_file(tmp_path)
    before = q.read_bytes()
    out, cache = tmp_path / "out.jsonl", tmp_path / "c.sqlite"
    args = ["solve", str(q), "-o", str(out)]
    if case == "events-is-input":
        args += ["--events", str(q)]
        pair = "INPUT and --events"
    elif case == "events-is-output":
        out.write_text("")
        args += ["--events", str(out)]
        pair = "-o and --events"
    elif case == "output-links-to-input":
        link = tmp_path / "link.jsonl"
        link.symlink_to(q)
        args[3] = str(link)
        pair = "INPUT and -o"
    elif case == "cache-is-output":
        args += ["--cache", str(out)]
        pair = "-o and --cache"
    elif case == "events-is-config":
        cfg = tmp_path / "c.toml"
        cfg.write_text('[models.m]\nbackend = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m"\n'
                       '[roles]\nskill_inferencer = "m"\nexperts = ["m"]\naggregator = "m"\n')
        q, before = cfg, cfg.read_bytes()  # the file that must stay as it was
        args += ["--config", str(cfg), "--events", str(cfg)]
        pair = "--events and --config"
    else:
        cache.write_bytes(b"")
        os.link(cache, tmp_path / "hard.jsonl")
        args += ["--cache", str(cache), "--events", str(tmp_path / "hard.jsonl")]
        pair = "--events and --cache"
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"{pair} are the same file" in result.output
    assert q.read_bytes() == before


# -- part 6: outputs that cannot be written ---------------------------------------------


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only mount: refused even to root, as a real read-only disk is."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.parametrize("where", ["output-is-a-folder", "output-under-a-file", "output-read-only", "events-is-a-folder", "events-read-only"])
def test_an_output_that_cannot_be_written_is_one_line_and_exit_2_before_anything_starts(tmp_path, where, request):
    q = questions_file(tmp_path)
    ev = tmp_path / "ev.jsonl"
    out = tmp_path / "out.jsonl"
    expect = ""
    if where == "output-is-a-folder":
        out.mkdir()
        expect = f"the answers file {out} is a folder"
    elif where == "output-under-a-file":
        (tmp_path / "file.txt").write_text("x")
        out = tmp_path / "file.txt" / "out.jsonl"
        expect = f"{tmp_path / 'file.txt'} is a file, not a folder"
    elif where == "output-read-only":
        out = request.getfixturevalue("read_only_dir") / "out.jsonl"
        expect = "Read-only file system"
    elif where == "events-is-a-folder":
        ev.mkdir()
        expect = f"the events file {ev} is a folder"
    else:
        ev = request.getfixturevalue("read_only_dir") / "ev.jsonl"
        expect = "Read-only file system"
    result = CliRunner().invoke(app, ["solve", str(q), "-o", str(out), "--events", str(ev)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expect in lines[0], result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "out.cache.sqlite").exists()


async def test_a_full_disk_under_the_answers_file_stops_cleanly_and_the_rerun_pays_nothing_twice(tmp_path, small_disk):
    aggregations = 0

    def on_request(body: dict) -> None:
        nonlocal aggregations
        if body["model"] == "agg":
            aggregations += 1
            if aggregations == 3:  # the disk fills while the questions are being finished
                fill_disk(small_disk)

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    async with GatedAPI() as api:
        api.on_request = on_request
        cfg, q = hosted_toml(tmp_path, api), questions_file(tmp_path)
        out, cache = small_disk / "a.jsonl", tmp_path / "c.sqlite"
        args = ("solve", q, "--config", cfg, "-o", out, "--cache", cache)
        code, _, stderr = await symoe_async(*args, env=env, timeout=300)
        assert code == 2, stderr[-3000:]
        no_traceback(stderr)
        assert f"cannot write the answers file {out}: No space left on device" in stderr
        assert "Re-run the same command" in stderr
        (small_disk / "ballast").unlink()  # space again
        code, _, stderr = await symoe_async(*args, env=env, timeout=300)
        assert code == 0, stderr[-3000:]
    assert sorted(r["id"] for r in read_jsonl(out)) == sorted(f"q{i}" for i in range(N))
    assert all(n == 1 for n in attempts(cache).values())  # no answer paid for was asked again
    assert api.calls == sum(attempts(cache).values())  # and every call the API saw is counted there once


async def test_a_full_disk_under_the_cache_keeps_every_answer_for_the_next_run(tmp_path, small_disk, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the subprocess's TMPDIR, for spill_files
    experts = 0

    def on_request(body: dict) -> None:
        nonlocal experts
        if body["model"] in ("e1", "e2"):
            experts += 1
            if experts == 2:  # the cache's disk fills mid-group
                fill_disk(small_disk)

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    async with GatedAPI() as api:
        api.on_request = on_request
        cfg, q = hosted_toml(tmp_path, api), questions_file(tmp_path)
        cache = small_disk / "c.sqlite"
        code, _, stderr = await symoe_async("solve", q, "--config", cfg, "-o", tmp_path / "a.jsonl", "--cache", cache, env=env, timeout=300)
        assert code == 0, stderr[-3000:]  # the answers file is on another disk: the batch finished
        no_traceback(stderr)
        spill = spill_files(cache)
        # beside the cache is the full disk too: the answers went to this user's folder in the temporary folder
        assert len(spill) == 1 and spill[0].parent == tmp_path / f"symoe-unsaved-{os.getuid()}"
        assert f"saved in {spill[0]}" in stderr and "could not be written to the answer cache" in stderr
        paid = api.calls
        (small_disk / "ballast").unlink()
        # a new answers file over the same cache: every answer is found, none is asked again
        code, _, stderr = await symoe_async("solve", q, "--config", cfg, "-o", tmp_path / "b.jsonl", "--cache", cache, env=env, timeout=300)
        assert code == 0, stderr[-3000:]
        assert api.calls == paid
    assert spill_files(cache) == []  # written into the cache, then removed
    assert [r["final_answer"] for r in read_jsonl(tmp_path / "b.jsonl")] == [r["final_answer"] for r in read_jsonl(tmp_path / "a.jsonl")]


# -- part 7: a locked cache is not a model failure ----------------------------------------


def _hosted_cfg(api: ScriptedAPI):
    return parse_config(
        {
            "k": 2,
            "models": {m: {"backend": "openai", "base_url": api.base_url, "model": m} for m in ("sk", "e1", "e2", "agg")},
            "roles": {"skill_inferencer": "sk", "experts": ["e1", "e2"], "aggregator": "agg"},
            "sampling": {"skill_inferencer": {"samples": 1}},
            "concurrency": {"max_in_flight": 2},
        },
        "test",
    )


async def test_a_cache_locked_past_the_wait_stops_the_run_without_failing_a_request_or_losing_an_answer(tmp_path):
    path = tmp_path / "c.sqlite"
    questions = [Question(id=f"q{i}", question=f"Question {i}: which? (A) one (B) two") for i in range(N)]
    async with GatedAPI() as api:
        api.gate.clear()
        cache = AnswerCache(path, busy_timeout_s=0.05, retry_s=0.1, give_up_s=0.5)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # another process holds the cache
        events = EventLog()
        records = []

        async def open_gate_later() -> None:
            await asyncio.sleep(1.0)  # longer than give_up_s: the cache is stuck by then
            api.gate.set()

        opener = asyncio.ensure_future(open_gate_later())
        async with SymbolicMoE(_hosted_cfg(api), events=events, check=False, cache=cache) as moe:
            with pytest.raises(CacheError, match="could not be written for 0.5 s"):
                await moe.solve_each(questions, records.append)
        await opener
        paid = api.calls
        assert paid > 0
        assert not [e for e in events.events if e.kind == "request_failed"]  # the model is not blamed
        assert not [r for r in records if r.errors]
        other.execute("COMMIT")  # the other process lets go
        other.close()
        await cache.aclose()  # what waited is written now
        with contextlib.closing(sqlite3.connect(path)) as db:
            kept = {k for (k,) in db.execute("SELECT key FROM answers")}
        assert cache.spilled is None and len(kept) == paid  # every answer received is in the cache
        again = AnswerCache(path)
        async with SymbolicMoE(_hosted_cfg(api), check=False, cache=again) as moe:
            results = await moe.solve_batch(questions)
        await again.aclose()
    assert all(not r.errors for r in results)
    assert all(attempts(path)[k] == 1 for k in kept)  # nothing received was asked for twice


def test_closing_a_cache_that_stays_locked_saves_its_answers_and_the_next_one_writes_them(tmp_path):
    from symoe_agents.records import Completion

    path = tmp_path / "c.sqlite"
    cache = AnswerCache(path, busy_timeout_s=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    cache.put("k1", Completion(model="m", text="kept"), "expert", "q0", 0)
    cache.close()
    assert cache.spilled is not None and cache.spilled[0] == 1 and spill_files(path) == [cache.spilled[1]]
    assert cache.spilled[1].parent == tmp_path  # beside the cache
    other.execute("COMMIT")
    other.close()
    with AnswerCache(path) as again:
        assert again.get("k1").text == "kept" and again.stored == 1
    assert spill_files(path) == []
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM answers").fetchone()[0] == 1


# -- part 6: a reader of stderr that goes away --------------------------------------------


async def test_a_closed_stderr_pipe_does_not_abort_a_paid_batch(tmp_path):
    async with GatedAPI() as api:
        cfg, q, out = hosted_toml(tmp_path, api), questions_file(tmp_path), tmp_path / "a.jsonl"
        api.gate.clear()
        r, w = os.pipe()
        proc = await asyncio.create_subprocess_exec(*symoe_cmd(), "solve", str(q), "--config", str(cfg), "-o", str(out),
                                                    stdout=subprocess.DEVNULL, stderr=w)  # fmt: skip
        os.close(w)
        reader = os.fdopen(r, "rb")
        first_line = await asyncio.to_thread(reader.readline)  # `| head -1`: one line, then the pipe is closed
        reader.close()
        assert first_line
        api.gate.set()
        code = await asyncio.wait_for(proc.wait(), 300)
    assert code == 0
    assert sorted(r["id"] for r in read_jsonl(out)) == sorted(f"q{i}" for i in range(N))


def test_a_cache_locked_when_the_run_opens_it_is_refused_before_anything_is_paid(tmp_path):
    path = tmp_path / "c.sqlite"
    AnswerCache(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA locking_mode=EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(CacheError, match="another process kept the answer cache locked for 0.2 s; wait for it"):
            AnswerCache(path, busy_timeout_s=0.2)
    finally:
        other.execute("COMMIT")
        other.close()


# -- hang-ups ---------------------------------------------------------------------------


@pytest.mark.parametrize("nohup", [False, True], ids=["hangup-stops-cleanly-once", "nohup-ignores-it"])
async def test_a_hangup_stops_like_sigterm_unless_started_under_nohup(tmp_path, nohup):
    import signal

    async with GatedAPI() as api:
        cfg, q, out = hosted_toml(tmp_path, api), questions_file(tmp_path), tmp_path / "a.jsonl"
        api.gate.clear()
        proc = await asyncio.create_subprocess_exec(
            *symoe_cmd(), "solve", str(q), "--config", str(cfg), "-o", str(out),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            preexec_fn=(lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)) if nohup else None,
        )  # fmt: skip
        for _ in range(600):  # the run is under way once a request waits at the gate
            if api.connections:
                break
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGHUP)  # a hang-up often comes twice: it must not force an unclean exit
        await asyncio.sleep(0.5)
        api.gate.set()
        _, stderr = await asyncio.wait_for(proc.communicate(), 300)
    stderr = stderr.decode()
    no_traceback(stderr)
    if nohup:
        assert proc.returncode == 0, stderr[-2000:]
        assert sorted(r["id"] for r in read_jsonl(out)) == sorted(f"q{i}" for i in range(N))
    else:
        assert proc.returncode == 129, stderr[-2000:]
        assert "SIGHUP received" in stderr and "Re-run the same command" in stderr


# -- more hostile paths -------------------------------------------------------------------


def test_an_events_fifo_that_nobody_reads_is_refused_instead_of_hanging(tmp_path):
    fifo = tmp_path / "ev.fifo"
    os.mkfifo(fifo)
    result = CliRunner().invoke(app, ["solve", str(questions_file(tmp_path)), "-o", str(tmp_path / "a.jsonl"), "--events", str(fifo)])
    assert result.exit_code == 2 and "is a named pipe that no process reads" in result.output, result.output


def test_an_output_that_is_a_symlink_loop_is_one_line_and_exit_2(tmp_path):
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    result = CliRunner().invoke(app, ["solve", str(questions_file(tmp_path)), "-o", str(loop)])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "error:" in result.output and str(loop) in result.output


def test_two_runs_sharing_a_locked_cache_both_keep_their_answers(tmp_path):
    from symoe_agents.records import Completion

    path = tmp_path / "c.sqlite"
    AnswerCache(path).close()
    first, second = AnswerCache(path, busy_timeout_s=0.05), AnswerCache(path, busy_timeout_s=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    first.put("k1", Completion(model="m", text="from the first"), "expert", "q0", 0)
    second.put("k2", Completion(model="m", text="from the second"), "expert", "q1", 0)
    first.close()
    second.close()
    assert len(spill_files(path)) == 2  # one file each: neither overwrote the other
    other.execute("COMMIT")
    other.close()
    with AnswerCache(path) as again:
        assert again.get("k1").text == "from the first" and again.get("k2").text == "from the second"
    assert spill_files(path) == []


def test_a_lone_surrogate_in_a_model_answer_is_written_not_dropped(tmp_path):
    from symoe_agents.answer_file import AnswerFile
    from symoe_agents.records import Completion, QuestionResult

    c = Completion(model="m", text="cut in half: \ud83d")  # a proxy that cut an emoji at max_tokens
    assert c.text == "cut in half: \ufffd"
    cache = AnswerCache(tmp_path / "c.sqlite")
    cache.put("k", c, "expert", "q0", 0)
    assert cache.get("k").text == "cut in half: \ufffd"
    cache.close()
    q = Question(id="q0", question="Which? (A) one (B) two")
    out = AnswerFile.open(tmp_path / "a.jsonl", [q])
    # a text no Completion cleaned: the record is still written (escaped), never silently dropped
    out.append(QuestionResult(id=q.id, question=q.question, answer_format="multiple_choice", skills=[], routing="fixed",
                              experts=[], expert_answers=[], aggregator=None, skill_samples=["odd \udc00"]))  # fmt: skip
    out.close()
    assert read_jsonl(tmp_path / "a.jsonl")[0]["skill_samples"] == ["odd \udc00"]


def test_a_template_that_is_not_utf8_is_a_preflight_problem(tmp_path):
    import shutil
    from importlib.resources import files

    from symoe_agents.preflight import prompt_problems

    prompts = tmp_path / "prompts"
    shutil.copytree(str(files("symoe_agents.prompts")), prompts, ignore=shutil.ignore_patterns("__*"))
    (prompts / "expert.md").write_bytes("Réponds: {question}\n{answer_instruction}\n".encode("latin-1"))
    problems = prompt_problems(prompts)
    assert any("expert.md" in p and "is not UTF-8" in p for p in problems), problems


async def test_a_full_disk_under_the_scratch_store_stops_the_sending_at_once(tmp_path, small_disk):
    expert_calls = 0

    def on_request(body: dict) -> None:
        nonlocal expert_calls
        if body["model"] in ("e1", "e2"):
            expert_calls += 1
            if expert_calls == 2:
                fill_disk(small_disk)

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    async with GatedAPI() as api:
        api.on_request = on_request
        cfg, q = hosted_toml(tmp_path, api), questions_file(tmp_path, 40)
        out = small_disk / "a.jsonl"  # the run's scratch store is made beside it
        code, _, stderr = await symoe_async("solve", q, "--config", cfg, "-o", out, "--cache", tmp_path / "c.sqlite", env=env, timeout=300)
        assert code == 2, stderr[-3000:]
        no_traceback(stderr)
        assert "the run's answer store failed: database or disk is full" in stderr, stderr[-2000:]
        assert "Re-run the same command" in stderr
        # the groups stopped sending once the store had failed (the answers already queued
        # when its write failed still arrive), instead of paying for all 80 expert answers
        assert expert_calls < 80, expert_calls


async def test_eval_refuses_a_report_folder_another_evaluation_is_writing(tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text('{"question": "Which? (A) one (B) two", "gold_answer": "A"}\n')
    folder = tmp_path / "report"
    with run_lock.exclusive(folder, "the report folder"):
        code, _, stderr = await symoe_async("eval", bench, "-o", folder, "--methods", "single", timeout=120)
    assert code == 2 and f"the report folder {folder} is in use by process {os.getpid()}" in stderr, stderr
    no_traceback(stderr)
