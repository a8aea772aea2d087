"""One run per output: an exclusive lock beside the answers file or profiles folder.

Two ``symoe solve`` commands on the same ``-o`` both resumed the same file, both ran the
whole batch, and wrote every id twice. The lock is taken before the output's state is read
and held until the run ends; the second command is refused at once, naming the first.

The lock is ``fcntl.flock`` on a small file ``.NAME.lock`` in the output's folder, not on
the output itself: ``--retry-failed`` replaces the answers file with a rewritten copy,
which would drop a lock held on the old one. The kernel releases a flock when its holder
dies however it dies, so a lock left by a killed run never blocks the next. The file holds
the holder's pid and command for the message, and is removed when the lock is released.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError


def lock_path(output: Path) -> Path:
    """Beside the output as it really is: two spellings of one file (a link, ".") share one lock."""
    try:
        real = output.resolve()
    except (OSError, RuntimeError):  # a link loop: the output check refuses it anyway
        real = output.absolute()
    return real.parent / f".{real.name}.lock"


def _holder(path: Path) -> str:
    try:
        said = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "another process"
    pid, _, command = said.partition(" ")
    return f"process {pid} ({command})" if pid.isdigit() else "another process"


@contextlib.contextmanager
def exclusive(output: Path, what: str = "the answers file") -> Iterator[None]:
    """Hold the lock on ``output`` for the block; ``OutputError`` if another run holds it."""
    path = lock_path(output)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder of {what} {output}: {exc.strerror}; choose another -o") from None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot create the lock file {path} for {what} {output}: {exc.strerror}; choose another -o") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(
                f"{what} {output} is in use by {_holder(path)}; wait for it to finish, or choose another -o"
            ) from None
        except OSError as exc:  # ENOLCK, EOPNOTSUPP: a file system without locks (some NFS or FUSE mounts)
            os.close(fd)
            raise OutputError(f"cannot lock {what} {output} ({exc.strerror}); put it on a local disk with -o") from None
        # the holder before us may have removed the file after we opened it: our lock is
        # then on a file nobody else will find, so take the lock on the new one
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200]
        with contextlib.suppress(OSError):  # only for the message: a full disk must not stop the run here
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {command}\n".encode(errors="replace"))
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still holding it: a waiting opener then sees a new file
        os.close(fd)
