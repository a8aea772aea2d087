"""Groups on the nodes of a Ray cluster: the driver's side (``cluster_host.py`` is the nodes').

With ``[cluster]`` in the config, the process that runs the batch (the driver) joins a Ray
cluster and plans as on one machine, over more devices: each node that carries the lane
resource offers its CPU, or its GPUs in slices of the largest tp. The placement planner
spreads the expert jobs over them (``placement.place``); a device's groups run in order in
one ``DeviceHost`` actor pinned to its node, which owns a server manager there.

What stays on the driver: routing, the schedule, the answer cache, the answers file and the
events (the single source of truth). A host relays calls to its node's servers and sends
its events back on a stream; every event names its node.

A lost node (its actor dies, Ray says it is unavailable, or its event stream is silent for
longer than ``concurrency.request_timeout_s``, since Ray may take a minute to declare a
partitioned node dead) is written off: its device's groups move to a live device, where
each running group sends only its unanswered requests (``GroupRunner``). Answers already
received were kept on the driver, so nothing answered is asked again (what was in flight on
the lost node is) and no record is repeated.

Ray is imported only here and only for a config with ``[cluster]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from .agents import CallFailed
from .config import Config
from .errors import ClusterError, ServerStartError
from .events import Event, EventLog
from .placement import Device, node_name
from symoe_agents.servers import Endpoint


#: how long a node may take to run ``symoe check``'s task: a Ray worker's start, symoe's
#: import and the preflight, whose probe of an SGLang environment alone may take 300 s
REPORT_TIMEOUT_S = 400.0


class HostLost(Exception):
    """A device's node is lost; its groups move to another device."""

    def __init__(self, device: Device, why: str):
        super().__init__(f"node {node_name(device.node or '')} ({device.name}) was lost: {why}")
        self.device = device
        self.why = why


def import_ray():
    try:
        import ray
    except ModuleNotFoundError:
        raise ClusterError(
            "the config has a [cluster] table but Ray is not installed here: "
            'pip install "symoe-agents[cluster]" on every node (or remove [cluster] to run on this machine)'
        ) from None
    return ray


@contextlib.asynccontextmanager
async def joined(config: Config, events: EventLog) -> AsyncIterator["Cluster | None"]:
    """The config's cluster for the block (None without ``[cluster]``); on leaving it by
    any path, every server on every node is stopped and the hosts end."""
    if config.cluster is None:
        yield None
        return
    cluster = await Cluster.join(config, events)
    try:
        yield cluster
    finally:
        await cluster.aclose()


