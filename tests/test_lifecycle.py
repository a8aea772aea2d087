"""Schedules beyond one-model-at-a-time, on STAND-INS (SGLang, vLLM, nvidia-smi), since
neither GPU servers nor GPUs exist on these machines; and the generic command backend on a
real llama.cpp server."""

import json
import os
import sys

import psutil
import pytest

from conftest import ROOT, llama_server_argv, pids_alive
from symoe_agents import EventLog, SymbolicMoE
from symoe_agents.config import parse_config
from symoe_agents.servers import ServerManager
from symoe_agents.servers.embedded import embedded_model_path
from symoe_agents.servers.probe import http_get

STANDINS = ROOT / "tests" / "standins"
QUESTIONS = [f"What is {i} + 1? The options are: (A) x (B) y" for i in range(6)]


def wrapper(tmp_path, name, script):
    exe = tmp_path / name
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {STANDINS / script} \"$@\"\n")
    exe.chmod(0o755)
    return str(exe)


@pytest.fixture
def gpus(tmp_path, monkeypatch):
    """A stand-in nvidia-smi on PATH reporting 2 GPUs and the stand-in servers' memory."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper(bin_dir, "nvidia-smi", "nvidia_smi_standin.py")
    gpu_dir = tmp_path / "gpu"
    gpu_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_GPU_DIR", str(gpu_dir))
    monkeypatch.setenv("STANDIN_LOAD_S", "0.2")
    return gpu_dir


def sglang(py, path, **kw):
    return {"backend": "sglang", "model_path": path, "python": py, "start_timeout_s": 20, **kw}


def run_config(tmp_path, models, roles, **extra):
    return parse_config({"k": 3, "models": models, "roles": roles, "sampling": {"skill_inferencer": {"samples": 2}}, **extra}, "t")


def windows(events, kind_start="group_start", kind_end="group_end"):
    out = {}
    for e in events:
        if e.kind == kind_start:
            out[e.group] = [e.ts, None]
        elif e.kind == kind_end:
            out[e.group][1] = e.ts
    return out


async def test_vllm_command_line_readiness_and_sleep(tmp_path, monkeypatch):
    argv_out = tmp_path / "argv.json"
    monkeypatch.setenv("STANDIN_ARGV_OUT", str(argv_out))
    monkeypatch.setenv("STANDIN_LOAD_S", "1")
    for inherited in ("VLLM_SERVER_DEV_MODE", "VLLM_API_KEY"):  # only symoe may set them
        monkeypatch.delenv(inherited, raising=False)
    vllm = wrapper(tmp_path, "vllm", "vllm_standin.py")
    cfg = run_config(tmp_path, {"v": {"backend": "vllm", "model_path": "org/V-8B", "command": [vllm, "serve"],
                                      "gpu_memory_utilization": 0.5, "max_model_len": 8192, "seed": 1,
                                      "enable_sleep_mode": True, "start_timeout_s": 20}},
                     {"skill_inferencer": "v", "experts": ["v"], "aggregator": "v"},
                     schedule={"gpus": [0], "sleep": True})  # fmt: skip
    events = EventLog()
    async with ServerManager(cfg, events, gpu_monitor=False) as manager:
        ep = await manager.acquire("v")
        argv = json.loads(argv_out.read_text())
        assert argv[:2] == ["serve", "org/V-8B"]
        flags = dict(zip(argv[2::2], argv[3::2]))
        assert flags["--host"] == "127.0.0.1" and flags["--served-model-name"] == "org/V-8B"
        assert flags["--gpu-memory-utilization"] == "0.5" and flags["--max-model-len"] == "8192"
        assert "--enable-sleep-mode" in argv
        # the key reaches vLLM through VLLM_API_KEY, never argv, where `ps` would show it
        on_argv = any(ep.api_key in a for a in argv)  # compared, never shown
        assert not on_argv, "the run key is on the server's command line"
        assert "--api-key" not in argv
        start = next(e for e in events.events if e.kind == "server_start")
        env = psutil.Process(start.pid).environ()
        key_in_env = env.get("VLLM_API_KEY") == ep.api_key  # compared, never shown
        assert key_in_env, "VLLM_API_KEY is not the run key"
        assert env.get("VLLM_SERVER_DEV_MODE") == "1"  # or vLLM has no /sleep, /wake_up
        # ... and the server enforces it: /v1 refuses a request without the key
        port = int(ep.base_url.rsplit(":", 1)[1].split("/")[0])
        without, _ = await http_get("127.0.0.1", port, "/v1/models")
        with_key, _ = await http_get("127.0.0.1", port, "/v1/models", {"Authorization": f"Bearer {ep.api_key}"})
        assert (without, with_key) == (401, 200)
        assert next(e for e in events.events if e.kind == "server_ready").duration_s >= 1.0
        key = manager.server_key("v")
        manager.reuse_later = {key}
        await manager.release(key)  # needed later + sleep on + supported: sleeps, not killed
        assert [e.kind for e in events.events][-1] == "server_sleep"
        status, body = await http_get("127.0.0.1", port, "/is_sleeping")
        assert (status, json.loads(body)) == (200, {"is_sleeping": True})
        await manager.acquire("v")
        assert [e.kind for e in events.events][-1] == "server_wake"
        status, body = await http_get("127.0.0.1", port, "/is_sleeping")
        assert (status, json.loads(body)) == (200, {"is_sleeping": False})
    assert [e.kind for e in events.events].count("server_start") == 1


def test_vllm_dev_mode_only_when_sleep_is_on():
    """Dev mode opens vLLM's unauthenticated dev routes: symoe asks for it only to sleep."""
    from symoe_agents.servers.manager import backend_for

    def launch_env(sleep: bool) -> dict[str, str]:
        cfg = run_config(None, {"v": {"backend": "vllm", "model_path": "org/V", "enable_sleep_mode": sleep}},
                         {"skill_inferencer": "v", "experts": ["v"], "aggregator": "v"})  # fmt: skip
        backend = backend_for(cfg.models["v"])
        return backend.launch("127.0.0.1", 8000, "sk-symoe-test").env

    assert launch_env(True)["VLLM_SERVER_DEV_MODE"] == "1"
    assert "VLLM_SERVER_DEV_MODE" not in launch_env(False)
    assert launch_env(False)["VLLM_API_KEY"] == "sk-symoe-test"


