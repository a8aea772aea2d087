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


#: pids of processes a module fixture keeps for several tests (``symoe serve``): they and
#: their children are checked by that fixture when it ends, not after every test
KEPT: set[int] = set()


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """After every test: no server process this test process started is still alive."""
    yield
    from symoe_agents.servers import live_servers

    assert live_servers() == [], "a ServerProcess was not stopped"
    me = psutil.Process()
    kept = set(KEPT)
    for pid in KEPT:
        try:
            kept |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    left = [p for p in me.children(recursive=True) if p.pid not in kept and p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
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


def wait_gone(pids: list[int], within: float = 5.0) -> list[int]:
    """Poll until none of ``pids`` is alive (a zombie counts as gone); the survivors after
    ``within`` seconds."""
    import time

    deadline = time.monotonic() + within
    while pids_alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids_alive(pids)


def listed_letters(question: str) -> list[str]:
    """The options of an upstream-format question, read by a simpler rule than symoe's that
    fits the reference data: the "(X)" markers standing alone after "The options are:"."""
    import re

    return re.findall(r"(?:^|\s)\(([A-Z])\)\s", question[question.rindex("The options are:") :] + " ")


#: the answer instructions, written out here rather than rendered by symoe
HAND_INSTRUCTIONS = {
    "multiple_choice": 'Reason step by step first. Then, on the last line, write "The answer is (X)", where X is the '
    "single capital letter of the option you choose ({letters}).",
    "math": 'Reason step by step first. Then, on the last line, write "The answer is \\boxed{{X}}", where X is your final answer.',
    "free": 'Reason step by step first. Then, on the last line, write "The answer is: X", where X is your final answer in a few words.',
}


def hand_instruction(fmt: str, letters: list[str] | None = None) -> str:
    return HAND_INSTRUCTIONS[fmt].format(letters=", ".join(letters or []))


async def symoe_async(*args, env: dict[str, str] | None = None, timeout: float = 900) -> tuple[int, str, str]:
    """``symoe ARGS`` as a subprocess awaited in the test's event loop (where a stand-in
    API may be serving): (exit code, stdout, stderr)."""
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        *symoe_cmd(), *map(str, args), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def require(condition: bool, why: str) -> None:
    """Skip a test whose precondition is missing on a developer's machine; in CI (which
    has ../shared and every extra) a missing precondition is a failure, never a skip."""
    if not condition:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(why)


def llama_server() -> str:
    """The llama-server binary symoe runs (make setup builds it beside the venv's python)."""
    from symoe_agents.servers.llamacpp import find_llama_server

    exe = find_llama_server(None)
    assert exe is not None, "llama-server is missing: run python -m symoe_agents.servers.llama_build"
    return exe


def llama_server_argv(model: Path, port: int | str, alias: str, *extra: str) -> list[str]:
    """A real llama-server on 127.0.0.1 for tests that start their own server (its key goes
    in LLAMA_API_KEY, or in ``extra``)."""
    return [llama_server(), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", "4096", "-np", "2",
            "--threads", "1", "--alias", alias, *extra]  # fmt: skip


def small_pool_toml(tmp_path: Path, samples: int = 2, max_tokens: int = 64, extra: str = "") -> Path:
    """The embedded pool with smaller budgets (fewer skill samples, shorter answers), as a
    TOML file: the same real servers, in less time. ``extra`` is appended verbatim."""
    from symoe_agents.config import embedded_config_text

    text = embedded_config_text()  # its paths are absolute: it loads from tmp_path as it is
    for old in ("samples = 5", "max_tokens = 200"):
        assert old in text, f"the embedded pool's TOML changed: {old!r} is gone"
    text = text.replace("samples = 5", f"samples = {samples}").replace("max_tokens = 200", f"max_tokens = {max_tokens}")
    path = tmp_path / "pool.toml"
    path.write_text(text + extra)
    return path


@pytest.fixture
def small_disk(tmp_path):
    """A real filesystem that fills up: a 2 MiB tmpfs mounted for the test, so that writes
    really fail with ENOSPC (mounting needs root, as on this project's machines and CI)."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0, f"cannot mount a tmpfs: {r.stderr}"
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill_disk(folder: Path) -> Path:
    """Write a ballast file in ``folder`` until its filesystem is full; delete it to free."""
    ballast = folder / "ballast"
    with open(ballast, "wb", buffering=0) as f:
        for block in (65536, 4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * block)
            except OSError:
                pass
    return ballast