class Cluster:
    """The driver's view of the cluster: its devices, a host per device, and where the
    groups of a lost device go."""

    def __init__(self, config: Config, events: EventLog, ray: Any, nodes: list[dict[str, Any]], joined: bool):
        self.config = config
        self.events = events
        self.ray = ray
        self.nodes = nodes
        self._joined = joined  # ray.init was ours: ray.shutdown is too
        self._hosts: dict[Device, RemoteHost] = {}
        self._moved: dict[Device, Device] = {}
        self._devices: list[Device] = []
        self._lock = asyncio.Lock()
        # a silent event stream means a lost node; the heartbeat is well inside that
        self.silence_s = config.concurrency.request_timeout_s
        self.beat_s = min(5.0, self.silence_s / 4)

    # -- joining ---------------------------------------------------------------------

    @classmethod
    async def join(cls, config: Config, events: EventLog, check_nodes: bool = True) -> "Cluster":
        """Join the cluster of ``config.cluster`` (or use the one this process already
        joined) and check every lane node for the config's executables and model files
        (``check_nodes``: else the caller reports them, as ``symoe check`` does)."""
        assert config.cluster is not None
        ray = import_ray()
        opts = config.cluster
        joined = not ray.is_initialized()
        if joined:
            await _reachable(opts.address)  # ray.init retries an absent head for minutes, deaf to signals
            # ray.init sets its own handlers on the main thread only, and only there can they be put back
            main = threading.current_thread() is threading.main_thread()
            kept = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)} if main else {}
            try:
                # its own banners and worker logs stay off the driver's terminal (stdout is the user's)
                ray.init(address=opts.address, log_to_driver=False, logging_level=logging.ERROR)
            except Exception as exc:  # ConnectionError, or Ray's own when nothing is at the address
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ClusterError(
                    f"cannot join the Ray cluster at cluster.address = {opts.address!r}: {first}. "
                    "Start it with `ray start --head` and run symoe on a node of it"
                ) from None
            finally:
                # ray.init puts its own SIGTERM handler (sys.exit) in place of symoe's, which
                # stops the servers and says how to resume: symoe's go back
                for sig, handler in kept.items():
                    if handler is not None:
                        signal.signal(sig, handler)
        try:
            nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(opts.lane_resource, 0) > 0]
            if not nodes:
                raise ClusterError(
                    f"no live node of the cluster carries the '{opts.lane_resource}' resource: join each node that runs "
                    f"servers with `ray start --address=HEAD:6379 --resources='{{\"{opts.lane_resource}\": 1}}'`"
                )
            nodes.sort(key=lambda n: n["NodeID"])
            cluster = cls(config, events, ray, nodes, joined)
            events.node = node_name(ray.get_runtime_context().get_node_id())
            problems = [] if not check_nodes else [f"node {node_name(n['NodeID'])} ({r['host']}): {p}" for n, r in zip(nodes, await cluster.reports()) for p in r["problems"]]
            if problems:
                raise ClusterError("nodes of the cluster cannot run this config (nothing was started):\n  " + "\n  ".join(problems))
        except BaseException:
            if joined:
                ray.shutdown()
            raise
        return cluster

    async def reports(self) -> list[dict[str, Any]]:
        """Each lane node's host name, GPUs and preflight problems: one small task per node."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from .cluster_host import node_report

        task = self.ray.remote(num_cpus=0, max_retries=0)(node_report)

        async def one(node: dict[str, Any]) -> dict[str, Any]:
            ref = task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(self.config)
            try:
                return await asyncio.wait_for(_resolved(ref), REPORT_TIMEOUT_S)
            except asyncio.TimeoutError:
                with contextlib.suppress(Exception):
                    self.ray.cancel(ref, force=True)
                why = f"its check gave no answer within {REPORT_TIMEOUT_S:g} s (a node that cannot be reached, or stuck starting Python)"
            except self.ray.exceptions.RayError as exc:  # symoe missing there, another version, a node that went
                why = f"cannot run symoe's check there: {_first_line(exc)}"
            return {"host": node.get("NodeManagerAddress", "?"), "gpus": [], "problems": [why]}

        return list(await asyncio.gather(*(one(n) for n in self.nodes)))

    # -- devices and hosts -------------------------------------------------------------

    def devices(self, gpus_needed: int) -> list[Device]:
        """Each lane node's CPU (models that need no GPU), or its GPUs in slices of
        ``gpus_needed``; ids are the node's own, as Ray assigns them to the host."""
        out: list[Device] = []
        for n in self.nodes:
            res = n["Resources"]
            if gpus_needed == 0:
                out.append(Device(None, self.config.schedule.device_memory_gib or res.get("memory", 0) / 2**30 or None, n["NodeID"]))
                continue
            gpus = int(res.get("GPU", 0))
            for i in range(0, gpus - gpus_needed + 1, gpus_needed):
                out.append(Device(tuple(range(i, i + gpus_needed)), self.config.schedule.device_memory_gib, n["NodeID"]))
        if not out:
            raise ClusterError(f"the models need {gpus_needed} GPU(s) each, and no lane node of the cluster has that many")
        self._devices = out
        return out

    def host(self, device: Device) -> "RemoteHost":
        """The device's host, started on its node at first use."""
        host = self._hosts.get(device)
        if host is None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            from .cluster_host import DeviceHost

            node = next((n for n in self.nodes if n["NodeID"] == device.node), None)
            slices = sum(1 for d in self._devices if d.node == device.node) or 1
            cores = int(node["Resources"].get("CPU", 0)) // slices if node else 0  # the node's cores, shared by its devices
            actor = (
                self.ray.remote(DeviceHost)
                .options(
                    num_cpus=0, num_gpus=len(device.gpu_ids or ()), max_restarts=0, max_task_retries=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(device.node, soft=False),
                )
                .remote(self.config, device.node, "ray" if device.gpu_ids else None, cores or None, self.beat_s)
            )  # fmt: skip
            host = self._hosts[device] = RemoteHost(self, device, actor)
        return host

    def start_hosts(self) -> None:
        """Start every device's host now (Ray starts actors in the background): they are
        ready by the time the first groups need them, not started on the critical path."""
        for device in self._devices:
            self.host(device)

    def hosts(self) -> list["RemoteHost"]:
        return [h for h in self._hosts.values() if not h.lost]

    async def where(self, device: Device) -> Device | None:
        """The device a lane's next group runs on: its own while it lives, else where a lost
        device's groups go: a live device on a node that has lost none if there is one, the
        one that has taken the fewest moved devices so far (the planner's order breaks ties);
        the same answer for every group of that device. None: no device is left."""
        async with self._lock:
            while device in self._moved:
                device = self._moved[device]
            if not self._lost(device):
                return device
            live = [d for d in self._devices if not self._lost(d)]
            if not live:
                return None
            # nodes without a lost device first: a slice of such a node may be lost with it, not yet seen
            moved = list(self._moved.values())
            shaken = {d.node for d in self._devices if self._lost(d)}
            target = min(live, key=lambda d: (d.node in shaken, moved.count(d), live.index(d)))
            self._moved[device] = target
            return target

    def live(self, devices: Sequence[Device]) -> list[Device]:
        """``devices`` without the lost ones (a later batch plans without them)."""
        return [d for d in devices if not self._lost(d)]

    def _lost(self, device: Device) -> bool:
        host = self._hosts.get(device)
        return host is not None and host.lost is not None

    # -- ending ------------------------------------------------------------------------

    async def release_all(self) -> None:
        """Stop every server on every live node (the end of a batch)."""
        await asyncio.gather(*(h.release_all() for h in self.hosts()))

    async def aclose(self) -> None:
        """Stop every server, end every host and leave the cluster (if we joined it)."""
        try:
            await asyncio.gather(*(h.aclose() for h in list(self._hosts.values())), return_exceptions=True)
        finally:
            if self._joined:
                self.ray.shutdown()


