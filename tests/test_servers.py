"""Server lifecycle on real llama.cpp servers, and SGLang's protocol on a named stand-in."""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import openai
import psutil
import pytest

from conftest import ROOT, pids_alive
from symoe_agents.config import load_config, parse_config
from symoe_agents.errors import ServerStartError
from symoe_agents.events import EventLog
from symoe_agents.servers import ServerManager, ServerProcess, free_port
from symoe_agents.servers.process import tail

STANDIN = ROOT / "tests" / "standins" / "sglang_standin.py"


def embedded_manager(**server_settings):
    cfg = load_config()
    if server_settings:
        data = cfg.model_dump()
        data["servers"].update(server_settings)
        cfg = parse_config(data, "test")
    events = EventLog()
    return ServerManager(cfg, events), events


async def test_llamacpp_start_ready_answer_stop():
    manager, events = embedded_manager()
    async with manager:
        ep = await manager.acquire("smollm2")
        assert ep.base_url.startswith("http://127.0.0.1:")
        pid = events.events[-1].pid
        proc = psutil.Process(pid)
        listening = [c.laddr for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert listening and all(a.ip == "127.0.0.1" for a in listening)  # loopback only
        # llama-server with 16 slots of the model's context and every core (one server at a time);
        # the key only in its environment
        from symoe_agents.servers.cpu import available_cores

        cmd = proc.cmdline()
        assert cmd[0].endswith("llama-server") and cmd[cmd.index("-np") + 1] == "16" and cmd[cmd.index("-c") + 1] == str(16 * 2048)
        assert cmd[cmd.index("--threads") + 1] == str(available_cores())
        # the embedded pool serves SmolLM2's BF16 copy where the CPU has AVX512_BF16 (made once in
        # symoe's cache), else the file as shipped
        from symoe_agents.servers.embedded import embedded_model_path
        from symoe_agents.servers.gguf_copy import copy_path

        assert cmd[cmd.index("-m") + 1] == str(copy_path(embedded_model_path("smollm2-135m-instruct"), "auto"))
        assert ep.api_key not in " ".join(cmd) and proc.environ().get("LLAMA_API_KEY") == ep.api_key
        client = openai.AsyncOpenAI(base_url=ep.base_url, api_key=ep.api_key, max_retries=0)
        r = await client.chat.completions.create(
            model=ep.served_model, messages=[{"role": "user", "content": "Say hi"}], max_tokens=8
        )
        assert r.usage.completion_tokens > 0
        bad = openai.AsyncOpenAI(base_url=ep.base_url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):  # the per-run key is enforced
            await bad.models.list()
        await client.close()
        await bad.close()
        # same weights behind another name: reused, no second start
        ep2 = await manager.acquire("smollm2-focused")
        assert ep2.base_url == ep.base_url
    kinds = [e.kind for e in events.events]
    assert kinds == ["server_start", "server_ready", "server_stop", "server_released"]
    assert events.events[-1].detail["port_free"] is True
    assert pids_alive([pid]) == []


async def test_switching_models_stops_the_previous_server_first():
    manager, events = embedded_manager()
    async with manager:
        await manager.acquire("smollm2")
        first = events.events[0].pid
        await manager.acquire("gemma3")
        assert pids_alive([first]) == []
    assert [(e.kind, e.model) for e in events.events] == [
        ("server_start", "smollm2"), ("server_ready", "smollm2"), ("server_stop", "smollm2"),
        ("server_released", "smollm2"),  # the next server starts only after the port is free
        ("server_start", "gemma3"), ("server_ready", "gemma3"), ("server_stop", "gemma3"),
        ("server_released", "gemma3"),
    ]  # fmt: skip


async def test_a_llama_server_needed_later_waits_idle_instead_of_being_stopped():
    """[schedule] sleep on a llama-server: released while another model runs, it stays up,
    using no CPU, and is taken up again without a second load."""
    manager, events = embedded_manager()
    assert manager.config.schedule.sleep  # the embedded pool asks for it
    async with manager:
        ep = await manager.acquire("smollm2")
        smol = events.events[0].pid
        manager.reuse_later = {manager.server_key("smollm2")}
        await manager.acquire("gemma3")  # exclusive: smollm2 is released, and sleeps
        assert pids_alive([smol]) == [smol]
        proc = psutil.Process(smol)
        before = sum(proc.cpu_times()[:2])
        await asyncio.sleep(1.0)
        assert sum(proc.cpu_times()[:2]) - before < 0.05  # idle: its threads block, no core is used
        again = await manager.acquire("smollm2")
        assert again.base_url == ep.base_url
    assert [(e.kind, e.model) for e in events.events if e.kind != "server_released"] == [
        ("server_start", "smollm2"), ("server_ready", "smollm2"), ("server_sleep", "smollm2"),
        ("server_start", "gemma3"), ("server_ready", "gemma3"), ("server_stop", "gemma3"),
        ("server_wake", "smollm2"), ("server_stop", "smollm2"),
    ]  # fmt: skip
    assert pids_alive([smol]) == []


async def test_an_idle_llama_server_no_later_stage_needs_is_stopped_when_released():
    """A server kept idle for later stops once the plan no longer needs it: the stage that
    follows releases it, and its memory goes back."""
    manager, events = embedded_manager()
    async with manager:
        await manager.acquire("smollm2")
        smol, key = events.events[0].pid, manager.server_key("smollm2")
        manager.reuse_later = {key}
        await manager.acquire("gemma3")  # smollm2 sleeps
        manager.reuse_later = set()
        await manager.release(key)
        assert pids_alive([smol]) == []
        assert manager.running_keys() == [manager.server_key("gemma3")]
    kinds = [(e.kind, e.model) for e in events.events if e.kind != "server_released"]
    assert kinds[kinds.index(("server_sleep", "smollm2")) + 1:].count(("server_stop", "smollm2")) == 1
    assert ("server_wake", "smollm2") not in kinds


async def test_missing_model_file_fails_fast_with_log_tail(tmp_path):
    cfg = parse_config(
        {
            "models": {"m": {"backend": "llamacpp", "model_path": str(tmp_path / "absent.gguf")}},
            "roles": {"skill_inferencer": "m", "experts": ["m"], "aggregator": "m"},
        },
        "test",
    )
    manager = ServerManager(cfg, EventLog())
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(ServerStartError) as err:
        async with manager:
            await manager.acquire("m")
    assert loop.time() - began < 30  # the process exit is seen at once, not at the deadline
    assert "exited with code" in str(err.value)
    assert "absent.gguf" in err.value.log_tail


async def test_immediate_exit_fails_fast_with_log_tail():
    """A server that exits at once (here: llama-server rejecting an unknown flag, exit 1)."""
    cfg = parse_config(
        {
            "models": {"m": {"backend": "llamacpp", "embedded": "smollm2-135m-instruct", "extra_args": ["--no-such-flag"]}},
            "roles": {"skill_inferencer": "m", "experts": ["m"], "aggregator": "m"},
            "servers": {"start_timeout_s": 120},
        },
        "test",
    )
    events = EventLog()
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(ServerStartError) as err:
        async with ServerManager(cfg, events) as manager:
            await manager.acquire("m")
    assert loop.time() - began < 30
    assert "exited with code 1" in str(err.value) and "invalid argument: --no-such-flag" in err.value.log_tail
    assert pids_alive([e.pid for e in events.events if e.kind == "server_start"]) == []


@pytest.mark.parametrize("taken_tries", [1, 99], ids=["taken-once", "always-taken"])
async def test_port_already_taken(monkeypatch, taken_tries):
    """Another program holds the port symoe picked: the start is retried on a new port; if
    every try loses, the error says so with the log tail, well within the deadline."""
    import socket

    from symoe_agents.servers import manager as manager_mod

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    picks = []

    def pick() -> int:
        picks.append(taken if len(picks) < taken_tries else free_port())
        return picks[-1]

    monkeypatch.setattr(manager_mod, "free_port", pick)
    manager, events = embedded_manager(start_timeout_s=120)
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        async with manager:
            if taken_tries == 1:
                ep = await manager.acquire("smollm2")
                assert ep.base_url != f"http://127.0.0.1:{taken}/v1"
            else:
                with pytest.raises(ServerStartError) as err:
                    await manager.acquire("smollm2")
                assert f"couldn't bind HTTP server socket, hostname: 127.0.0.1, port: {taken}" in err.value.log_tail  # llama-server's words
                assert loop.time() - began < 60
    finally:
        squatter.close()
    failed = [e for e in events.events if e.kind == "server_failed"]
    assert len(failed) == min(taken_tries, 3)  # three tries at most
    assert pids_alive([e.pid for e in events.events if e.kind == "server_start"]) == []


async def spawn_escaper(tmp_path) -> tuple[ServerProcess, int]:
    """A 'server' whose child leaves its session, as SGLang's scheduler processes do."""
    pidfile = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time;"
        f"c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True);"
        f"open({str(pidfile)!r}, 'w').write(str(c.pid));"
        "time.sleep(600)"
    )
    proc = ServerProcess("escaper", [sys.executable, "-c", code], free_port(), tmp_path / "log")
    proc.spawn()
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text():
            break
        await asyncio.sleep(0.05)
    child = int(pidfile.read_text())
    assert os.getsid(child) != os.getsid(proc.pid)  # it really escaped the session
    return proc, child


