"""The device host: the side of a cluster run that lives on a node (``cluster.py`` is the
driver's side).

One Ray actor per planner device (a node's CPU, or a slice of its GPUs). It owns a
``ServerManager`` on its node, so servers start there as they do on one machine: on the
node's 127.0.0.1, in their own session, through the PDEATHSIG launcher and with a watchdog.
A node's loopback is not the driver's, so every call goes through the host, which relays
it to its local server and returns the completion.

Everything the host's manager logs (server start, ready, stop, restart) is numbered and
sent back on one stream (``events``), with a heartbeat while nothing happens, so the driver
can tell a silent node from an idle one. Each control reply carries the number of events
emitted so far: the driver waits until it has them before it goes on, so the events it
logs keep their order.

Ray runs an async actor's methods on one thread, which lives as long as the actor. Servers
are spawned from it (``ServerManager`` spawns on the event loop's thread): PDEATHSIG fires
when the *thread* that forked exits, so the servers die with the actor, however it dies.

Nothing here imports ray: the driver wraps this class in ``ray.remote``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import deque
from typing import Any

from .agents import OpenAIClient, describe_error, retryable_error
from .config import Config
from .errors import SymoeError
from .events import Event, EventLog
from .placement import node_name
from symoe_agents.servers import ServerManager

#: events kept for a driver that has not read them yet; it reads continuously, so this is slack
_BACKLOG = 100_000


class DeviceHost:
    """The actor's body: control calls answer a dict with ``seq`` (events emitted so far),
    ``running`` (the server keys up) and, for one model, its server's ``pid`` and ``alive``."""

    def __init__(self, config: Config, node_id: str, gpu_ids: list[int] | str | None, cores: int | None, beat_s: float):
        """``gpu_ids``: "ray" for the GPUs Ray gave this actor; ``cores``: the node's CPU resource."""
        if gpu_ids == "ray":
            import ray

            gpu_ids = [int(i) for i in ray.get_gpu_ids()]
        self.config = config
        self.node = node_name(node_id)
        self.gpu_ids = tuple(gpu_ids) if gpu_ids else None
        self.log = EventLog(keep=1)
        self.log.node = self.node
        self._pending: deque[Event] = deque(maxlen=_BACKLOG)
        self._seq = 0
        self._beat_s = beat_s
        self._wake: asyncio.Event | None = None
        self.log.listen(self._note)
        # one server at a time on this device: it gets the node's cores (its Ray CPU resource)
        self.manager = ServerManager(config, self.log, cpu_servers_at_once=1)
        self.manager.divide_cores(1, at_once=1, cores=cores)
        self._clients: dict[str, tuple[int | None, OpenAIClient]] = {}

    def _note(self, event: Event) -> None:
        self._seq += 1
        self._pending.append(event)
        if self._wake is not None:
            self._wake.set()

    def _state(self, model: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"seq": self._seq, "running": self.manager.running_keys()}
        if model is not None:
            out["pid"] = self.manager.process_pid(model)
            out["alive"] = self.manager.process_alive(model)
        return out

    # -- the stream of events ----------------------------------------------------------

    async def events(self):
        """(seq, [event, ...]) as events happen, or (seq, []) every ``beat_s`` when none do."""
        if self._wake is None:
            self._wake = asyncio.Event()
        while True:
            if not self._pending:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._beat_s)
            batch = [self._pending.popleft().model_dump(exclude_none=True) for _ in range(len(self._pending))]
            yield self._seq, batch

    # -- control -----------------------------------------------------------------------

    async def hello(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "gpu_ids": list(self.gpu_ids or ()), "threads": self.manager.cpu_threads}

    async def acquire(self, model: str, exclusive: bool, reuse_later: list[str]) -> dict[str, Any]:
        """``reuse_later``: servers the run needs again, which a release puts to sleep where it can."""
        self.manager.reuse_later = set(reuse_later)
        try:
            endpoint = await self.manager.acquire(model, exclusive=exclusive, gpu_ids=self.gpu_ids)
        except Exception as exc:  # its text, not the object: the driver raises its own
            return {**self._state(model), "error": _reason(exc)}
        return {**self._state(model), "base_url": endpoint.base_url, "served_model": endpoint.served_model}

    async def restart(self, model: str, reason: str, seen_pid: int | None) -> dict[str, Any]:
        try:
            endpoint = await self.manager.restart(model, reason, seen_pid)
        except Exception as exc:
            return {**self._state(model), "error": _reason(exc)}
        return {**self._state(model), "base_url": endpoint.base_url, "served_model": endpoint.served_model}

    async def healthy(self, model: str) -> dict[str, Any]:
        return {**self._state(model), "healthy": await self.manager.healthy(model)}

    async def release(self, key: str, reuse_later: list[str]) -> dict[str, Any]:
        self.manager.reuse_later = set(reuse_later)
        await self.manager.release(key)
        return self._state()

    async def stop(self, key: str, reason: str) -> dict[str, Any]:
        await self.manager.stop(key, reason)
        return self._state()

    async def release_all(self) -> dict[str, Any]:
        await self.manager.release_all()
        await self._close_clients()
        return self._state()

    async def close(self) -> dict[str, Any]:
        """Stop every server; the actor may then be killed."""
        try:
            await self.manager.aclose()
        finally:
            await self._close_clients()
        return self._state()

    # -- calls -------------------------------------------------------------------------

    async def complete(self, model: str, request: dict[str, Any]) -> tuple:
        """("ok", ChatCompletion) or ("failed", description, retryable, server alive)."""
        endpoint = self.manager.endpoint_of(model)
        if endpoint is None:
            return "failed", f"model '{model}': no server for it on node {self.node} (stopped meanwhile)", True, False
        client = self._client(model, endpoint)
        try:
            return "ok", await client.complete(**request)
        except Exception as exc:  # recorded by the driver's runner, as a local call's failure is
            text = f"{describe_error(exc, model, endpoint)} (node {self.node})"
            return "failed", text, retryable_error(exc), self.manager.process_alive(model)

    def _client(self, model: str, endpoint) -> OpenAIClient:
        pid = self.manager.process_pid(model)
        held = self._clients.get(model)
        if held is not None and held[0] == pid:
            return held[1]
        if held is not None:  # the server was restarted: its old connections are of no use
            asyncio.ensure_future(held[1].aclose())
        client = OpenAIClient(endpoint, self.config.concurrency.request_timeout_s, self.config.in_flight(model))
        self._clients[model] = (pid, client)
        return client

    async def _close_clients(self) -> None:
        clients, self._clients = self._clients, {}
        for _, client in clients.values():
            with contextlib.suppress(Exception):
                await client.aclose()


def _reason(exc: BaseException) -> str:
    """A failure's text for the driver: a start's own reason, else the error as it reads."""
    if isinstance(exc, SymoeError):
        return getattr(exc, "reason", None) or str(exc)
    return f"{type(exc).__name__}: {exc}"


def node_report(config: Config) -> dict[str, Any]:
    """What ``symoe check`` asks of each node (a small Ray task run there): its host name,
    GPUs, and the preflight problems of the config on that node (model files, server
    executables, Python environments)."""
    from .preflight import preflight
    from symoe_agents.servers.gpu import GpuMonitor

    gpus: list[str] = []
    monitor = GpuMonitor.detect()
    if monitor is not None:
        with contextlib.suppress(OSError):
            gpus = [f"{g.index}: {g.total_mib / 1024:.0f} GiB" for g in asyncio.run(monitor.gpus())]  # a task has no loop running
    return {"host": socket.gethostname(), "gpus": gpus, "problems": preflight(config, part="node")}