class RemoteHost:
    """A device host seen from the driver, shaped as the ``ServerManager`` calls a group
    runner makes (acquire, restart, health, liveness), with every wait cut short when the
    node is lost."""

    def __init__(self, cluster: Cluster, device: Device, actor: Any):
        self.cluster = cluster
        self.device = device
        self.node = node_name(device.node or "")
        self.actor = actor
        self.lost: str | None = None  # why, once the node is written off
        self.reuse_later: set[str] = set()
        self._gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._running: list[str] = []
        self._pid: dict[str, int | None] = {}
        self._alive: dict[str, bool] = {}
        self._endpoint: dict[str, Endpoint] = {}
        self._seen = 0  # events received so far
        self._state_seq = 0  # the event count of the reply ``_running`` is from
        self._arrived = asyncio.Event()
        self._follow = asyncio.ensure_future(self._follow_events())

    # -- events and loss -------------------------------------------------------------

    async def _follow_events(self) -> None:
        ray = self.cluster.ray
        stream = self.actor.events.remote()
        try:
            while True:
                ref = await asyncio.wait_for(stream.__anext__(), self.cluster.silence_s)
                seen, batch = await asyncio.wait_for(_resolved(ref), self.cluster.silence_s)
                for fields in batch:
                    self.cluster.events.append(Event(**fields))
                self._seen = seen
                self._arrived.set()
        except asyncio.TimeoutError:
            self._lose(f"its event stream was silent for {self.cluster.silence_s:g} s (concurrency.request_timeout_s)")
        except (ray.exceptions.RayError, StopAsyncIteration) as exc:
            self._lose(_first_line(exc))
        except Exception as exc:  # an event it cannot read: a host whose events are lost is not trusted
            self._lose(f"its event stream failed: {_first_line(exc)}")

    def _lose(self, why: str) -> None:
        if self.lost is not None:
            return
        self.lost = why
        self._gone.set_result(None)
        self._arrived.set()
        self.cluster.events.emit("node_lost", node=self.node, detail={"device": self.device.name, "reason": why})
        with contextlib.suppress(Exception):  # a partitioned actor that comes back must not serve on
            self.cluster.ray.kill(self.actor, no_restart=True)

    async def _until(self, ref: Any) -> Any:
        """The call's result, or HostLost as soon as the node is lost."""
        if self.lost is not None:
            raise HostLost(self.device, self.lost)
        ray = self.cluster.ray
        task = asyncio.ensure_future(_resolved(ref))
        try:
            await asyncio.wait((task, self._gone), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            with contextlib.suppress(Exception):
                ray.cancel(ref)
            raise
        if not task.done():
            task.cancel()
            raise HostLost(self.device, self.lost or "lost")
        try:
            return task.result()
        except ray.exceptions.RayError as exc:  # the actor died, or its method failed: the host is written off
            self._lose(_first_line(exc))
            raise HostLost(self.device, self.lost or "lost") from None

    async def _control(self, method: str, *args: Any, model: str | None = None) -> dict[str, Any]:
        reply = await self._until(getattr(self.actor, method).remote(*args))
        # the events this call caused come first, so the log keeps their order (the stream
        # delivers them within a heartbeat; a stream that stops is a lost node)
        while self._seen < reply["seq"] and self.lost is None:
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), self.cluster.silence_s)
        if reply["seq"] >= self._state_seq:  # replies of calls made side by side may come in any order
            self._state_seq = reply["seq"]
            self._running = list(reply["running"])
        if model is not None:
            self._pid[model] = reply.get("pid")
            self._alive[model] = bool(reply.get("alive"))
            if "base_url" in reply:
                self._endpoint[model] = Endpoint(reply["base_url"], reply["served_model"], "", None)
        return reply

    # -- the manager's calls -----------------------------------------------------------

    async def acquire(self, model: str, *, exclusive: bool = True, gpu_ids: Sequence[int] | None = None, share: object = None) -> Endpoint:
        # always exclusive: a host is one device, which turns (``Turns``) give to one server's
        # groups at a time; a server kept for a later stage must not stay loaded under the next
        reply = await self._control("acquire", model, True, sorted(self.reuse_later), model=model)
        if "error" in reply:
            raise ServerStartError(model, f"{reply['error']} (node {self.node})")
        return self._endpoint[model]

    async def restart(self, model: str, reason: str, seen_pid: int | None = None) -> Endpoint:
        reply = await self._control("restart", model, reason, seen_pid, model=model)
        if "error" in reply:
            raise ServerStartError(model, f"{reply['error']} (node {self.node})")
        return self._endpoint[model]

    async def healthy(self, model: str, timeout: float = 10.0) -> bool:
        return bool((await self._control("healthy", model, model=model))["healthy"])

    def process_alive(self, model: str) -> bool:
        return self.lost is None and self._alive.get(model, False)

    def process_pid(self, model: str) -> int | None:
        return self._pid.get(model)

    def endpoint_of(self, model: str) -> Endpoint | None:
        return self._endpoint.get(model)

    def running_keys(self) -> list[str]:
        return [] if self.lost is not None else list(self._running)

    async def release(self, key: str) -> None:
        with contextlib.suppress(HostLost):
            await self._control("release", key, sorted(self.reuse_later))

    async def stop(self, key: str, reason: str) -> None:
        with contextlib.suppress(HostLost):
            await self._control("stop", key, reason)

    async def release_all(self) -> None:
        with contextlib.suppress(HostLost):
            await self._control("release_all")

    def connect_for(self, model: str) -> Callable[[Endpoint, float, int], "RemoteClient"]:
        """The ``Connect`` of a group of ``model``: its calls go through this host (two
        models on one server share an endpoint, so the model is named, not looked up)."""
        return lambda endpoint, timeout_s, max_in_flight: RemoteClient(self, model)

    async def aclose(self) -> None:
        """Stop the node's servers, then the actor (killing it alone would leave the stop
        to PDEATHSIG and the watchdog: they are the fallback, not the plan)."""
        try:
            if self.lost is None:  # through _control: the servers' last events reach the log
                with contextlib.suppress(HostLost, asyncio.TimeoutError):
                    await asyncio.wait_for(self._control("close"), self.cluster.config.servers.stop_grace_s + 30)
        finally:
            self._follow.cancel()
            await asyncio.gather(self._follow, return_exceptions=True)
            with contextlib.suppress(Exception):
                self.cluster.ray.kill(self.actor, no_restart=True)


