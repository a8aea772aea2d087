"""The server manager: starts, reuses, sleeps, restarts and stops the local model servers.

``acquire(model)`` returns an endpoint for a model. For a local backend it makes that
model's server run: if the same server is already up (the same weights behind another
model name, or the next group of the same model) it is reused, if it is asleep it is woken.
With ``exclusive=True`` (one GPU, one model at a time) every other local server is released
first, and the next server starts only once the released one's process group is gone, its
port is free and, where ``nvidia-smi`` is available, the GPU memory it held is released:
all polled under ``servers.release_timeout_s``, never a fixed sleep. Hosted endpoints have no
lifecycle and leave running servers alone.

A released server that the run needs again later (``reuse_later``) is put to sleep instead
of being killed when ``schedule.sleep`` is on and its backend supports it (SGLang with
``enable_memory_saver``, vLLM with ``enable_sleep_mode``).

Every start, ready, stop, release, sleep, wake, restart and failure is an event; server
events carry start-to-ready time and, where measurable, peak GPU memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil

from symoe_agents.config import CommandModel, Config, LlamaCppModel, OpenAIModel, SGLangModel, VLLMModel
from symoe_agents import redaction
from symoe_agents.errors import ServerStartError
from symoe_agents.events import EventLog

from . import cpu
from .base import Backend, Endpoint
from .command import CommandBackend
from .gpu import GpuMonitor, MemoryShare
from .hosted import hosted_endpoint
from .llamacpp import LlamaCppBackend
from .process import LOOPBACK, ServerProcess, free_port, port_is_free, tail
from .sglang import SGLangBackend
from .vllm import VLLMBackend

# what servers log when their port is taken: Python servers (uvicorn) and llama-server
_PORT_TAKEN = ("address already in use", "errno 98", "only one usage of each socket address", "couldn't bind http server socket")
_START_ATTEMPTS = 3  # a port grabbed by someone else between probe and bind gets a new port


def backend_for(model) -> Backend | None:
    if isinstance(model, LlamaCppModel):
        return LlamaCppBackend(model)
    if isinstance(model, SGLangModel):
        return SGLangBackend(model)
    if isinstance(model, VLLMModel):
        return VLLMBackend(model)
    if isinstance(model, CommandModel):
        return CommandBackend(model)
    assert isinstance(model, OpenAIModel)
    return None


class _Running:
    def __init__(self, key: str, model: str, process: ServerProcess, endpoint: Endpoint, gpu_ids: tuple[int, ...] | None, probe):
        self.key = key
        self.probe = probe  # the readiness rule of its launch, reused for health checks
        self.model = model
        self.process = process
        self.endpoint = endpoint
        self.gpu_ids = gpu_ids
        self.ready_at = time.monotonic()
        self.asleep = False
        self.peak_gpu_mib: int | None = None
        self.pids: set[int] = {process.pid} if process.pid else set()
        self.sampler: asyncio.Task[None] | None = None
        self.stopping: asyncio.Future[None] | None = None  # the stop under way, which a cancel cannot cut short


class ServerManager:
    def __init__(
        self,
        config: Config,
        events: EventLog,
        gpu_monitor: GpuMonitor | None | bool = True,
        cpu_servers_at_once: int | None = None,
    ):
        """``cpu_servers_at_once``: CPU servers that will run side by side (default: what the
        config's schedule allows); their threads divide the cores among them."""
        self.config = config
        self.events = events
        # hex only: a key starting with "-" would be read as a flag by the servers' argparse
        self._api_key = "sk-symoe-" + secrets.token_hex(20)
        redaction.hide_from_children(config.secret_env_names())  # hosted keys never reach a local server
        self._backends = {name: backend_for(m) for name, m in config.models.items()}
        self._keys: dict[str, str | None] = {}
        self._cpu_at_once_given = cpu_servers_at_once is not None
        self.cpu_threads = 0
        self.divide_cores(devices=1, at_once=cpu_servers_at_once)
        self._running: dict[str, _Running] = {}
        self._lock = asyncio.Lock()
        self._closed = False
        self._serial = 0
        self._failed = False
        # seconds each model's servers spent starting (and waking): a group's load time is
        # what grew while it acquired its server, not the wait for the lock or another's stop
        self.loading_s: dict[str, float] = {}
        self.reuse_later: set[str] = set()
        self.gpu: GpuMonitor | None = GpuMonitor.detect() if gpu_monitor is True else (gpu_monitor or None)
        self._log_dir: Path | None = Path(config.servers.log_dir) if config.servers.log_dir else None
        self._own_log_dir = config.servers.log_dir is None

    def divide_cores(self, devices: int, at_once: int | None = None, cores: int | None = None) -> None:
        """Threads per CPU server: the cores divided by the CPU servers that may run at once
        (``at_once``, else what the schedule allows on ``devices`` devices). The controller
        calls it again once it knows the devices, before any server starts."""
        if at_once is None:
            if self._cpu_at_once_given:
                return
            n_experts = len(cpu.cpu_server_keys(self.config, self.server_key, self.config.roles.experts))
            at_once = cpu.cpu_servers_at_once(self.config, len(cpu.cpu_server_keys(self.config, self.server_key)), devices, n_experts)
        # ``cores``: what a cluster node offers (its Ray CPU resource), not this process's mask
        self.cpu_threads = cpu.threads_per_server(cores or cpu.available_cores(), at_once)
        for backend in self._backends.values():
            if isinstance(backend, LlamaCppBackend):
                backend.threads = self.cpu_threads

    # -- identity --------------------------------------------------------------------

    @property
    def log_dir(self) -> Path:
        """Server logs; a temporary folder (made on first use) unless the config names one."""
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="symoe-logs-"))
        return self._log_dir

    def server_key(self, model: str) -> str | None:
        """Memoised: a key hashes the model's whole launch config, and the liveness check
        before every request asks for it (80 µs a time, uncached, on the hot path)."""
        if model not in self._keys:
            backend = self._backends[model]
            self._keys[model] = backend.server_key() if backend else None
        return self._keys[model]

    def identity(self, model: str) -> str:
        """What determines a model's answers, for the answer cache: the server identity
        (weights and launch options) or the hosted endpoint and model name. Never a port
        or a key, so it is stable from run to run."""
        key = self.server_key(model)
        if key is not None:
            return key
        cfg = self.config.model(model)
        assert isinstance(cfg, OpenAIModel)
        return f"openai:{cfg.base_url}:{cfg.model}"

    def server_keys(self) -> dict[str, str | None]:
        return {name: self.server_key(name) for name in self.config.models}

    def backend(self, model: str) -> Backend | None:
        return self._backends[model]

    @property
    def running(self) -> str | None:
        """The one awake server, when exactly one is up (the sequential case)."""
        awake = [k for k, r in self._running.items() if not r.asleep]
        return awake[0] if len(awake) == 1 else None

    def running_keys(self) -> list[str]:
        return list(self._running)

    # -- acquire / release -----------------------------------------------------------

    async def acquire(
        self,
        model: str,
        *,
        exclusive: bool = True,
        gpu_ids: tuple[int, ...] | None = None,
        share: MemoryShare | None = None,
    ) -> Endpoint:
        cfg = self.config.model(model)
        if isinstance(cfg, OpenAIModel):
            return hosted_endpoint(model, cfg)
        key = self.server_key(model)
        assert key is not None
        async with self._lock:
            if self._closed:
                raise ServerStartError(model, "the run is closed (its servers were stopped); start a new one")
            if exclusive:
                for other in [k for k in self._running if k != key]:
                    await self._release(other)
            run = self._running.get(key)
            if run is not None and run.stopping is not None:  # a stop cut short earlier: let it end, then start anew
                await self._stop(key)
                run = None
            if run is not None:
                if run.asleep:
                    await self._wake(run)
                return run.endpoint
            run = await self._start(model, key, gpu_ids, share)
            self._running[key] = run
            return run.endpoint

    async def release(self, key: str) -> None:
        async with self._lock:
            await self._release(key)

    async def stop(self, key: str, reason: str) -> None:
        """Stop one server now, asleep or not (``symoe serve`` releasing an idle model)."""
        async with self._lock:
            await self._stop(key, reason=reason)

    async def release_all(self) -> None:
        """Stop everything. Safe to call repeatedly and while being cancelled."""
        async with self._lock:
            interrupted: BaseException | None = None
            for key in list(self._running):
                try:
                    await self._stop(key)
                except BaseException as exc:  # every stop is still started; a cancel, else the first error, goes on after
                    if not isinstance(interrupted, asyncio.CancelledError):
                        interrupted = exc
            if interrupted is not None:
                raise interrupted

    # -- health and restart ----------------------------------------------------------

    def process_alive(self, model: str) -> bool:
        run = self._running.get(self.server_key(model) or "")
        return bool(run and run.process.proc and run.process.proc.poll() is None)

    async def healthy(self, model: str, timeout: float = 10.0) -> bool:
        """The server's process is alive and its readiness probe answers in time."""
        key = self.server_key(model)
        run = self._running.get(key or "")
        if run is None or not self.process_alive(model):
            return False
        try:
            async with asyncio.timeout(timeout):
                return await run.probe(run.process.port)
        except (OSError, asyncio.TimeoutError):
            return False

    def process_pid(self, model: str) -> int | None:
        """The pid of ``model``'s server process now (a restart changes it)."""
        run = self._running.get(self.server_key(model) or "")
        return run.process.pid if run is not None else None

    def endpoint_of(self, model: str) -> Endpoint | None:
        run = self._running.get(self.server_key(model) or "")
        return run.endpoint if run is not None else None

    async def restart(self, model: str, reason: str, seen_pid: int | None = None) -> Endpoint:
        """Kill a dead or hung server and start it again on the same devices. ``seen_pid``:
        the process the caller saw fail; if another caller has restarted it since (groups of
        several serve windows share a server), the new one is left alone and returned."""
        key = self.server_key(model)
        assert key is not None
        async with self._lock:
            old = self._running.get(key)
            if seen_pid is not None and old is not None and old.process.pid != seen_pid and old.stopping is None \
                    and old.process.proc is not None and old.process.proc.poll() is None:  # fmt: skip
                return old.endpoint
            gpu_ids = old.gpu_ids if old else None
            if old is not None:
                await self._stop(key, grace=1.0, reason=f"restart: {reason}")
            self.events.emit("server_restart", model=model, server=key, detail={"reason": reason})
            run = await self._start(model, key, gpu_ids, None)
            self._running[key] = run
            return run.endpoint

    # -- internals ---------------------------------------------------------------------

    async def _start(self, model: str, key: str, gpu_ids: tuple[int, ...] | None, share: MemoryShare | None) -> _Running:
        backend = self._backends[model]
        assert backend is not None
        last_error: ServerStartError | None = None
        prepare = getattr(backend, "prepare", None)
        if prepare is not None:  # file work (a model copy: seconds) happens off the event loop
            stop = threading.Event()
            try:
                await asyncio.to_thread(prepare, stop)
            except asyncio.CancelledError:
                stop.set()  # the thread stops at its next tensor, so exiting does not wait out the copy
                raise
            except ServerStartError as exc:
                self.events.emit("server_failed", model=model, server=key, detail={"reason": exc.reason})
                self._failed = True
                raise
        for _attempt in range(_START_ATTEMPTS):
            port = free_port()
            try:
                launch = backend.launch(LOOPBACK, port, self._api_key, share)
            except ServerStartError as exc:
                self.events.emit("server_failed", model=model, server=key, detail={"reason": exc.reason})
                self._failed = True
                raise
            self._serial += 1
            log_path = self.log_dir / f"{self._serial:02d}-{model}.log"
            env = dict(launch.env)
            if gpu_ids is not None:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu_ids))
            proc = ServerProcess(model, launch.argv, port, log_path, env)  # hosted keys hidden: see __init__
            redacted = [a.replace(self._api_key, "***") for a in launch.argv]
            proc.spawn()
            self.events.emit(
                "server_start", model=model, server=key, pid=proc.pid, port=port,
                detail={"argv": redacted, "log": str(log_path), "gpus": list(gpu_ids) if gpu_ids is not None else None},
            )  # fmt: skip
            timeout = launch.start_timeout_s or self.config.servers.start_timeout_s
            try:
                took = await proc.wait_ready(launch.probe, timeout)
            except ServerStartError as exc:
                await asyncio.shield(proc.stop(self.config.servers.stop_grace_s))  # not listed yet: a cancel must not cut it short
                self.events.emit("server_failed", model=model, server=key, pid=proc.pid, port=port, detail={"reason": exc.reason})
                last_error = exc
                if any(s in tail(log_path).lower() for s in _PORT_TAKEN):
                    continue  # lost a port race: try another port
                break
            except BaseException:
                await asyncio.shield(proc.stop(self.config.servers.stop_grace_s))
                self.events.emit("server_stop", model=model, server=key, pid=proc.pid, port=port, detail={"reason": "cancelled while starting"})
                raise
            self.events.emit("server_ready", model=model, server=key, pid=proc.pid, port=port, duration_s=round(took, 3))
            self.loading_s[model] = self.loading_s.get(model, 0.0) + took
            endpoint = Endpoint(base_url=f"http://{LOOPBACK}:{port}/v1", served_model=launch.served_model, api_key=self._api_key)
            run = _Running(key, model, proc, endpoint, gpu_ids, launch.probe)
            run.pids |= {p.pid for p in proc._group_members()}
            if self.gpu is not None:
                run.sampler = asyncio.create_task(self._sample_gpu(run))
            return run
        self._failed = True
        assert last_error is not None
        raise last_error

    async def _release(self, key: str) -> None:
        run = self._running.get(key)
        if run is None:
            return
        if run.stopping is not None or (run.asleep and key not in self.reuse_later):
            await self._stop(key)  # a stop under way ends; an idle server no later stage needs goes
            return
        if run.asleep:
            return  # idle, and a later stage needs it
        backend = self._backends[run.model]
        if key in self.reuse_later and self.config.schedule.sleep and backend is not None and backend.supports_sleep():
            began = time.monotonic()
            try:
                await backend.sleep(run.process.port, self._api_key)
                run.asleep = True
                self.events.emit("server_sleep", model=run.model, server=key, pid=run.process.pid, duration_s=round(time.monotonic() - began, 3))
                return
            except (OSError, asyncio.TimeoutError) as exc:
                self.events.emit("server_failed", model=run.model, server=key, detail={"reason": f"sleep failed, stopping instead: {exc}"})
        await self._stop(key)

    async def _wake(self, run: _Running) -> None:
        backend = self._backends[run.model]
        assert backend is not None
        began = time.monotonic()
        await backend.wake(run.process.port, self._api_key)
        run.asleep = False
        self.loading_s[run.model] = self.loading_s.get(run.model, 0.0) + time.monotonic() - began
        self.events.emit("server_wake", model=run.model, server=run.key, pid=run.process.pid, duration_s=round(time.monotonic() - began, 3))

    async def _stop(self, key: str, grace: float | None = None, reason: str | None = None) -> None:
        """Stop a server. The stop runs as its own task, shielded: a caller cancelled midway
        leaves it running to the end, and the server stays listed until it is down, so
        release_all (on the way out) waits for the same stop instead of forgetting it."""
        run = self._running.get(key)
        if run is None:
            return
        if run.stopping is None:
            run.stopping = asyncio.ensure_future(self._finish(run, self.config.servers.stop_grace_s if grace is None else grace, reason))
        try:
            await asyncio.shield(run.stopping)
        finally:
            if run.stopping.done() and self._running.get(key) is run:
                del self._running[key]

    async def _finish(self, run: _Running, grace: float, reason: str | None = None) -> None:
        """Stop a server, then wait until its port and GPU memory are free."""
        began = time.monotonic()
        run.pids |= {p.pid for p in run.process._group_members()}
        if run.sampler is not None:
            run.sampler.cancel()
            # the sampler's own end is not news; a cancel of this stop itself still goes through
            await asyncio.gather(run.sampler, return_exceptions=True)
        code = await run.process.stop(grace)
        detail: dict[str, object] = {"returncode": code, "uptime_s": round(time.monotonic() - run.ready_at, 3)}
        if run.peak_gpu_mib is not None:
            detail["peak_gpu_mib"] = run.peak_gpu_mib
        if reason:
            detail["reason"] = reason
        self.events.emit(
            "server_stop", model=run.model, server=run.key, pid=run.process.pid, port=run.process.port,
            duration_s=round(time.monotonic() - began, 3), detail=detail,
        )  # fmt: skip
        await self._wait_released(run)

    async def _wait_released(self, run: _Running) -> None:
        began = time.monotonic()
        deadline = began + self.config.servers.release_timeout_s
        while not port_is_free(run.process.port) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        port_free = port_is_free(run.process.port)
        gpu_released: bool | None = None
        if self.gpu is not None:
            delay = 0.1
            while True:
                try:
                    held = await self.gpu.process_memory()
                except OSError:
                    break
                gpu_released = not any(pid in held for pid in run.pids)
                if gpu_released or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, 1.0)
        self.events.emit(
            "server_released", model=run.model, server=run.key, port=run.process.port,
            duration_s=round(time.monotonic() - began, 3),
            detail={"port_free": port_free, "gpu_released": gpu_released},
        )  # fmt: skip

    async def _sample_gpu(self, run: _Running) -> None:
        assert self.gpu is not None
        while True:
            try:
                held = await self.gpu.process_memory()
                with contextlib.suppress(psutil.Error):
                    run.pids |= {p.pid for p in run.process._group_members()}
                mib = sum(v for pid, v in held.items() if pid in run.pids)
                if mib and (run.peak_gpu_mib is None or mib > run.peak_gpu_mib):
                    run.peak_gpu_mib = mib
            except OSError:
                return
            await asyncio.sleep(1.0)

    async def aclose(self) -> None:
        self._closed = True  # from now on acquire refuses: a late caller cannot start a server nobody stops
        try:
            await self.release_all()
        finally:
            if self._own_log_dir and self._log_dir is not None and not self._failed:
                shutil.rmtree(self._log_dir, ignore_errors=True)

    async def __aenter__(self) -> "ServerManager":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
