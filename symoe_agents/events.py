"""Structured lifecycle events: every server start/ready/stop and group start/end.

Events are what the schedule *did*; they feed the end-of-run summary (``summary``), the optional JSONL
log (``--events FILE``) and the progress display. They never carry API keys: commands are
recorded with the key replaced by ``***``.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict

from .errors import OutputError


EventKind = Literal[
    "run_start",
    "routing",
    "group_start",
    "group_end",
    "server_start",
    "server_ready",
    "server_stop",
    "server_failed",
    "server_released",
    "server_sleep",
    "server_wake",
    "server_restart",
    "request_failed",
    "requests_resent",
    "node_lost",
    "group_moved",
    "run_end",
]


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ts: float
    kind: EventKind
    model: str | None = None
    server: str | None = None
    node: str | None = None  # the Ray node it happened on (a cluster run); None: this machine
    group: str | None = None
    pid: int | None = None
    port: int | None = None
    duration_s: float | None = None
    requests: int | None = None
    detail: dict[str, Any] = {}


class EventLog:
    """Appends events to a JSONL file as they happen (optionally) and keeps the latest
    ``keep`` in memory: a long run's events are in the file, its summary in counters
    (``EventTally``), so memory does not grow with the run."""

    def __init__(self, path: str | Path | None = None, keep: int = 10_000):
        self.events: deque[Event] = deque(maxlen=keep)
        self._file: IO[str] | None = None
        if path:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                # non-blocking open: a FIFO nobody reads fails at once (ENXIO) instead of
                # waiting forever on the event loop, where not even Ctrl-C is handled
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644)
                os.set_blocking(fd, True)
                self._file = open(fd, "a", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise OutputError(f"cannot open the events file {path}: {exc.strerror or exc}; choose another --events") from None
        self._listeners: list[Callable[[Event], None]] = []
        self.write_error: str | None = None  # why the file stopped being written
        self.node: str | None = None  # a cluster run: the node of events that name none (the driver's)

    def listen(self, fn: Callable[[Event], None]) -> None:
        self._listeners.append(fn)

    def unlisten(self, fn: Callable[[Event], None]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def emit(self, kind: EventKind, **fields: Any) -> Event:
        if self.node is not None and fields.get("node") is None:
            fields["node"] = self.node
        return self.append(Event(ts=time.time(), kind=kind, **fields))

    def append(self, event: Event) -> Event:
        """Log an event made elsewhere (a cluster node's, with its own time and node)."""
        self.events.append(event)
        if self._file:
            try:
                self._file.write(json.dumps(event.model_dump(exclude_none=True)) + "\n")
                self._file.flush()
            except OSError as exc:  # a full disk: events are a diagnosis, never worth stopping a paid batch for
                self.write_error = f"{exc.strerror or exc}; events after {time.strftime('%H:%M:%S')} are not in the file"
                self._drop_file()
        for fn in list(self._listeners):
            fn(event)
        return event

    def _drop_file(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError as exc:  # what a failed write left buffered fails again
                self.write_error = self.write_error or str(exc.strerror or exc)

    def close(self) -> None:
        self._drop_file()
