"""What calls cost: device time shared among the requests that use a device, prices, and the
run's budget.

Device time. A local model's cost is the time its device spends on the group's requests.
While w sequences are open on a server, each accrues dt / w of device time (processor
sharing, ``ShareClock``), so the shares of the requests a server answered add up to the
time it was busy, however many ran at once. The server's load (and any restart) is shared
evenly among the group's requests. Idle gaps (between requests, while the schedule waits)
belong to no request: the run summary shows them as the difference between the device
time the groups held and the time attributed to calls.
"""

from __future__ import annotations

import time

from .config import Price
from .errors import BudgetSpent


class ShareClock:
    """Processor-sharing virtual time of one server: ``leave(enter(w), w)`` is the device
    time each of a request's w sequences accrued while it was open."""

    __slots__ = ("_virtual", "_open", "_at")

    def __init__(self) -> None:
        self._virtual = 0.0
        self._open = 0
        self._at = time.monotonic()

    def _tick(self) -> None:
        now = time.monotonic()
        if self._open:
            self._virtual += (now - self._at) / self._open
        self._at = now

    def enter(self, weight: int = 1) -> float:
        self._tick()
        self._open += weight
        return self._virtual

    def leave(self, mark: float, weight: int = 1) -> float:
        self._tick()
        self._open -= weight
        return self._virtual - mark


def call_cost(price: Price, prompt_tokens: int, completion_tokens: int, device_s: float) -> float:
    """USD of one call: its tokens at a hosted model's prices, or its device time at a local one's."""
    usd = 0.0
    if price.input_per_mtok:
        usd += prompt_tokens * price.input_per_mtok / 1e6
    if price.output_per_mtok:
        usd += completion_tokens * price.output_per_mtok / 1e6
    if price.device_hour:
        usd += device_s * price.device_hour / 3600
    return usd


class Budget:
    """The run's spending against ``--max-cost``: calls add what they cost as they return;
    once the total reaches the limit no group sends another request."""

    def __init__(self, limit_usd: float):
        self.limit_usd = limit_usd
        self.spent_usd = 0.0

    @property
    def exhausted(self) -> bool:
        return self.spent_usd >= self.limit_usd

    def add(self, usd: float) -> None:
        self.spent_usd += usd

    def error(self) -> BudgetSpent:
        return BudgetSpent(self.limit_usd, self.spent_usd)
