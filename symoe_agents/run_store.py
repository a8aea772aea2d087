"""The batch's answers until its questions finish: on disk, not in memory.

A question's skill samples and its experts' answers are needed again only when its
aggregation prompt is built and its record written. Held in memory, they made a run grow
by every answer of every question (about 24 KB per question with 1 KB answers); here they
go to a scratch SQLite file as they arrive and are read back per question. The file is the
run's own (a temporary file, deleted at the end): the answer cache is for reuse across
runs and is keyed by call, this is keyed by question and is gone when the batch is.

Writes are queued and written by the IO thread in one transaction per flush; a read is
queued after them, so it sees every answer put before it. Durability is not its job (the
answer cache and the answers file have that): no journal, no fsync.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from pathlib import Path

import psutil

from . import io_thread
from .errors import SymoeError


class StoreError(SymoeError):
    """The run's scratch store could not be written (a full disk, usually)."""


class RunStore:
    """``put(question, role, slot, text)``; ``await get(question, role)`` -> {slot: text}."""

    def __init__(self, folder: str | None = None):
        _remove_stale(folder or tempfile.gettempdir())
        fd, self.path = tempfile.mkstemp(prefix=f"symoe-run-{os.getpid()}-", suffix=".sqlite", dir=folder)
        os.close(fd)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)  # used from the IO thread only
        self._db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
            "CREATE TABLE calls (question TEXT NOT NULL, role TEXT NOT NULL, slot INTEGER NOT NULL, body TEXT NOT NULL,"
            " PRIMARY KEY (question, role, slot)) WITHOUT ROWID;"
        )
        self._rows: io_thread.WriteQueue[tuple[str, str, int, str]] = io_thread.WriteQueue(self._flush)
        self._error: str | None = None
        self._closed = False

    def put(self, question: str, role: str, slot: int, body: str) -> None:
        """Queue a text; ``StoreError`` once a write has failed (the group then stops sending,
        and the answers received are in the answer cache)."""
        self._raise_failure()
        self._rows.add((question, role, slot, body))

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise StoreError(f"the run's answer store failed: {self._error}")

    def _flush(self) -> None:
        rows = self._rows.take()
        if not rows or self._closed or self._error is not None:
            return  # after a failure the file may be damaged (no journal): the first error is the one to tell
        try:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            self._error = f"{exc} (writing {self.path}; free space in {Path(self.path).parent} and re-run the same command to resume)"

    def _get_now(self, question: str, roles: tuple[str, ...]) -> dict[str, dict[int, str]]:
        self._flush()
        self._raise_failure()
        out: dict[str, dict[int, str]] = {r: {} for r in roles}
        marks = ",".join("?" * len(roles))
        for role, slot, body in self._db.execute(
            f"SELECT role, slot, body FROM calls WHERE question = ? AND role IN ({marks})", (question, *roles)
        ):
            out[role][slot] = body
        return out

    async def get(self, question: str, *roles: str) -> dict[str, dict[int, str]]:
        """The question's stored texts of each role, by slot."""
        return await io_thread.run(self._get_now, question, roles)

    def _close_now(self) -> None:
        self._closed = True
        self._db.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    async def aclose(self) -> None:
        await io_thread.run(self._close_now)

    def close(self) -> None:
        io_thread.wait(self._close_now)


def _remove_stale(folder: str) -> None:
    """Stores left by a process that was killed (SIGKILL runs no cleanup): their process is
    gone, so no one will read them again."""
    for path in Path(folder).glob("symoe-run-*-*.sqlite"):
        pid = path.name.split("-")[2]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            path.unlink(missing_ok=True)
