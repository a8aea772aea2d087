"""Whose turn it is on a device: the swap-aware arbiter of ``symoe serve``.

Several batches (the serve windows) run at once, each asking for its groups' servers one
after another. On one device one model server runs at a time, so a group first takes a
turn for its server here:

- While a server holds the device, any number of groups for that same server may join and
  run side by side (its slots batch them): the loaded model serves every group that needs
  it before it is swapped out.
- A group for another server waits. When the device is free, the next server is the one
  now loaded if groups wait for it, else the server whose group has waited longest.
- No starvation: once a waiting group has waited ``max_wait_s``, no new group joins the
  server that holds the device; the groups already running finish (at most about one
  group's time) and the longest-waiting server comes next. So no group waits much longer
  than ``max_wait_s`` plus one group.

A turn is held until its group's requests are all final, so a model with requests in
flight is never swapped out. The decisions are in ``_Device`` and take the time as an
argument: they are pure bookkeeping, tested without a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Waiter:
    server: str
    since: float
    granted: asyncio.Future[None]


@dataclass
class TurnStats:
    turns: int = 0
    switches: int = 0  # the device changed hands to another server
    longest_wait_s: float = 0.0
    longest_turn_s: float = 0.0


@dataclass
class _Device:
    max_wait_s: float
    current: str | None = None  # the server that holds (or last held) the device
    holders: int = 0
    waiting: deque[_Waiter] = field(default_factory=deque)
    stats: TurnStats = field(default_factory=TurnStats)

    def overdue(self, now: float) -> _Waiter | None:
        """The longest-waiting group for another server, once it has waited ``max_wait_s``."""
        for w in self.waiting:  # oldest first
            if w.server != self.current and now - w.since >= self.max_wait_s:
                return w
        return None

    def may_enter(self, server: str, now: float) -> bool:
        if self.holders == 0:
            return not self.waiting
        return server == self.current and self.overdue(now) is None

    def grant(self, now: float) -> list[_Waiter]:
        """The waiters to admit now (removed from the queue); the caller resolves them."""
        if not self.waiting:
            return []
        if self.holders > 0:
            if self.overdue(now) is not None:
                return []  # the device drains for the overdue server
            chosen = self.current
        else:
            late = self.overdue(now)
            if late is not None:
                chosen = late.server
            elif any(w.server == self.current for w in self.waiting):
                chosen = self.current
            else:
                chosen = self.waiting[0].server
        admitted = [w for w in self.waiting if w.server == chosen]
        if not admitted:
            return []
        self.waiting = deque(w for w in self.waiting if w.server != chosen)
        if chosen != self.current:
            self.stats.switches += self.current is not None
            self.current = chosen
        self.holders += len(admitted)
        for w in admitted:
            self.stats.longest_wait_s = max(self.stats.longest_wait_s, now - w.since)
        return admitted


class Turns:
    def __init__(self, max_wait_s: float):
        self.max_wait_s = max_wait_s
        self._devices: dict[str, _Device] = {}

    def device(self, name: str) -> _Device:
        if name not in self._devices:
            self._devices[name] = _Device(self.max_wait_s)
        return self._devices[name]

    def stats(self) -> TurnStats:
        out = TurnStats()
        for d in self._devices.values():
            out.turns += d.stats.turns
            out.switches += d.stats.switches
            out.longest_wait_s = max(out.longest_wait_s, d.stats.longest_wait_s)
            out.longest_turn_s = max(out.longest_turn_s, d.stats.longest_turn_s)
        return out

    def busy(self, server: str) -> bool:
        """A group holds or waits for ``server`` somewhere: it must not be stopped."""
        return any((d.current == server and d.holders) or any(w.server == server for w in d.waiting) for d in self._devices.values())

    @contextlib.asynccontextmanager
    async def turn(self, device: str, server: str | None) -> AsyncIterator[None]:
        """Hold ``device`` for ``server`` (None: a hosted model, which needs no turn)."""
        if server is None:
            yield
            return
        d = self.device(device)
        now = time.monotonic()
        if d.may_enter(server, now):
            if d.current != server:
                d.stats.switches += d.current is not None
                d.current = server
            d.holders += 1
        else:
            waiter = _Waiter(server, now, asyncio.get_running_loop().create_future())
            d.waiting.append(waiter)
            try:
                await waiter.granted
            except asyncio.CancelledError:
                if waiter in d.waiting:
                    d.waiting.remove(waiter)
                elif waiter.granted.done() and not waiter.granted.cancelled():
                    self._leave(device)  # granted just as it was cancelled: give the turn back
                raise
        d.stats.turns += 1
        began = time.monotonic()
        try:
            yield
        finally:
            d.stats.longest_turn_s = max(d.stats.longest_turn_s, time.monotonic() - began)
            self._leave(device)

    def _leave(self, device: str) -> None:
        d = self._devices[device]
        d.holders -= 1
        self._admit(device)

    def _admit(self, device: str) -> None:
        d = self._devices[device]
        while True:
            live = 0
            for w in d.grant(time.monotonic()):
                if w.granted.done():  # its asker was cancelled meanwhile: the turn is not taken
                    d.holders -= 1
                else:
                    w.granted.set_result(None)
                    live += 1
            if live or d.holders or not d.waiting:
                return
