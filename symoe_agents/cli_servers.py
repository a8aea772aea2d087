"""``symoe check`` and ``symoe servers up``: the server manager on its own."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli_common import err, load_config_or_exit, run_with_signals
from .errors import SymoeError
from .events import EventLog
from .preflight import preflight, used_models
from .tracing_setup import tracing_problems

servers_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Start model servers by hand.")


def check(
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML config (default: the built-in pool)")] = None,
) -> None:
    """Preflight only: executables, model files, prompts, chat formats, API-key variables, GPUs. Starts nothing."""
    cfg = load_config_or_exit(config)
    problems = [*map(str, preflight(cfg)), *tracing_problems(cfg)]
    if cfg.cluster is not None:
        try:
            problems += asyncio.run(_check_cluster(cfg))
        except SymoeError as exc:
            err(f"error: {exc}")
            raise typer.Exit(2) from None
    for p in problems:
        print(f"problem: {p}")
    if problems:
        print(f"{len(problems)} problem(s); fix them before `symoe solve`")
        raise typer.Exit(1)
    where = "on every node of the cluster" if cfg.cluster is not None else f"({config or 'built-in embedded pool'})"
    print(f"ok: {len(used_models(cfg))} models ready to start {where}")


async def _check_cluster(cfg) -> list[str]:
    """List the cluster's lane nodes with their GPUs, and what each lacks to run the config."""
    from .cluster import Cluster
    from .placement import node_name
    from symoe_agents.servers import backend_for

    assert cfg.cluster is not None
    cluster = await Cluster.join(cfg, EventLog(), check_nodes=False)
    try:
        reports = await cluster.reports()
    finally:
        await cluster.aclose()
    print(f"cluster {cfg.cluster.address}: {len(cluster.nodes)} node(s) with the '{cfg.cluster.lane_resource}' resource")
    needed = max((b.gpus_needed() for b in (backend_for(cfg.model(m)) for m in used_models(cfg)) if b is not None), default=0)
    problems = []
    for node, report in zip(cluster.nodes, reports):
        name = node_name(node["NodeID"])
        gpus = ", ".join(report["gpus"]) or "none"
        cpus, ray_gpus = int(node["Resources"].get("CPU", 0)), int(node["Resources"].get("GPU", 0))
        mine = list(report["problems"])
        if needed and ray_gpus < needed:  # what the planner uses is Ray's count, not nvidia-smi's
            mine.append(f"Ray gives this node {ray_gpus} GPU(s) and a model needs {needed}: restart its `ray start` with --num-gpus")
        state = "ok" if not mine else f"{len(mine)} problem(s)"
        print(f"  node {name}  {report['host']}  CPUs {cpus}  GPUs: {gpus} (Ray: {ray_gpus})  models and servers: {state}")
        problems += [f"node {name} ({report['host']}): {p}" for p in mine]
    return problems


@servers_app.command("up")
def up(
    models: Annotated[Optional[list[str]], typer.Argument(help="model names (default: every model the roles use)")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML config (default: the built-in pool)")] = None,
) -> None:
    """Start models side by side and print their endpoints; Ctrl-C stops them all."""

    cfg = load_config_or_exit(config)
    names = models or used_models(cfg)
    unknown = [m for m in names if m not in cfg.models]
    if unknown:
        err(f"error: unknown model(s) {', '.join(unknown)}; declared: {', '.join(cfg.models)}")
        raise typer.Exit(2)
    problems = preflight(cfg, names, part="all")  # these servers start here, [cluster] or not
    if problems:
        for p in problems:
            err(f"problem: {p}")
        raise typer.Exit(1)
    raise typer.Exit(run_with_signals(lambda: _up(cfg, names), resume_hint=""))


async def _up(cfg, names: list[str]) -> int:
    from symoe_agents.servers import ServerManager, backend_for
    from symoe_agents.servers.cpu import cpu_server_keys

    # every server stays up at once: their threads divide the cores
    at_once = len(cpu_server_keys(cfg, lambda name: backend_for(cfg.model(name)).server_key(), names))
    async with ServerManager(cfg, EventLog(), cpu_servers_at_once=at_once) as manager:
        seen: set[str | None] = set()
        try:
            for name in names:
                key = manager.server_key(name)
                ep = await manager.acquire(name, exclusive=False)
                if key in seen and key is not None:
                    print(f"{name:<24} same server as above ({ep.base_url}, model '{ep.served_model}')", flush=True)
                    continue
                seen.add(key)
                print(f"{name:<24} {ep.base_url}  model '{ep.served_model}'", flush=True)
        except SymoeError as exc:
            err(f"error: {exc}")
            return 1
        print(
            "\nlocal servers take the run key as a Bearer token; it is printed only here, for you:\n"
            f"  OPENAI_API_KEY={manager._api_key}\n"
            "Ctrl-C stops them all.",
            flush=True,
        )
        await asyncio.Event().wait()  # until a signal cancels us
    return 0
