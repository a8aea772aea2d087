"""The worker pool that sends a group's requests (symoe_agents/dispatch.py)."""

import asyncio

from symoe_agents.dispatch import dispatch

# a group as the schedule builds it: question-major, each question's samples together
KEYS = ["a", "a", "a", "b", "b", "b", "c", "c", "c"]


async def run(order, workers, gated, durations=None):
    started, running, peak = [], 0, 0

    async def work(i):
        nonlocal running, peak
        started.append(i)
        running += 1
        peak = max(peak, running)
        await asyncio.sleep((durations or {}).get(i, 0.01))
        running -= 1

    await dispatch(order, work, KEYS.__getitem__, workers, gated)
    return started, peak


async def test_ungated_keeps_the_order_and_the_bound():
    started, peak = await run(range(9), 2, gated=False)
    assert started == list(range(9)) and peak == 2


async def test_gated_sends_one_item_of_a_key_at_a_time():
    # a's first is slow: b's and c's items go meanwhile, a's others only after it, in turn
    started, peak = await run(range(9), 3, gated=True, durations={0: 0.2})
    assert started[:3] == [0, 3, 6]  # the first of every key
    assert started.index(1) > started.index(5) and started.index(1) > started.index(8)
    assert started.index(2) > started.index(1)
    assert sorted(started) == list(range(9)) and peak == 3


async def test_gated_next_items_go_before_other_keys_firsts():
    keys_order = list(range(9))
    started, _ = await run(keys_order, 1, gated=True)  # one worker: strictly one at a time
    assert started == [0, 1, 2, 3, 4, 5, 6, 7, 8]  # a0 done -> a1 a2 before b0


async def test_a_failing_item_does_not_strand_its_keys_others():
    seen = []

    async def work(i):
        seen.append(i)
        if i == 0:
            raise RuntimeError("boom")

    try:
        await dispatch(range(9), work, KEYS.__getitem__, 2, gated=True)
    except* RuntimeError:
        pass
    assert 0 in seen  # the error surfaced; the pool did not hang waiting for a's others


async def test_an_empty_order_returns_at_once():
    await asyncio.wait_for(dispatch([], lambda i: asyncio.sleep(0), KEYS.__getitem__, 4, gated=True), 1)