async def test_sleep_instead_of_kill_through_a_run(tmp_path, gpus):
    py = wrapper(tmp_path, "sglang-python", "sglang_standin.py")
    models = {"s": sglang(py, "org/S", enable_memory_saver=True), "x": sglang(py, "org/X")}
    cfg = run_config(tmp_path, models, {"skill_inferencer": "s", "experts": ["x"], "aggregator": "s"}, schedule={"sleep": True})
    events = EventLog()
    async with SymbolicMoE(cfg, events=events) as moe:
        results = await moe.solve_batch(QUESTIONS)
    assert all(r.final_answer == "A" for r in results)
    kinds = [(e.kind, e.model) for e in events.events if e.kind.startswith("server_") and e.kind != "server_released"]
    assert kinds == [
        ("server_start", "s"), ("server_ready", "s"), ("server_sleep", "s"),
        ("server_start", "x"), ("server_ready", "x"), ("server_stop", "x"),
        ("server_wake", "s"), ("server_stop", "s"),
    ]  # fmt: skip
    assert moe.last.placement.loads == 2


async def test_co_resident_groups_run_side_by_side(tmp_path, gpus, monkeypatch):
    monkeypatch.setenv("STANDIN_DELAY_S", "0.3")
    py = wrapper(tmp_path, "sglang-python", "sglang_standin.py")
    models = {m: sglang(py, f"org/{m}", memory_gib=20) for m in ("s", "a", "b", "c")}
    cfg = run_config(tmp_path, models, {"skill_inferencer": "s", "experts": ["a", "b", "c"], "aggregator": "s"},
                     schedule={"co_residency": True, "gpus": [0], "device_memory_gib": 80})  # fmt: skip
    events = EventLog()
    async with SymbolicMoE(cfg, events=events, seed=3) as moe:
        await moe.solve_batch(QUESTIONS)
    w = windows(events.events)
    experts = [g for g in w if g.startswith("expert:")]
    assert len(experts) >= 2
    # every pair of expert groups overlapped in time: they ran side by side
    for i, g in enumerate(experts):
        for h in experts[i + 1 :]:
            assert w[g][0] < w[h][1] and w[h][0] < w[g][1], (g, h)
    # co-resident SGLang servers got a memory share from what was free at their start
    argvs = [e.detail["argv"] for e in events.events if e.kind == "server_start" and e.model in ("a", "b", "c")]
    fractions = [float(a[a.index("--mem-fraction-static") + 1]) for a in argvs]
    assert all(0 < f < 0.95 for f in fractions)
    assert fractions == sorted(fractions)  # less is free for each later server: a larger share of it
    assert pids_alive([e.pid for e in events.events if e.kind == "server_start"]) == []


