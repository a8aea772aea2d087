"""Exec a model server with the kernel's parent-death signal set (Linux).

``python launcher.py PARENT_PID ARGV...`` asks the kernel to SIGKILL this process when its
parent (symoe) dies, then execs the server in its place: the setting survives ``exec``, so
the server itself dies with symoe even if symoe is SIGKILLed and runs no cleanup. If symoe
died before the setting took effect, the parent is no longer PARENT_PID and the server is
never started. Only the standard library, so it starts in milliseconds.
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main() -> None:
    parent, argv = int(sys.argv[1]), sys.argv[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        sys.stderr.write(f"symoe launcher: prctl failed (errno {ctypes.get_errno()}); starting without it\n")
    if os.getppid() != parent:
        sys.exit(1)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
