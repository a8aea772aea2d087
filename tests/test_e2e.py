"""End to end on the real embedded pool: real llama.cpp servers, real HTTP, real tokens."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import EXAMPLES, hand_instruction, llama_server_argv, pids_alive, read_jsonl, symoe_cmd, wait_gone
from symoe_agents.config import load_config

pytestmark = pytest.mark.servers


def run_symoe(*args, timeout=600, **kw):
    return subprocess.run([*symoe_cmd(), *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)


def server_pids(events):
    return [e["pid"] for e in events if e["kind"] == "server_start"]


def no_llamacpp_server_on(ports):
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if ("llama-server" in cmd or "llama_cpp.server" in cmd) and any(f"--port {port}" in cmd for port in ports):
            return False
    return True


EXAMPLE_FORMATS = {"arith-1": "multiple_choice", "geo-1": "multiple_choice", "chem-1": "multiple_choice",
                   "bio-1": "multiple_choice", "math-1": "math", "free-1": "free"}  # fmt: skip


def test_solve_example_set(tmp_path):
    import hashlib
    import re

    from conftest import ROOT
    from symoe_agents.reasoning import strip_reasoning

    questions = read_jsonl(EXAMPLES / "questions.jsonl")
    assert len(questions) >= 5
    out, ev = tmp_path / "answers.jsonl", tmp_path / "events.jsonl"
    proc = run_symoe("solve", EXAMPLES / "questions.jsonl", "-o", out, "--events", ev, "--explain")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = load_config()
    from symoe_agents.profiles import load_profiles
    from test_explain import check as check_explanation

    profiles = {m: p.skills for m, p in load_profiles(cfg.profiles, cfg.roles.experts).items()}
    vocabulary = {kw for p in profiles.values() for kw in p}
    chosen_aggregator = json.loads((cfg.profiles / "_aggregator.json").read_text())["aggregator"]
    template = (ROOT / "prompts" / "aggregator.md").read_text().rstrip("\n")

    records = read_jsonl(out)
    assert sorted(r["id"] for r in records) == sorted(q["id"] for q in questions)
    gold = {q["id"]: q["gold_answer"] for q in questions}
    for r in records:
        assert r["answer_format"] == EXAMPLE_FORMATS[r["id"]]
        assert r["option_letters"] == (list("ABCD") if r["answer_format"] == "multiple_choice" else [])
        assert len(r["skill_samples"]) == cfg.sampling.skill_inferencer.samples
        # the pool ships with profiles: a question with keywords is routed by them
        assert r["routing"] == ("skills" if r["skills"] else "uniform-no-keywords")
        assert len(r["experts"]) == cfg.k and set(r["experts"]) <= set(cfg.roles.experts)
        # --explain: why these experts, recomputed from the explanation and the shipped profiles
        ex = r["routing_explanation"]
        assert ex["method"] == r["routing"] and [m["keyword"] for m in ex["keywords"]] == r["skills"]
        for m in ex["keywords"]:  # MiniLM alignment maps every keyword to a profile keyword
            assert m["aligned_to"] in vocabulary and -1 <= m["similarity"] <= 1 + 1e-6
            assert m["similarity"] == 1.0 or m["keyword"] not in vocabulary  # verbatim: 1, no embedding
        if ex["method"] == "skills":
            check_explanation(ex, profiles, r["experts"])
        # no min_share: what was drawn is what answered (the run's seed and draw keys reached the explanation)
        assert [d["drawn"] for d in ex["draws"]] == r["experts"] and all(d["replaced_by"] is None for d in ex["draws"])
        answers = sorted(r["expert_answers"], key=lambda a: a["slot"])
        assert [a["model"] for a in answers] == r["experts"]
        for n, a in enumerate(answers):
            assert a["error"] is None and a["text"] and a["finish_reason"] in ("stop", "length")
            assert a["completion_tokens"] > 0 and a["latency_s"] > 0
            # an expert drawn twice answered both slots in one request (n = 2): the prompt,
            # processed once, counts on its first slot only
            again = a["model"] in [b["model"] for b in answers[:n]]
            assert (a["prompt_tokens"] == 0) if again else (a["prompt_tokens"] > 0)
            assert a["truncated"] == (a["finish_reason"] == "length")
            # provenance of an extracted answer: a valid letter, or text the response really holds
            if r["answer_format"] == "multiple_choice":
                assert a["extracted"] is None or a["extracted"] in r["option_letters"]
            else:
                assert a["extracted"] is None or a["extracted"] in strip_reasoning(a["text"])
            assert a["extracted"] != "X"  # the instruction's placeholder is never an answer
        skill_cuts = [t for t in r["truncated"] if t.startswith("skills ")]
        assert all(re.fullmatch(rf"skills smollm2 \(sample [0-{len(r['skill_samples']) - 1}]\)", t) for t in skill_cuts)
        assert r["truncated"] == skill_cuts + [f"expert {a['model']} (slot {a['slot']})" for a in answers if a["truncated"]] + (
            [f"aggregator {r['aggregator']}"] if r["aggregator_answer"]["truncated"] else [])
        # the aggregator's prompt, rebuilt by hand from the template file and the experts' texts
        assert r["aggregator"] == chosen_aggregator
        agg = r["aggregator_answer"]
        shown = [t for t in (strip_reasoning(a["text"]).strip() for a in answers) if t]
        body = "\n\n".join(f"Response {n}:\n{t}" for n, t in enumerate(shown, 1))
        text = template.replace("{responses}", body).replace("{question}", r["question"])
        text = text.replace("{answer_instruction}", hand_instruction(r["answer_format"], r["option_letters"]))
        assert agg["prompt_sha256"] == hashlib.sha256(text.encode()).hexdigest()
        # the aggregator's answer is the method's answer: no answer if it does not parse
        status = "answered" if agg["extracted"] is not None else "unparsable"
        assert r["aggregator_status"] == status
        expected = (agg["extracted"], "aggregator") if status == "answered" else (None, None)
        assert (r["final_answer"], r["final_source"]) == expected
        # scored as the truth says, by rules written out here
        assert r["gold_answer"] == gold[r["id"]]
        final = r["final_answer"]
        if final is None:
            assert r["correct"] is False
        elif r["answer_format"] == "multiple_choice":
            assert r["correct"] == (final == r["gold_answer"])
        elif r["id"] == "math-1":
            assert r["correct"] == (final.strip().lstrip("0") == "49")
        else:
            assert r["correct"] == ("paris" in final.lower() and len(final.split()) <= 12)
        assert r["errors"] == []
    assert any(r["routing"] == "skills" for r in records)
    accuracy = sum(r["correct"] for r in records)
    assert f"accuracy: {accuracy}/{len(records)}" in proc.stderr
    statuses = [r["aggregator_status"] for r in records]
    assert (f"aggregator: {statuses.count('answered')} answered, {statuses.count('unparsable')} unparsable, 0 failed"
            in proc.stderr)  # fmt: skip

    events = read_jsonl(ev)
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    assert kinds.count("server_start") == kinds.count("server_ready") == kinds.count("server_stop")
    groups = [e for e in events if e["kind"] == "group_start"]
    assert groups[0]["group"].startswith("skills:") and groups[-1]["group"].startswith("aggregate:")
    # a question's 5 skill samples went to llama-server as one request (n = 5), so each
    # prompt was processed once: 6 calls for 30 samples; in flight counts sequences, so the
    # 16 slots held 3 of those requests at once (15 sequences), never a fourth
    skills_end = next(e for e in events if e["kind"] == "group_end" and e["group"].startswith("skills:"))
    assert skills_end["requests"] == 6 * 5 and skills_end["detail"]["calls"] == 6
    assert skills_end["detail"]["peak_in_flight"] == 15
    assert all(len(r["skill_samples"]) == 5 for r in records)
    # the loads, from what is known of the pool: smollm2 and smollm2-focused share one server, which
    # also serves the skills and the chosen aggregator; gemma3 needs its own, once, between them,
    # while smollm2's server waits idle ([schedule] sleep) instead of being stopped and loaded again
    assert chosen_aggregator in ("smollm2", "smollm2-focused")
    recruited = {e for r in records for e in r["experts"]}
    starts = [e["model"] for e in events if e["kind"] == "server_start"]
    assert starts == (["smollm2", "gemma3"] if "gemma3" in recruited else ["smollm2"])
    assert kinds.count("server_sleep") == kinds.count("server_wake") == (1 if "gemma3" in recruited else 0)
    # nothing left running, on the pids or the ports
    assert pids_alive(server_pids(events)) == []
    assert no_llamacpp_server_on([e["port"] for e in events if e["kind"] == "server_start"])
    # the summary
    assert f"model loads: {len(starts)}" in proc.stderr
    for g in groups:
        assert g["group"] in proc.stderr


def test_dry_run_routes_and_prints_the_plan_without_answering(tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text("".join(json.dumps({"id": f"d{i}", "question": f"What is {i} + {i}?"}) + "\n" for i in range(3)))
    ev = tmp_path / "ev.jsonl"
    proc = run_symoe("solve", q, "-o", tmp_path / "out.jsonl", "--events", ev, "--dry-run", "--k", "2", "--seed", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    import re

    chosen = json.loads((load_config().profiles / "_aggregator.json").read_text())["aggregator"]
    assert "skills:smollm2" in proc.stdout and "model loads:" in proc.stdout
    assert re.search(rf"aggregate:{re.escape(chosen)}\b(?!-)", proc.stdout)  # the chosen aggregator, not a prefix of another
    events = read_jsonl(ev)
    starts = [e for e in events if e["kind"] == "server_start"]
    assert [e["model"] for e in starts] == ["smollm2"]  # only the skill inferencer ran
    assert not (tmp_path / "out.jsonl").exists()
    assert pids_alive(server_pids(events)) == []


@pytest.mark.parametrize("sig, code, times", [(signal.SIGTERM, 143, 1), (signal.SIGHUP, 129, 1), (signal.SIGINT, 130, 1), (signal.SIGINT, 130, 2)],
                         ids=["sigterm", "sighup", "ctrl-c", "ctrl-c-twice-forces"])
def test_signal_stops_every_server_and_exits_with_the_signal_code(tmp_path, sig, code, times):
    ev = tmp_path / "ev.jsonl"
    proc = subprocess.Popen(
        [*symoe_cmd(), "solve", str(EXAMPLES / "questions.jsonl"), "-o", str(tmp_path / "o.jsonl"), "--events", str(ev)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until a server is up and answering
        if ev.exists() and any(e["kind"] == "server_ready" for e in read_jsonl(ev)):
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("no server became ready")
    time.sleep(1.0)
    proc.send_signal(sig)
    if times == 2:
        time.sleep(0.05)
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    events = read_jsonl(ev)
    if times == 1:  # a clean stop says what is kept and how to go on
        assert "all servers stopped" in err and "o.jsonl" in err and "Re-run the same command" in err
        assert (tmp_path / "o.cache.sqlite").exists()
    assert wait_gone(server_pids(events)) == []


def test_bad_input_is_rejected_before_any_server_starts(tmp_path):
    q = tmp_path / "bad.jsonl"
    q.write_text('{"question": "ok"}\n{"id": 2}\n')
    proc = run_symoe("solve", q, "--events", tmp_path / "ev.jsonl", timeout=60)
    assert proc.returncode == 2
    assert f"{q}:2: missing required field 'question'" in proc.stderr
    assert not (tmp_path / "ev.jsonl").exists()


def test_bad_config_is_rejected_with_file_and_key(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[models.a]\nbackend = "llamacpp"\nembedded = "smollm2-135m-instruct"\nport = 1\n'
                   '[roles]\nskill_inferencer = "a"\nexperts = ["a"]\naggregator = "a"\n')  # fmt: skip
    proc = run_symoe("solve", EXAMPLES / "questions.jsonl", "--config", cfg, timeout=60)
    assert proc.returncode == 2
    assert f"{cfg}: models.a.port: Extra inputs are not permitted" in proc.stderr


def test_readme_python_example_runs():
    proc = subprocess.run([sys.executable, str(EXAMPLES / "api_example.py")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("1: experts=[")
    assert any(line.startswith("gas: skills=") for line in lines)
    assert any(line.startswith("sq: skills=") for line in lines)
    assert "model loads:" in proc.stdout


async def test_hosted_role_inside_the_callers_event_loop(tmp_path, monkeypatch):
    """The aggregator is a 'hosted' OpenAI-compatible endpoint (here a real llama.cpp server
    this test starts itself); symoe runs in the test's own event loop."""
    from symoe_agents import EventLog, SymbolicMoE
    from symoe_agents.config import parse_config
    from symoe_agents.servers import ServerProcess, free_port
    from symoe_agents.servers.embedded import embedded_model_path
    from symoe_agents.servers.probe import http_get

    key = "hosted-key-" + os.urandom(6).hex()
    port = free_port()
    hosted = ServerProcess(
        "hosted", llama_server_argv(embedded_model_path("smollm2-135m-instruct"), port, "remote-smol"),
        port, tmp_path / "hosted.log", env={"LLAMA_API_KEY": key},
    )  # fmt: skip
    hosted.spawn()
    try:

        async def ready(p):
            status, _ = await http_get("127.0.0.1", p, "/v1/models", {"Authorization": f"Bearer {key}"})
            return status == 200

        await hosted.wait_ready(ready, 60)
        monkeypatch.setenv("SYMOE_TEST_HOSTED_KEY", key)
        cfg = parse_config(
            {
                "k": 2,
                "models": {
                    "smol": {"backend": "llamacpp", "embedded": "smollm2-135m-instruct"},
                    "remote": {"backend": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "model": "remote-smol",
                               "api_key_env": "SYMOE_TEST_HOSTED_KEY"},
                },  # fmt: skip
                "roles": {"skill_inferencer": "smol", "experts": ["smol"], "aggregator": "remote"},
                "sampling": {"skill_inferencer": {"max_tokens": 32, "samples": 3}, "expert": {"max_tokens": 64},
                             "aggregator": {"max_tokens": 64}},  # fmt: skip
            },
            "test",
        )
        events_file = tmp_path / "ev.jsonl"
        log = EventLog(events_file)
        async with SymbolicMoE(cfg, events=log) as moe:
            results = await moe.solve_batch(["What is 2 + 2? The options are: (A) 3 (B) 4", "Name a primary colour."])
        log.close()
        assert len(results) == 2
        for r in results:
            assert r.aggregator == "remote" and r.aggregator_answer.error is None
            assert r.aggregator_answer.completion_tokens > 0
        starts = [e for e in log.events if e.kind == "server_start"]
        assert [e.model for e in starts] == ["smol"]  # the hosted role needs no server
        assert key not in events_file.read_text()
    finally:
        await hosted.stop(5)