async def test_two_gpus_run_groups_in_parallel_largest_first(tmp_path, gpus, monkeypatch):
    monkeypatch.setenv("STANDIN_DELAY_S", "0.2")
    py = wrapper(tmp_path, "sglang-python", "sglang_standin.py")
    models = {m: sglang(py, f"org/{m}") for m in ("s", "a", "b", "c")}
    cfg = run_config(tmp_path, models, {"skill_inferencer": "s", "experts": ["a", "b", "c"], "aggregator": "s"})
    events = EventLog()
    async with SymbolicMoE(cfg, events=events, seed=5) as moe:
        await moe.solve_batch(QUESTIONS)
    expert_stage = moe.last.placement.stages[1]
    assert {ln.device.gpu_ids for ln in expert_stage.lanes} == {(0,), (1,)}
    sizes = {g.model: len(g.requests) for ln in expert_stage.lanes for g in ln.groups}
    largest = max(sizes, key=sizes.get)
    lane_of = {g.model: ln for ln in expert_stage.lanes for g in ln.groups}
    assert lane_of[largest].groups[0].model == largest or len(lane_of[largest].groups) == 1
    gpus_of = {e.model: e.detail["gpus"] for e in events.events if e.kind == "server_start"}
    for ln in expert_stage.lanes:
        for g in ln.groups:
            assert gpus_of[g.model] == list(ln.device.gpu_ids)  # CUDA_VISIBLE_DEVICES per lane
    w = windows(events.events)
    a, b = (ln.groups[0].name for ln in expert_stage.lanes)
    assert w[a][0] < w[b][1] and w[b][0] < w[a][1]  # the two GPUs worked at the same time


async def test_next_server_waits_for_gpu_memory_release_and_peak_is_recorded(tmp_path, gpus, monkeypatch):
    monkeypatch.setenv("STANDIN_GPU_MIB", "30000")
    monkeypatch.setenv("STANDIN_GPU_RELEASE_S", "1.5")  # the driver frees memory 1.5 s after exit
    py = wrapper(tmp_path, "sglang-python", "sglang_standin.py")
    cfg = run_config(tmp_path, {"a": sglang(py, "org/A"), "b": sglang(py, "org/B")},
                     {"skill_inferencer": "a", "experts": ["a"], "aggregator": "a"}, schedule={"gpus": [0]})  # fmt: skip
    events = EventLog()
    async with ServerManager(cfg, events) as manager:
        assert manager.gpu is not None
        await manager.acquire("a")
        await __import__("asyncio").sleep(1.2)  # let the sampler see the memory
        await manager.acquire("b")  # exclusive: a is released first
    stop_a = next(e for e in events.events if e.kind == "server_stop" and e.model == "a")
    released_a = next(e for e in events.events if e.kind == "server_released" and e.model == "a")
    start_b = next(e for e in events.events if e.kind == "server_start" and e.model == "b")
    assert stop_a.detail["peak_gpu_mib"] == 30000
    assert released_a.detail["gpu_released"] is True
    assert released_a.duration_s >= 1.4  # polled until the memory was really free
    assert start_b.ts >= released_a.ts


