"""Placing a schedule on devices: a pure function of the plan and the memory figures.

The paper runs one model at a time on all GPUs. This module turns the ordered ``Schedule``
into ``Stage``s run one after another; each stage holds ``Lane``s run side by side, each
lane a device (a GPU, a tp-sized slice of GPUs, or the CPU) with groups run in order.

- Default: one device, one lane: exactly the load-minimising order of ``schedule.py``.
- Several devices: expert jobs (consecutive groups on one server) go to the device with the
  least work so far, largest job first (LPT), so groups run in parallel, one per device.
- Co-residency: on each device, jobs are packed first-fit-decreasing into bins whose
  memory fits the device; a bin's jobs run side by side. Jobs of unknown memory never share.
- Overlap: between two stages on a device, the next servers may start while the current
  group's last requests decode, when both fit in memory together.
- Sleep: a server released in one stage and needed in a later one is marked to sleep
  (where its backend can) rather than be killed and reloaded.

The executor in ``controller.py`` carries these out; nothing here does IO.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .schedule import Group, Schedule


@dataclass(frozen=True)
class Device:
    """A place servers run: GPU ids (one GPU or a tp slice), or ``None`` for the CPU."""

    gpu_ids: tuple[int, ...] | None
    memory_gib: float | None = None  # None: unknown, nothing is co-resident
    node: str | None = None  # a Ray node's id (``cluster.py``); None: this machine

    @property
    def name(self) -> str:
        local = "cpu" if self.gpu_ids is None else "gpu" + "+".join(map(str, self.gpu_ids))
        return local if self.node is None else f"{node_name(self.node)}/{local}"


def node_name(node_id: str) -> str:
    """A Ray node as events and plans name it: its id's first 12 hex digits (what ``ray
    list nodes`` shows first), unique where host names and IPs are not."""
    return node_id[:12]


@dataclass(frozen=True)
class Lane:
    device: Device
    groups: tuple[Group, ...]


@dataclass(frozen=True)
class Stage:
    lanes: tuple[Lane, ...]
    prestart_next: bool = False  # overlap: start the next stage's servers while this one finishes

    @property
    def servers(self) -> list[str]:
        out: list[str] = []
        for lane in self.lanes:
            for g in lane.groups:
                if g.server is not None and g.server not in out:
                    out.append(g.server)
        return out


@dataclass(frozen=True)
class Placement:
    stages: tuple[Stage, ...]
    sleep_servers: frozenset[str] = field(default_factory=frozenset)

    @property
    def loads(self) -> int:
        return count_placement_loads(self)

    def describe(self) -> str:
        lines = []
        for i, st in enumerate(self.stages, 1):
            lanes = "  |  ".join(f"{ln.device.name}: " + ", ".join(g.name for g in ln.groups) for ln in st.lanes)
            lines.append(f"stage {i}: {lanes}" + ("   (next stage's servers start early)" if st.prestart_next else ""))
        if self.sleep_servers:
            lines.append("sleep instead of kill: " + ", ".join(sorted(self.sleep_servers)))
        lines.append(f"model loads: {self.loads}")
        return "\n".join(lines)


def count_placement_loads(p: Placement) -> int:
    """Server starts needed: a server stays up through a lane's consecutive groups and from
    one stage to the next if both need it; a sleeping server wakes without a load."""
    loads = 0
    resident: set[str] = set()
    asleep: set[str] = set()

    def release(server: str) -> None:
        resident.discard(server)
        if server in p.sleep_servers:
            asleep.add(server)

    def need(server: str) -> None:
        nonlocal loads
        if server in resident:
            return
        if server in asleep:
            asleep.discard(server)
        else:
            loads += 1
        resident.add(server)

    for stage in p.stages:
        for server in list(resident - set(stage.servers)):
            release(server)
        for lane in stage.lanes:
            current: str | None = None
            for g in lane.groups:
                if g.server is None or g.server == current:
                    continue
                if current is not None:
                    release(current)
                need(g.server)
                current = g.server
    return loads


def _jobs(groups: Sequence[Group]) -> list[tuple[Group, ...]]:
    """Consecutive groups on the same server form one job (one load)."""
    jobs: list[list[Group]] = []
    for g in groups:
        if jobs and jobs[-1][0].server == g.server and g.server is not None:
            jobs[-1].append(g)
        else:
            jobs.append([g])
    return [tuple(j) for j in jobs]


def _size(job: tuple[Group, ...]) -> int:
    return sum(len(g.requests) for g in job)


def deal(sizes: Sequence[int], names: Sequence[str], devices: int, pinned: Sequence[int] = ()) -> list[list[int]]:
    """Jobs (their indices) to ``devices`` devices: the ``pinned`` ones on the first, the rest
    largest first (then by name) to the device with the least work so far (LPT)."""
    per_device: list[list[int]] = [[] for _ in range(devices)]
    work = [0] * devices
    for j in pinned:
        per_device[0].append(j)
        work[0] += sizes[j]
    for j in sorted((j for j in range(len(sizes)) if j not in pinned), key=lambda j: (-sizes[j], names[j])):
        d = min(range(devices), key=lambda i: (work[i], i))
        per_device[d].append(j)
        work[d] += sizes[j]
    return per_device


def place(
    schedule: Schedule,
    devices: Sequence[Device],
    memory_gib: Mapping[str, float | None] | None = None,
    *,
    co_residency: bool = False,
    overlap: bool = False,
    sleep: bool = False,
) -> Placement:
    """Stages and lanes for ``schedule`` on ``devices`` (see the module doc)."""
    if not devices:
        raise ValueError("no device to place the schedule on")
    memory_gib = memory_gib or {}
    skills, experts, aggregate = schedule.groups[0], schedule.groups[1:-1], schedule.groups[-1]
    first_server, last_server = skills.server, aggregate.server

    # 1. expert jobs to devices: largest first, to the device with the least work so far
    jobs = _jobs(experts)
    per_device: list[list[tuple[Group, ...]]] = [[] for _ in devices]
    if len(devices) == 1:
        per_device[0] = list(jobs)
    else:
        # the skill group runs first on the first device, before routing is known: the skill
        # server's expert job stays there, where that server is loaded already
        pinned = [i for i, j in enumerate(jobs) if j[0].server is not None and j[0].server == first_server]
        dealt = deal([_size(j) for j in jobs], [j[0].name for j in jobs], len(devices), pinned)
        per_device = [[jobs[i] for i in mine] for mine in dealt]
        for lst in per_device:  # keep the load-saving ends: skill server first, aggregator's last
            lst.sort(key=lambda j: (j[0].server != first_server, j[0].server == last_server))

    # 2. on each device, bins of jobs that run side by side
    def bins_for(dev: Device, dev_jobs: list[tuple[Group, ...]]) -> list[list[tuple[Group, ...]]]:
        if not co_residency or dev.memory_gib is None:
            return [[j] for j in dev_jobs]
        bins: list[list[tuple[Group, ...]]] = []
        used: list[float] = []
        for job in sorted(dev_jobs, key=lambda j: -(memory_gib.get(j[0].server or "") or 0)):
            need = memory_gib.get(job[0].server or "")
            if need is None or job[0].server is None:
                bins.append([job])
                used.append(float("inf"))
                continue
            for i, b in enumerate(bins):
                if used[i] + need <= dev.memory_gib:
                    b.append(job)
                    used[i] += need
                    break
            else:
                bins.append([job])
                used.append(need)
        bins.sort(key=lambda b: (not any(j[0].server == first_server for j in b), any(j[0].server == last_server for j in b)))
        return bins

    expert_stages: list[Stage] = []
    if not co_residency:
        # one lane per device, its jobs in order: groups run in parallel, one per device
        lanes = tuple(Lane(dev, tuple(g for job in per_device[i] for g in job)) for i, dev in enumerate(devices) if per_device[i])
        if lanes:
            expert_stages.append(Stage(lanes))
    else:
        device_bins = [bins_for(dev, per_device[i]) for i, dev in enumerate(devices)]
        for k in range(max((len(b) for b in device_bins), default=0)):
            stage_lanes = [Lane(dev, job) for i, dev in enumerate(devices) if k < len(device_bins[i]) for job in device_bins[i][k]]
            expert_stages.append(Stage(tuple(stage_lanes)))

    # 3. skills first, on the device that runs the skill server's experts (or the first)
    def device_of(server: str | None) -> Device:
        for st in expert_stages:
            for lane in st.lanes:
                if any(g.server == server for g in lane.groups):
                    return lane.device
        return devices[0]

    stages = [Stage((Lane(device_of(first_server), (skills,)),)), *expert_stages]
    stages.append(Stage((Lane(device_of(last_server), (aggregate,)),)))

    # 4. overlap: next servers may start early where both stages' memory fits on each device
    #    (not after the skill stage: what comes next is known only once routing has run)
    if overlap:
        marked = []
        for k, st in enumerate(stages[:-1]):
            nxt = stages[k + 1]
            marked.append(Stage(st.lanes, k > 0 and _fits_together(st, nxt, memory_gib)))
        stages = [*marked, stages[-1]]

    # 5. sleep: servers absent from some stage but needed again after it
    sleep_servers: set[str] = set()
    if sleep:
        seen_at = [set(s.servers) for s in stages]
        for k in range(len(stages)):
            for s in seen_at[k]:
                later = any(s in seen_at[j] for j in range(k + 2, len(stages)))
                gap = k + 1 < len(stages) and s not in seen_at[k + 1]
                if later and gap:
                    sleep_servers.add(s)
    return Placement(tuple(stages), frozenset(sleep_servers))


def _fits_together(cur: Stage, nxt: Stage, memory_gib: Mapping[str, float | None]) -> bool:
    new = [s for s in nxt.servers if s not in cur.servers]
    if not new:
        return False
    by_device: dict[str, tuple[Device, float]] = {}
    for stage, servers in ((cur, cur.servers), (nxt, new)):
        for lane in stage.lanes:
            for server in {g.server for g in lane.groups if g.server in servers}:
                need = memory_gib.get(server or "")
                if need is None or lane.device.memory_gib is None:
                    return False
                dev, total = by_device.get(lane.device.name, (lane.device, 0.0))
                by_device[lane.device.name] = (dev, total + need)
    return all(total <= (dev.memory_gib or 0) for dev, total in by_device.values())
