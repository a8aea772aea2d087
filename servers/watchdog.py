"""A small process beside each model server that kills it if symoe dies without cleanup.

symoe's own shutdown paths (normal exit, exceptions, Ctrl-C, SIGTERM, atexit) stop every
server. None of them runs when symoe is SIGKILLed or the OOM killer takes it; then the
server would hold the GPU for ever. Two guards cover that case:

- the server's direct process gets the kernel's parent-death signal (``PR_SET_PDEATHSIG``,
  set by ``launcher.py`` before it execs the server);
- this watchdog, in a session of its own, holds the read end of a pipe whose write end
  only symoe holds. When symoe dies by any path the kernel closes that end, the read here
  returns EOF at once, and the watchdog kills the server's process group and every
  descendant it has seen (SGLang's scheduler processes leave the group, so they are
  tracked by a periodic snapshot of the process tree).

A normal stop writes ``bye`` first: the watchdog then exits without touching anything.
Run as a plain script (``python watchdog.py PID``) so that it imports only psutil.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys

import psutil

SNAPSHOT_S = 0.5


def _snapshot(leader: psutil.Process, seen: dict[int, float]) -> None:
    with contextlib.suppress(psutil.Error):
        for child in leader.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                seen.setdefault(child.pid, child.create_time())


def _kill_all(pgid: int, leader_ctime: float, seen: dict[int, float]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    for pid, ctime in [(pgid, leader_ctime), *seen.items()]:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            if p.create_time() == ctime:  # the same process, not a reused pid
                p.kill()


def watch(pid: int) -> int:
    try:
        leader = psutil.Process(pid)
        leader_ctime = leader.create_time()
    except psutil.Error:
        return 0  # already gone
    seen: dict[int, float] = {}
    stdin = sys.stdin.buffer
    while True:
        ready, _, _ = select.select([stdin], [], [], SNAPSHOT_S)
        if ready:
            line = stdin.readline()
            if line.strip() == b"bye":
                return 0
            if not line:  # EOF: symoe is gone without saying bye
                _kill_all(pid, leader_ctime, seen)
                return 0
            continue
        _snapshot(leader, seen)  # a leader that already ended has no children left to list


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is symoe's to handle
    sys.exit(watch(int(sys.argv[1])))