async def test_command_backend_runs_a_real_llamacpp_server():
    """The generic backend: any OpenAI-compatible server from a template (here llama.cpp's
    llama-server, with the key on its command line, which symoe redacts from its events)."""
    model = embedded_model_path("smollm2-135m-instruct")
    cmd = llama_server_argv(model, "{port}", "{model}", "--api-key", "{api_key}")
    cfg = parse_config({
        "k": 1,
        "models": {"c": {"backend": "command", "command": cmd, "served_model_name": "smol", "health_path": "/v1/models",
                         "require_model_listed": True, "start_timeout_s": 60}},
        "roles": {"skill_inferencer": "c", "experts": ["c"], "aggregator": "c"},
        "sampling": {"skill_inferencer": {"samples": 2, "max_tokens": 16}, "expert": {"max_tokens": 32},
                     "aggregator": {"max_tokens": 32}},
    }, "t")  # fmt: skip
    events = EventLog()
    async with SymbolicMoE(cfg, events=events) as moe:
        (r,) = await moe.solve_batch(["What is 1 + 1? The options are: (A) 2 (B) 3"])
    assert r.expert_answers[0].completion_tokens > 0 and r.aggregator_answer.completion_tokens > 0
    starts = [e for e in events.events if e.kind == "server_start"]
    assert len(starts) == 1 and "***" in starts[0].detail["argv"]  # key redacted from the template


def overlap_config(tmp_path):
    """Skills on s, experts on a, the aggregator on b, all on one GPU with overlap: a and b
    fit together, so b is started while a's last requests decode."""
    py = wrapper(tmp_path, "sglang-python", "sglang_standin.py")
    models = {m: sglang(py, f"org/{m}", memory_gib=20) for m in ("s", "a", "b")}
    return run_config(tmp_path, models, {"skill_inferencer": "s", "experts": ["a"], "aggregator": "b"},
                      schedule={"overlap": True, "gpus": [0], "device_memory_gib": 80})  # fmt: skip


async def test_overlap_starts_the_next_server_while_the_last_requests_decode(tmp_path, gpus, monkeypatch):
    monkeypatch.setenv("STANDIN_DELAY_S", "0.5")
    cfg = overlap_config(tmp_path)
    events = EventLog()
    async with SymbolicMoE(cfg, events=events) as moe:
        await moe.solve_batch(QUESTIONS[:2])
    assert moe.last.placement.stages[1].prestart_next  # planned: a and b fit together
    experts_end = next(e.ts for e in events.events if e.kind == "group_end" and e.group == "expert:a")
    b_ready = next(e.ts for e in events.events if e.kind == "server_ready" and e.model == "b")
    assert b_ready < experts_end  # b was loading while a's last requests decoded
    assert [e.model for e in events.events if e.kind == "server_start"] == ["s", "a", "b"]


async def test_a_run_cancelled_while_the_next_server_prestarts_cuts_that_start_short(tmp_path, gpus, monkeypatch):
    """Overlap's prestart of the aggregator's server is under way when the caller cancels:
    that start is stopped, not awaited to readiness, and the cancellation reaches the caller."""
    import asyncio

    monkeypatch.setenv("STANDIN_DELAY_S", "0.5")
    monkeypatch.setenv("STANDIN_LOAD_S", "2")
    cfg = overlap_config(tmp_path)
    events = EventLog()
    async with SymbolicMoE(cfg, events=events) as moe:
        task = asyncio.create_task(moe.solve_batch(QUESTIONS[:2]))
        events.listen(lambda e: task.cancel() if e.kind == "server_start" and e.model == "b" else None)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        b = [e for e in events.events if e.model == "b" and e.kind.startswith("server_")]
        assert [e.kind for e in b if e.kind != "server_released"] == ["server_start", "server_stop"]  # never ready
        (stop,) = [e for e in b if e.kind == "server_stop"]
        assert stop.detail["reason"] == "cancelled while starting"
        assert pids_alive([e.pid for e in events.events if e.kind == "server_start"]) == []