async def test_server_process_stop_kills_an_escaped_child(tmp_path):
    """A child that left the process group (new session) is still ended by stop()."""
    proc, child = await spawn_escaper(tmp_path)
    await proc.stop(grace=2)
    await asyncio.sleep(0.2)
    assert pids_alive([proc.pid, child]) == []


async def test_watchdog_kills_server_and_escaped_child_when_symoe_vanishes(tmp_path):
    """symoe SIGKILLed closes its end of the watchdog's pipe; closing it here without the
    'bye' of a normal stop is the same event as the kernel sees it."""
    proc, child = await spawn_escaper(tmp_path)
    dog = proc.watchdog
    assert dog is not None and os.getsid(dog.pid) not in (os.getsid(0), os.getsid(proc.pid))  # a session of its own
    await asyncio.sleep(1.2)  # let it snapshot the process tree
    dog.stdin.close()
    for _ in range(100):
        if not pids_alive([proc.pid, child]):
            break
        await asyncio.sleep(0.05)
    assert pids_alive([proc.pid, child]) == []
    assert dog.wait(timeout=5) == 0
    await proc.stop(grace=1)  # symoe's own bookkeeping after the fact: nothing left to do


def test_server_runs_with_the_parent_death_signal(tmp_path):
    """Linux: the launcher sets PR_SET_PDEATHSIG before exec, visible in /proc as a signal
    number; the server's command line is the server's own, not the launcher's."""
    code = "import time; time.sleep(600)"
    proc = ServerProcess("sleeper", [sys.executable, "-c", code], free_port(), tmp_path / "log")
    proc.spawn()
    try:
        for _ in range(250):  # the launcher's own command line shows until it execs
            cmd = psutil.Process(proc.pid).cmdline()
            if cmd == [sys.executable, "-c", code]:
                break
            time.sleep(0.02)
        assert cmd == [sys.executable, "-c", code]
        # PR_GET_PDEATHSIG reads only the caller's own setting, so ask the process itself
        check = subprocess.run(
            [sys.executable, "-S", "-I", str(ROOT / "servers" / "launcher.py"), str(os.getpid()), sys.executable, "-c",
             "import ctypes; v = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(v)); print(v.value)"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert check.stdout.strip() == str(int(signal.SIGKILL))
    finally:
        proc.kill_now()


async def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path, monkeypatch):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"
    proc = ServerProcess("stubborn", [sys.executable, "-c", code], free_port(), tmp_path / "log")
    proc.spawn()
    dog = proc.watchdog
    assert dog is not None
    await asyncio.sleep(0.5)

    def blocking_wait(self, timeout=None):  # the event loop must never sit in a process wait
        raise AssertionError(f"blocking wait on pid {self.pid} during an async stop")

    monkeypatch.setattr(subprocess.Popen, "wait", blocking_wait)
    await proc.stop(grace=0.5)
    monkeypatch.undo()
    assert proc.proc.returncode == -9 and dog.returncode == 0  # the server killed, its watchdog told and reaped
    assert "up" in tail(tmp_path / "log")


# -- SGLang, against a stand-in (SGLang cannot run on these machines) --------------------


def sglang_config(tmp_path, **extra):
    fake_python = tmp_path / "sglang-python"
    fake_python.write_text(f"#!/bin/sh\nexec {sys.executable} {STANDIN} \"$@\"\n")
    fake_python.chmod(0o755)
    model = {"backend": "sglang", "model_path": "org/Some-7B", "python": str(fake_python),
             "served_model_name": "some-7b", "mem_fraction_static": 0.7, "context_length": 4096,
             "random_seed": 3, "start_timeout_s": 20, **extra}  # fmt: skip
    return parse_config({"models": {"g": model}, "roles": {"skill_inferencer": "g", "experts": ["g"], "aggregator": "g"}}, "t")


async def test_sglang_command_line_and_readiness_protocol(tmp_path, monkeypatch):
    argv_out = tmp_path / "argv.json"
    monkeypatch.setenv("STANDIN_ARGV_OUT", str(argv_out))
    monkeypatch.setenv("STANDIN_LOAD_S", "1.5")  # 503 for 1.5 s, then 200
    events = EventLog()
    async with ServerManager(sglang_config(tmp_path), events) as manager:
        ep = await manager.acquire("g")
        ready = next(e for e in events.events if e.kind == "server_ready")
        assert ready.duration_s >= 1.5  # the 503 phase was waited out
        argv = json.loads(argv_out.read_text())
        assert argv[:2] == ["-m", "sglang.launch_server"]
        flags = dict(zip(argv[2::2], argv[3::2]))
        assert flags["--model-path"] == "org/Some-7B"
        assert flags["--served-model-name"] == "some-7b"
        assert flags["--host"] == "127.0.0.1"
        assert flags["--mem-fraction-static"] == "0.7"
        assert flags["--context-length"] == "4096"
        assert flags["--random-seed"] == "3"
        assert flags["--api-key"] == ep.api_key
        client = openai.AsyncOpenAI(base_url=ep.base_url, api_key=ep.api_key, max_retries=0)
        r = await client.chat.completions.create(model=ep.served_model, messages=[{"role": "user", "content": "x"}])
        assert "answer is" in r.choices[0].message.content
        await client.close()
    start = next(e for e in events.events if e.kind == "server_start")
    assert ep.api_key not in json.dumps(start.detail)  # the key is redacted in events


async def test_sglang_exit_during_start_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_LOAD_S", "60")
    monkeypatch.setenv("STANDIN_EXIT_CODE", "7")
    with pytest.raises(ServerStartError, match="exited with code 7") as err:
        async with ServerManager(sglang_config(tmp_path), EventLog()) as manager:
            await manager.acquire("g")
    assert "stand-in serving some-7b" in err.value.log_tail


async def test_sglang_slow_start_times_out_and_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_LOAD_S", "60")
    events = EventLog()
    with pytest.raises(ServerStartError, match="not ready after 2 s"):
        async with ServerManager(sglang_config(tmp_path, start_timeout_s=2), events) as manager:
            await manager.acquire("g")
    failed = next(e for e in events.events if e.kind == "server_failed")
    assert pids_alive([failed.pid]) == []


async def test_sglang_group_kill_ends_the_escaped_scheduler_child(tmp_path, monkeypatch):
    escapee = tmp_path / "escapee.pid"
    monkeypatch.setenv("STANDIN_ESCAPEE", str(escapee))
    monkeypatch.setenv("STANDIN_LOAD_S", "0.2")
    async with ServerManager(sglang_config(tmp_path), EventLog()) as manager:
        await manager.acquire("g")
        child = int(escapee.read_text())
        assert pids_alive([child]) == [child]
    await asyncio.sleep(0.2)
    assert pids_alive([child]) == []


def test_run_keys_are_random_and_never_look_like_a_flag():
    """Regression: a urlsafe key may start with '-', which argparse reads as an option
    ('--api-key: expected one argument'), found by the SGLang stand-in."""
    keys = {ServerManager(load_config(), EventLog())._api_key for _ in range(200)}
    assert len(keys) == 200
    assert all(k.startswith("sk-symoe-") and k.replace("-", "").isalnum() for k in keys)


# -- the stand-ins themselves: they refuse what the real servers refuse -----------------

VLLM_STANDIN = ROOT / "tests" / "standins" / "vllm_standin.py"


@contextlib.contextmanager
def standin(argv: list[str], env: dict[str, str] | None = None):
    """A stand-in server on a free loopback port, ready (``/health`` 200) when yielded."""
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "STANDIN_"))}
    proc = subprocess.Popen([sys.executable, *argv, "--host", "127.0.0.1", "--port", str(port)],
                            env={**base, "STANDIN_LOAD_S": "0.2", **(env or {})}, stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while call(port, "GET", "/health")[0] != 200:
            assert proc.poll() is None and time.monotonic() < deadline, "stand-in did not come up"
            time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait()


def call(port: int, method: str, path: str, key: str | None = None, body: bytes | None = None) -> tuple[int, object]:
    """(status, JSON body or None); 0 when the port refuses the connection."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            status, data = r.status, r.read()
    except urllib.error.HTTPError as err:
        status, data = err.code, err.read()
    except ConnectionRefusedError:
        return 0, None
    except urllib.error.URLError as err:
        if isinstance(err.reason, ConnectionRefusedError):
            return 0, None
        raise
    return status, json.loads(data) if data else None


def vllm_argv(*flags: str) -> list[str]:
    return [str(VLLM_STANDIN), "serve", "org/V", *flags]


def test_vllm_standin_refuses_sleep_without_dev_mode():
    """vLLM registers /sleep and /wake_up only with VLLM_SERVER_DEV_MODE=1; --enable-sleep-mode
    alone leaves them unregistered (FastAPI: 404), which is why symoe sets the variable."""
    with standin(vllm_argv("--enable-sleep-mode")) as port:
        assert call(port, "POST", "/sleep?level=1", body=b"{}") == (404, {"detail": "Not Found"})
        assert call(port, "POST", "/wake_up", body=b"{}") == (404, {"detail": "Not Found"})
        assert call(port, "GET", "/is_sleeping") == (404, {"detail": "Not Found"})
    with standin(vllm_argv("--enable-sleep-mode"), {"VLLM_SERVER_DEV_MODE": "1"}) as port:
        assert call(port, "POST", "/sleep?level=1", body=b"{}") == (200, {"status": "sleeping", "level": 1})
        assert call(port, "GET", "/is_sleeping") == (200, {"is_sleeping": True})
        assert call(port, "POST", "/wake_up", body=b"{}") == (200, {"status": "awake", "tags": None})
        assert call(port, "GET", "/is_sleeping") == (200, {"is_sleeping": False})
        assert call(port, "POST", "/sleep?level=3")[0] == 400  # level is 0..2
        assert call(port, "GET", "/sleep")[0] == 405


def test_vllm_standin_resolves_its_key_as_vllm_does():
    """--api-key, else VLLM_API_KEY; only /v1 (and /v2, /inference, /cohere) is guarded."""
    with standin(vllm_argv(), {"VLLM_API_KEY": "k-env"}) as port:
        assert call(port, "GET", "/v1/models") == (401, {"error": "Unauthorized"})
        assert call(port, "GET", "/v1/models", key="wrong")[0] == 401
        assert call(port, "GET", "/v1/models", key="k-env")[0] == 200
        assert call(port, "GET", "/v1/nothing")[0] == 401  # auth comes before routing
        assert call(port, "GET", "/health") == (200, None)  # unguarded
        assert call(port, "GET", "/nothing") == (404, {"detail": "Not Found"})
    with standin(vllm_argv("--api-key", "k-arg"), {"VLLM_API_KEY": "k-env"}) as port:
        assert call(port, "GET", "/v1/models", key="k-arg")[0] == 200  # the flag wins
        assert call(port, "GET", "/v1/models", key="k-env")[0] == 401
    with standin(vllm_argv(), {"VLLM_API_KEY": ""}) as port:
        assert call(port, "GET", "/v1/models")[0] == 200  # an empty key turns auth off


def test_sglang_standin_routes_and_auth():
    """SGLang: only /health, /ready, /metrics skip the key; the memory routes always exist."""
    argv = [str(STANDIN), "-m", "sglang.launch_server", "--model-path", "org/S", "--api-key", "k"]
    with standin(argv, {"STANDIN_LOAD_S": "0.4"}) as port:
        assert call(port, "GET", "/health_generate") == (200, None)
        assert call(port, "GET", "/v1/models") == (401, {"error": "Unauthorized"})
        assert call(port, "GET", "/nothing")[0] == 401  # every other path needs the key
        assert call(port, "GET", "/nothing", key="k") == (404, {"detail": "Not Found"})
        # no --enable-memory-saver: the routes answer 200 (and release nothing)
        assert call(port, "POST", "/release_memory_occupation", body=b"{}") == (401, {"error": "Unauthorized"})
        assert call(port, "POST", "/release_memory_occupation", key="k", body=b"{}") == (200, None)
        assert call(port, "POST", "/resume_memory_occupation", key="k", body=b"{}") == (200, None)


async def test_a_run_cancelled_while_a_model_copy_is_made_stops_the_copy():
    """The manager makes a model's copy in a worker thread; cancelling the start tells the
    thread to stop (its Event), so exiting does not wait out the copy."""
    import threading

    manager, events = embedded_manager()
    real = manager._backends["smollm2"]
    seen: list[threading.Event] = []

    class SlowCopy:  # the real backend, with a prepare that takes as long as it is allowed to
        def __getattr__(self, name):
            return getattr(real, name)

        def prepare(self, cancelled):
            seen.append(cancelled)
            cancelled.wait(30)

    manager._backends["smollm2"] = SlowCopy()
    async with manager:
        task = asyncio.create_task(manager.acquire("smollm2"))
        while not seen:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen[0].is_set()
    assert not [e for e in events.events if e.kind == "server_start"]
    with pytest.raises(ServerStartError, match="the run is closed"):  # a closed manager starts nothing
        await manager.acquire("smollm2")
