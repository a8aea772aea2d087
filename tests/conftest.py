from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
UPSTREAM = ROOT.parent / "shared" / "upstream-data"


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """After every test: no server process this test process started is still alive."""
    yield
    from symoe_agents.servers import live_servers

    assert live_servers() == [], "a ServerProcess was not stopped"
    me = psutil.Process()
    left = [p for p in me.children(recursive=True) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert left == [], f"processes left behind: {[(p.pid, p.cmdline()[:4]) for p in left]}"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def symoe_cmd() -> list[str]:
    return [sys.executable, "-m", "symoe_agents.cli"]


def pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def env_without_keys() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()}