def test_check_command(tmp_path):
    ok = run_symoe("check", timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: 3 models")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'profiles = "{load_config().profiles}"\n'  # routing by profiles is what needs the embedder
                   '[models.a]\nbackend = "llamacpp"\nmodel_path = "absent.gguf"\n'
                   '[roles]\nskill_inferencer = "a"\nexperts = ["a"]\naggregator = "a"\n'
                   f'[alignment]\nmethod = "minilm"\nmodel_path = "{tmp_path}"\n')  # fmt: skip
    bad = run_symoe("check", "--config", cfg, timeout=120)
    assert bad.returncode == 1
    assert f"problem: model 'a': model file {tmp_path / 'absent.gguf'} not found" in bad.stdout
    # the embedder, which runs after the skill answers are paid for, is checked too
    assert f"problem: alignment: {tmp_path} lacks config.json" in bad.stdout


def test_config_command_prints_a_loadable_pool(tmp_path):
    out = run_symoe("config", timeout=60)
    assert out.returncode == 0
    (tmp_path / "pool.toml").write_text(out.stdout)
    shown = run_symoe("config", "--config", tmp_path / "pool.toml", timeout=60)
    assert shown.returncode == 0 and "smollm2-focused" in shown.stdout and "expert" in shown.stdout


def test_servers_up_prints_endpoints_and_ctrl_c_stops_them(tmp_path):
    import re

    import openai

    proc = subprocess.Popen([*symoe_cmd(), "servers", "up", "smollm2", "smollm2-focused", "gemma3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if line.startswith("Ctrl-C"):
            break
    text = "".join(lines)
    url = re.search(r"smollm2 +(http://127\.0\.0\.1:\d+/v1)", text).group(1)
    key = re.search(r"OPENAI_API_KEY=(\S+)", text).group(1)
    assert "same server as above" in text  # smollm2-focused shares smollm2's weights
    client = openai.OpenAI(base_url=url, api_key=key, max_retries=0)
    reply = client.chat.completions.create(model="smollm2-135m-instruct", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert reply.usage.completion_tokens > 0
    client.close()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    gemma_port = int(re.search(r"gemma3 +http://127\.0\.0\.1:(\d+)/v1", text).group(1))
    # two llama-servers stay up side by side: the cores are divided between them
    from symoe_agents.servers.cpu import available_cores

    threads = []
    for p in psutil.Process(proc.pid).children(recursive=True):
        cmd = p.cmdline()
        if cmd and cmd[0].endswith("llama-server"):
            threads.append(int(cmd[cmd.index("--threads") + 1]))
    assert threads == [max(1, available_cores() // 2)] * 2
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert no_llamacpp_server_on([port, gemma_port])