class RemoteClient:
    """The model client of a server on a node: each call is relayed by the node's host."""

    def __init__(self, host: RemoteHost, model: str):
        self.host = host
        self.model = model

    async def complete(self, **request: Any):
        host, model = self.host, self.model
        try:
            reply = await host._until(host.actor.complete.remote(model, request))
        except HostLost as exc:
            raise CallFailed(f"model '{model}': {exc}", retryable=True, elsewhere=True) from None
        if reply[0] == "ok":
            return reply[1]
        _, text, retryable, alive = reply
        host._alive[model] = bool(alive)
        raise CallFailed(text, retryable)

    async def aclose(self) -> None:
        return None


async def _reachable(address: str, within_s: float = 5.0) -> None:
    """A head at HOST:PORT accepts connections (``auto`` is Ray's to resolve)."""
    if address == "auto":
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f'cluster.address = {address!r}: give "auto" or the head\'s "HOST:PORT" (e.g. "10.0.0.1:6379")')
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), within_s)
    except (OSError, asyncio.TimeoutError) as exc:
        why = "no answer" if isinstance(exc, asyncio.TimeoutError) else (exc.strerror or str(exc))
        raise ClusterError(
            f"cannot join the Ray cluster at cluster.address = {address!r}: {why}. "
            "Start its head with `ray start --head` (its GCS port is 6379 by default) and run symoe on a node of it"
        ) from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _resolved(ref: Any) -> Any:
    return await ref


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
