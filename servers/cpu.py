"""How many CPU threads each local CPU server gets: the cores divided by the CPU servers
that may run at the same time, never more threads than cores.

Measured on 2 cores (docs/performance.md): one busy llama-server with both cores decodes a
batch of 8 at 2.3-2.6x llama-cpp-python's one-core speed, but two busy servers that each take
both cores collapse about 20x (four spinning threads on two cores). So the default schedule,
one model at a time, gives a server every core; co-residency and overlap, which run CPU
servers side by side, divide them. The decision is pure; only ``available_cores`` reads the
machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from symoe_agents.config import Config, uses_cpu


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def cpu_server_keys(config: Config, server_key, names: Iterable[str] | None = None) -> set[str]:
    """The distinct CPU servers (llama.cpp servers, command servers without GPUs) among
    ``names`` (default: the models the roles use)."""
    if names is None:
        names = {config.roles.skill_inferencer, config.roles.aggregator, *config.roles.experts}
    keys = set()
    for name in names:
        if uses_cpu(config.model(name)):
            keys.add(server_key(name))
    return keys


def cpu_servers_at_once(config: Config, n_cpu_servers: int, devices: int = 1, n_cpu_experts: int | None = None) -> int:
    """CPU servers the plan may run side by side: one (the paper's one model at a time),
    two with ``overlap`` (the next starts while the last decodes), all with ``co_residency``;
    with several devices (GPU slices) the expert stage runs a lane per device in parallel,
    and an expert's CPU server (``n_cpu_experts`` of them) may be in each."""
    n = max(1, n_cpu_servers)
    experts = n if n_cpu_experts is None else n_cpu_experts
    if config.schedule.co_residency:
        at_once = n
    elif config.schedule.overlap:
        at_once = min(n, 2)
    else:
        at_once = 1
    return max(at_once, min(experts, max(1, devices)))


def threads_per_server(cores: int, at_once: int) -> int:
    return max(1, cores // max(1, at_once))
