"""Sending one group's requests: a fixed pool of workers over the group's order.

A task per request would hold a coroutine for every request of a group that may have
hundreds of thousands; a pool holds ``workers`` of them, whatever the group's size.

With ``gated``, for servers that batch: a question's requests (its skill samples) go one
after another, each as soon as the one before has finished, ahead of other questions'
first requests. They share one prompt, and a batching server keeps a finished prompt in
the slot that ran it (llama-server; SGLang in its radix cache), so each question's prompt
is processed once instead of once per sample; the other questions fill the other slots.
Sent together, the samples of a question would each process the whole prompt in a slot
of their own.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable


async def dispatch(
    order: Iterable[int],
    work: Callable[[int], Awaitable[None]],
    key_of: Callable[[int], Hashable],
    workers: int,
    gated: bool = False,
) -> None:
    """Run ``work(i)`` for every ``i`` in ``order``, at most ``workers`` at once, in that
    order (with ``gated``: one item of a key at a time, its next one first when it ends)."""
    firsts: deque[int] = deque()
    later: dict[Hashable, list[int]] = {}
    seen: set[Hashable] = set()
    for i in order:
        key = key_of(i)
        if gated and key in seen:
            later.setdefault(key, []).append(i)
        else:
            seen.add(key)
            firsts.append(i)
    seen.clear()
    ready: deque[int] = deque()
    blocked = 0  # keys with an item running while their next ones wait
    changed = asyncio.Condition()

    async def worker() -> None:
        nonlocal blocked
        while True:
            async with changed:
                while not ready and not firsts and blocked:
                    await changed.wait()
                if ready:
                    i = ready.popleft()
                elif firsts:
                    i = firsts.popleft()
                    blocked += key_of(i) in later
                else:
                    return
            try:
                await work(i)
            finally:
                key = key_of(i)
                if key in later:
                    async with changed:
                        waiting = later[key]
                        ready.append(waiting.pop(0))  # the key's next item, in the slot this one left
                        if not waiting:
                            del later[key]
                            blocked -= 1
                        changed.notify_all()

    async with asyncio.TaskGroup() as tg:
        for _ in range(max(1, workers)):
            tg.create_task(worker())
