"""How late the event loop wakes: a probe for work that holds the loop.

A task sleeps ``interval`` at a time and counts how much later than asked it woke, in a
histogram of 1 ms buckets (constant memory, however long the run). Anything that blocks
the loop (a disk write, a SQLite commit, a long parse) shows up here as lag; the run's
p50, p99 and max go into its ``run_end`` event.
"""

from __future__ import annotations

import asyncio
import time

_BUCKETS = 2000  # 1 ms each; the last holds everything from 1999 ms up


class LoopLagProbe:
    def __init__(self, interval_s: float = 0.01):
        self.interval_s = interval_s
        self.counts = [0] * _BUCKETS
        self.max_ms = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            asked = time.monotonic()
            await asyncio.sleep(self.interval_s)
            self.record((time.monotonic() - asked - self.interval_s) * 1000)

    def record(self, lag_ms: float) -> None:
        lag_ms = max(0.0, lag_ms)
        self.max_ms = max(self.max_ms, lag_ms)
        self.counts[min(int(lag_ms), _BUCKETS - 1)] += 1

    def percentile(self, q: float) -> float:
        """The upper edge (ms) of the bucket that holds the q-th fraction of the samples."""
        total = sum(self.counts)
        if not total:
            return 0.0
        need = q * total
        seen = 0
        for ms, n in enumerate(self.counts):
            seen += n
            if seen >= need:
                return float(ms + 1)
        return float(_BUCKETS)

    def report(self) -> dict[str, float]:
        return {"samples": sum(self.counts), "p50": self.percentile(0.5), "p99": self.percentile(0.99), "max": round(self.max_ms, 1)}

    def stop(self) -> dict[str, float]:
        """Stop probing (idempotent) and report. The task is cancelled, not awaited: a
        cancellation of the caller's own must never be taken for the probe's."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        return self.report()
