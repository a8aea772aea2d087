"""Checking where a command will write, before anything starts or is paid for.

An output that is a folder, lies under a regular file, or cannot be written used to fail
after the first groups had been answered (or with a traceback); and two options naming the
same file silently damaged it (``--events`` at the input appended events to the user's
questions; at ``-o`` it broke resume). Every check here is an ``OutputError`` the command
prints as one line and exits 2 on.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from .errors import OutputError


def _nearest_existing(path: Path) -> Path:
    p = path
    while p != p.parent:
        try:
            os.stat(p)
            return p
        except FileNotFoundError:
            p = p.parent
        except OSError:  # unreadable (EACCES), a link loop: the probe below says why
            return p
    return p


def _probe_folder(folder: Path) -> str | None:
    """Why a file cannot be created in ``folder`` (None: it can). A real create, because
    permissions, a read-only mount and a full inode table all show only then."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".symoe-probe-"):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


def check_file_target(path: Path, what: str, option: str, devices_ok: bool = False, example: str = "answers.jsonl") -> None:
    """``path`` can be appended to or created as a file (``devices_ok``: a FIFO with a
    reader, or a character device such as /dev/stderr, is fine too, as for events)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        st = None  # a parent is a file: said below
    except OSError as exc:
        raise OutputError(f"{what} {path}: {exc.strerror}; choose another {option}") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{what} {path} is a folder; give {option} a file path, e.g. {path / example}")
        special = stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode)
        if not stat.S_ISREG(st.st_mode) and not (devices_ok and special):
            raise OutputError(f"{what} {path} is not a regular file; choose another {option}")
        if stat.S_ISFIFO(st.st_mode):  # opening a FIFO nobody reads would wait forever
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                raise OutputError(f"{what} {path} is a named pipe that no process reads; start its reader first, or choose another {option}") from None
        if stat.S_ISREG(st.st_mode):
            try:  # append mode: creates nothing, truncates nothing
                with open(path, "ab"):
                    pass
            except OSError as exc:
                raise OutputError(f"cannot write {what} {path}: {exc.strerror}; choose another {option}") from None
        return
    check_folder_target(path.parent, what, option, for_file=path)


def check_events_target(events: Path | None) -> None:
    """The ``--events`` file of any command (a pipe or /dev/stderr is fine)."""
    if events is not None:
        check_file_target(events, "the events file", "--events", devices_ok=True, example="events.jsonl")


def check_folder_target(folder: Path, what: str, option: str, for_file: Path | None = None) -> None:
    """``folder`` exists as a writable folder, or can be created."""
    shown = for_file or folder
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise OutputError(f"{what} {shown} cannot be created: {base} is a file, not a folder; choose another {option}")
    why = _probe_folder(base)
    if why is not None:
        raise OutputError(f"cannot write {what} {shown}: {base}: {why}; choose another {option}")


def _same(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
    except (OSError, RuntimeError):  # a symbolic link loop (RuntimeError before Python 3.13): said when it is opened
        return False
    with contextlib.suppress(OSError):  # hard links, or two spellings the resolver missed
        return os.path.samefile(a, b)
    return False


def check_distinct(paths: dict[str, Path | None]) -> None:
    """No two of the named paths (option: path) are the same file, links resolved."""
    named = [(opt, p) for opt, p in paths.items() if p is not None]
    for i, (opt_a, a) in enumerate(named):
        for opt_b, b in named[i + 1 :]:
            if _same(a, b):
                raise OutputError(f"{opt_a} and {opt_b} are the same file ({a}); give each its own path")
