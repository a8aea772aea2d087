"""The server manager: runs the local model servers one at a time, in the order asked.

``acquire(model)`` returns an endpoint for a model. For a local backend it makes that
model's server the running one: if another local server is up it is stopped first (one
GPU, one model at a time), and if the same server is already up (the same weights behind
another model name, or the next group of the same model) it is reused. Hosted endpoints
have no lifecycle and leave the running local server alone. Every start, ready, stop and
failure is an event.

All local servers listen on 127.0.0.1, on a free port, with one random API key per run.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from symoe_agents.config import Config, LlamaCppModel, OpenAIModel, SGLangModel
from symoe_agents.errors import ServerStartError
from symoe_agents.events import EventLog

from .base import Backend, Endpoint
from .hosted import hosted_endpoint
from .llamacpp import LlamaCppBackend
from .process import LOOPBACK, ServerProcess, free_port, tail
from .sglang import SGLangBackend

_PORT_TAKEN = ("address already in use", "errno 98", "only one usage of each socket address")
_START_ATTEMPTS = 3  # a port grabbed by someone else between probe and bind gets a new port


def backend_for(model: LlamaCppModel | SGLangModel | OpenAIModel) -> Backend | None:
    if isinstance(model, LlamaCppModel):
        return LlamaCppBackend(model)
    if isinstance(model, SGLangModel):
        return SGLangBackend(model)
    return None


class _Running:
    def __init__(self, key: str, process: ServerProcess, endpoint: Endpoint, model: str):
        self.key = key
        self.process = process
        self.endpoint = endpoint
        self.model = model
        self.ready_at = time.monotonic()


class ServerManager:
    def __init__(self, config: Config, events: EventLog):
        self.config = config
        self.events = events
        # hex only: a key starting with "-" would be read as a flag by the servers' argparse
        self._api_key = "sk-symoe-" + secrets.token_hex(20)
        self._backends = {name: backend_for(m) for name, m in config.models.items()}
        self._current: _Running | None = None
        self._lock = asyncio.Lock()
        self._serial = 0
        self._failed = False
        self._log_dir: Path | None = Path(config.servers.log_dir) if config.servers.log_dir else None
        self._own_log_dir = config.servers.log_dir is None

    @property
    def log_dir(self) -> Path:
        """Server logs; a temporary folder (made on first use) unless the config names one."""
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="symoe-logs-"))
        return self._log_dir

    def server_key(self, model: str) -> str | None:
        backend = self._backends[model]
        return backend.server_key() if backend else None

    def server_keys(self) -> dict[str, str | None]:
        return {name: self.server_key(name) for name in self.config.models}

    @property
    def running(self) -> str | None:
        return self._current.key if self._current else None

    async def acquire(self, model: str) -> Endpoint:
        cfg = self.config.model(model)
        if isinstance(cfg, OpenAIModel):
            return hosted_endpoint(model, cfg)
        async with self._lock:
            key = self.server_key(model)
            assert key is not None
            if self._current and self._current.key == key:
                return self._current.endpoint
            await self._stop_current()
            self._current = await self._start(model, key)
            return self._current.endpoint

    async def _start(self, model: str, key: str) -> _Running:
        backend = self._backends[model]
        assert backend is not None
        last_error: ServerStartError | None = None
        for _attempt in range(_START_ATTEMPTS):
            port = free_port()
            try:
                launch = backend.launch(LOOPBACK, port, self._api_key)
            except ServerStartError as exc:
                self.events.emit("server_failed", model=model, server=key, detail={"reason": exc.reason})
                self._failed = True
                raise
            self._serial += 1
            log_path = self.log_dir / f"{self._serial:02d}-{model}.log"
            proc = ServerProcess(model, launch.argv, port, log_path, launch.env)
            redacted = [("***" if a == self._api_key else a) for a in launch.argv]
            proc.spawn()
            self.events.emit(
                "server_start", model=model, server=key, pid=proc.pid, port=port,
                detail={"argv": redacted, "log": str(log_path)},
            )  # fmt: skip
            timeout = launch.start_timeout_s or self.config.servers.start_timeout_s
            try:
                took = await proc.wait_ready(launch.probe, timeout)
            except ServerStartError as exc:
                await proc.stop(self.config.servers.stop_grace_s)
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
            endpoint = Endpoint(base_url=f"http://{LOOPBACK}:{port}/v1", served_model=launch.served_model, api_key=self._api_key)
            return _Running(key, proc, endpoint, model)
        self._failed = True
        assert last_error is not None
        raise last_error

    async def _stop_current(self) -> None:
        running, self._current = self._current, None
        if running is None:
            return
        began = time.monotonic()
        code = await running.process.stop(self.config.servers.stop_grace_s)
        self.events.emit(
            "server_stop", model=running.model, server=running.key, pid=running.process.pid, port=running.process.port,
            duration_s=round(time.monotonic() - began, 3),
            detail={"returncode": code, "uptime_s": round(time.monotonic() - running.ready_at, 3)},
        )  # fmt: skip

    async def release_all(self) -> None:
        """Stop whatever is running. Safe to call repeatedly and while being cancelled."""
        async with self._lock:
            await asyncio.shield(self._stop_current())

    async def aclose(self) -> None:
        try:
            await self.release_all()
        finally:
            if self._own_log_dir and self._log_dir is not None and not self._failed:
                shutil.rmtree(self._log_dir, ignore_errors=True)

    async def __aenter__(self) -> "ServerManager":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
