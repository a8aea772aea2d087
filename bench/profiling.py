"""Profile a benchmark path with pyinstrument: where planning or the request path spends time.

    python bench/profiling.py planning [--questions 100000]
    python bench/profiling.py requests [--requests 2000]

``planning`` profiles alignment, routing and grouping as bench/planning.py runs them;
``requests`` profiles one symoe expert group of instant requests (bench/overhead.py's
stand-in server). Prints pyinstrument's call tree (needs ``pip install ".[bench]"``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from pyinstrument import Profiler

sys.path.insert(0, str(Path(__file__).resolve().parent))


def planning(n: int) -> Profiler:
    import planning as bench

    with Profiler(interval=0.0005) as prof:
        bench.one(n, 16, 5000)
    return prof


def requests(n: int) -> Profiler:
    import overhead as bench

    from symoe_agents.controller import Controller
    from symoe_agents.events import EventLog
    from symoe_agents.servers import ServerManager

    prof = Profiler(interval=0.0005, async_mode="enabled")

    async def go() -> None:
        cfg = bench.instant_config(64)
        agent = bench.greedy_expert("instant")
        rendered = bench.prompts(n, agent.template)
        events = EventLog()
        async with ServerManager(cfg, events) as manager:
            controller = Controller(cfg, manager, events)
            await bench.through_symoe(controller, "instant", agent, rendered[:200])  # warm-up
            with prof:
                await bench.through_symoe(controller, "instant", agent, rendered)

    asyncio.run(go())
    return prof


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", choices=["planning", "requests"])
    ap.add_argument("--questions", type=int, default=100000)
    ap.add_argument("--requests", type=int, default=2000)
    args = ap.parse_args()
    prof = planning(args.questions) if args.path == "planning" else requests(args.requests)
    print(prof.output_text(unicode=False, color=False, show_all=False))


if __name__ == "__main__":
    main()
