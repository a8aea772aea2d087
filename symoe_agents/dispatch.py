"""Sending one group's requests: a fixed pool of workers over the group's order.

A task per request would hold a coroutine for every request of a group that may have
hundreds of thousands; a pool holds ``workers`` of them, whatever the group's size.

``sample_batches`` plans which samples of one prompt go in one request (the OpenAI ``n``,
llama-server's default): the prompt is then processed once and copied into the other
slots. Where samples go apart (``samples_per_request = 1``), ``per_key`` helps instead.

With ``per_key``, for llama-server: at most that many of a question's requests (its skill
samples) at once, the next as soon as one has finished, ahead of other questions' first
requests. They share one prompt, and llama-server keeps a finished prompt in the slot that
ran it, so the next sample reuses it instead of processing it again; the other questions
fill the other slots. Sent together, the samples of a question would each process the
whole prompt in a slot of their own (24 questions x 5 samples on the embedded SmolLM2:
49-51 s together, 26-28 s one at a time). SGLang and vLLM share prefixes between running
requests, so they get the whole group at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping


def pool_size(per_key_counts: Mapping[Hashable, int], in_flight: int, slots: int | None) -> tuple[int, int | None]:
    """(workers, per_key) for a group with ``per_key_counts[question]`` requests each.

    ``slots``: the server's slots when it reuses a prompt only in the slot that processed
    it (llama-server), else None. If some question has more requests than its share of the
    slots, its requests take turns (``per_key``) and the pool is the slots, so a freed slot
    takes the next sample. Otherwise twice the in-flight limit: a request backing off before
    a retry has given its slot back, and a spare worker's request takes it.
    """
    n = sum(per_key_counts.values())
    if slots is not None and per_key_counts:
        cap = max(1, min(in_flight, slots))
        per_key = -(-cap // len(per_key_counts))
        if max(per_key_counts.values()) > per_key:
            return min(n, cap), per_key
    return min(n, 2 * in_flight), None


async def dispatch(
    order: Iterable[int],
    work: Callable[[int], Awaitable[None]],
    key_of: Callable[[int], Hashable],
    workers: int,
    per_key: int | None = None,
) -> None:
    """Run ``work(i)`` for every ``i`` in ``order``, at most ``workers`` at once, in that
    order; with ``per_key``, at most that many items of one key at a time, and when one
    ends, the key's next item goes before anything else."""
    firsts: deque[int] = deque()
    later: dict[Hashable, deque[int]] = {}
    taken: dict[Hashable, int] = {}
    for i in order:
        key = key_of(i)
        if per_key is not None and taken.get(key, 0) >= max(1, per_key):
            later.setdefault(key, deque()).append(i)
        else:
            taken[key] = taken.get(key, 0) + 1
            firsts.append(i)
    taken.clear()
    ready: deque[int] = deque()
    # items in ``later``: each is released by the end of an item of its key that is running
    # or queued (a key with waiting items has one), so an idle worker waits for them
    waiting = sum(len(q) for q in later.values())
    changed = asyncio.Condition()

    async def worker() -> None:
        nonlocal waiting
        while True:
            async with changed:
                while not ready and not firsts and waiting:
                    await changed.wait()
                if ready:
                    i = ready.popleft()
                elif firsts:
                    i = firsts.popleft()
                else:
                    return
            try:
                await work(i)
            finally:  # also when work fails: the key's next item must not wait forever
                key = key_of(i)
                if key in later:
                    async with changed:
                        queue = later[key]
                        ready.append(queue.popleft())  # into the slot this one left, its prompt still there
                        waiting -= 1
                        if not queue:
                            del later[key]
                        changed.notify_all()

    async with asyncio.TaskGroup() as tg:
        for _ in range(max(1, workers)):
            tg.create_task(worker())


def sample_batches(shared: Mapping[int, tuple[Hashable, int]], limit: int) -> dict[int, tuple[int, ...]]:
    """Which requests share one request (``n``): ``shared[i] = (prompt key, sample)``, the
    prompt key naming the question and its rendered prompt. Requests with one prompt key go
    together in sample order, at most ``limit`` per request; every request maps to its
    batch's members (itself alone when ``limit`` is 1). Pure, and computed from the whole
    group, never from what the cache holds, so a batch and its cache keys are the same in
    every run."""
    by_prompt: dict[Hashable, list[tuple[int, int]]] = {}
    for i, (prompt_key, sample) in shared.items():
        by_prompt.setdefault(prompt_key, []).append((sample, i))
    out: dict[int, tuple[int, ...]] = {}
    step = max(1, limit)
    for members in by_prompt.values():
        members.sort()
        for start in range(0, len(members), step):
            batch = tuple(i for _, i in members[start : start + step])
            for i in batch:
                out[i] = batch
    return out
