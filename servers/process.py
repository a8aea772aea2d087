"""One server process: spawn, wait until ready, stop. The only place symoe touches processes.

Design (after vLLM's test server and the MCP SDK's process-tree termination):
- Spawn in a new session, so the server and everything it forks share one process group
  that symoe can signal without touching anything else; output goes to a log file (an
  undrained pipe can deadlock a chatty server).
- Readiness is polled under one deadline; if the process exits first, fail at once with
  the tail of its log.
- Stop: SIGTERM to the process group, a grace period, SIGKILL, reap. Descendants that
  escaped into a session of their own (SGLang's scheduler processes do) are found through
  the process tree before the signal and killed too.
- Every live server is registered so that an interpreter exit by any path (atexit) kills
  what is left: no orphan holds a GPU after symoe is gone.
- When symoe cannot clean up (SIGKILL, the OOM killer), the server still goes: on Linux it
  starts through ``launcher.py`` with the kernel's parent-death signal, and a watchdog
  process beside it (``watchdog.py``) kills its group and escaped descendants as soon as
  symoe's end of a pipe closes.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import psutil

from symoe_agents.errors import ServerStartError
from symoe_agents.redaction import child_env

LOOPBACK = "127.0.0.1"
_HERE = Path(__file__).resolve().parent
_PDEATHSIG = sys.platform.startswith("linux")

_LIVE: dict[int, "ServerProcess"] = {}


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the start retries if it is taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """True when nothing listens on the port. SO_REUSEADDR as servers use it, so the
    TIME_WAIT connections a stopped server leaves behind (60 s on Linux) do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def tail(path: Path, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")
    except OSError:
        return ""


#: ready(port) -> True when the server answers as ready; raise or return False otherwise
ReadinessProbe = Callable[[int], Awaitable[bool]]


class ServerProcess:
    """A model server process in its own session. Use ``start()`` then ``stop()``."""

    def __init__(self, name: str, argv: Sequence[str], port: int, log_path: Path, env: dict[str, str] | None = None):
        """The server and its watchdog inherit ``redaction.child_env()``: symoe's environment
        without the hosted keys (a local server never needs them, and another process's
        environment is readable by its user and by crash reporters)."""
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.watchdog: subprocess.Popen[bytes] | None = None
        self.started_at: float = 0.0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = child_env(self.env)
        argv = self.argv
        if _PDEATHSIG:  # -S -I: the launcher needs only the standard library
            argv = [sys.executable, "-S", "-I", str(_HERE / "launcher.py"), str(os.getpid()), *argv]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - argv built from validated config, no shell
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                close_fds=True,
            )
        self.started_at = time.monotonic()
        _LIVE[self.proc.pid] = self
        self.watchdog = subprocess.Popen(  # noqa: S603
            [sys.executable, str(_HERE / "watchdog.py"), str(self.proc.pid)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a group kill aimed at symoe must not take the watchdog first
            close_fds=True,
            env=child_env(),
        )

    def _tell_watchdog(self) -> subprocess.Popen | None:
        """Tell the watchdog the server is stopped: it exits without acting."""
        dog, self.watchdog = self.watchdog, None
        if dog is not None:
            with contextlib.suppress(OSError, ValueError):
                assert dog.stdin is not None
                dog.stdin.write(b"bye\n")
                dog.stdin.close()
        return dog

    def _dismiss_watchdog(self) -> None:
        """The watchdog told and reaped, blocking (atexit and signal paths)."""
        dog = self._tell_watchdog()
        if dog is None:
            return
        try:
            dog.wait(timeout=5)
        except subprocess.TimeoutExpired:
            dog.kill()
            dog.wait()

    async def _dismiss_watchdog_async(self) -> None:
        """The same, waiting without holding the event loop."""
        dog = self._tell_watchdog()
        if dog is None:
            return
        if not await _exited(dog, 5.0):
            dog.kill()
            await _exited(dog, 5.0)

    async def wait_ready(self, probe: ReadinessProbe, timeout: float) -> float:
        """Poll ``probe`` until it says ready; return seconds since spawn."""
        assert self.proc is not None
        deadline = self.started_at + timeout
        # a probe is one local HTTP request (about a millisecond), so poll often: a delay that
        # grew to 1 s noticed a llama-server ready at 2.1 s only at 3.1 s
        delay = 0.05
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerStartError(self.name, f"process exited with code {code} while starting", tail(self.log_path), str(self.log_path))
            try:
                if await probe(self.port):
                    return time.monotonic() - self.started_at
            except (OSError, asyncio.TimeoutError):
                pass  # refused or slow: not ready yet
            if time.monotonic() >= deadline:
                raise ServerStartError(
                    self.name,
                    f"not ready after {timeout:.0f} s (raise servers.start_timeout_s if the model is large)",
                    tail(self.log_path),
                    str(self.log_path),
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.2, 0.25)

    def _group_members(self) -> list[psutil.Process]:
        """The leader's descendants, including those that left its process group."""
        if self.proc is None:
            return []
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []

    async def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the group, wait up to ``grace`` s, SIGKILL what is left, reap. Idempotent."""
        proc = self.proc
        if proc is None:
            return None
        escaped = self._group_members()
        pgid = proc.pid  # leader of its own session: pgid == pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        for p in escaped:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(pgid) and not any(_alive(p) for p in escaped):
                break
            await asyncio.sleep(0.05)
        self._kill_all(escaped)  # what ignored SIGTERM, also what left the tree; then reaped, waiting off the loop
        await _exited(proc, 5.0)
        _LIVE.pop(proc.pid, None)
        await self._dismiss_watchdog_async()
        return proc.returncode

    def _kill_all(self, known: Sequence[psutil.Process] = ()) -> None:
        """SIGKILL the whole group, its descendants now and ``known`` ones (no waiting)."""
        proc = self.proc
        if proc is None:
            return
        escaped = {p.pid: p for p in [*known, *self._group_members()]}.values()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for p in escaped:
            with contextlib.suppress(psutil.Error):
                p.kill()

    def kill_now(self) -> None:
        """SIGKILL the whole group and every recorded descendant; reap. Blocking, for the
        paths where no event loop runs (atexit, a second signal)."""
        proc = self.proc
        if proc is None:
            return
        self._kill_all()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        _LIVE.pop(proc.pid, None)
        self._dismiss_watchdog()


async def _exited(proc: subprocess.Popen, timeout: float) -> bool:
    """Whether ``proc`` exited (and was reaped) within ``timeout`` s, polled without blocking."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def live_servers() -> list[ServerProcess]:
    return list(_LIVE.values())


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE.values()):
        server.kill_now()
