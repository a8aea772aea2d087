"""The worker pool that sends a group's requests (symoe_agents/dispatch.py)."""

import asyncio

from symoe_agents.dispatch import dispatch

# a group as the schedule builds it: question-major, each question's samples together
KEYS = ["a", "a", "a", "b", "b", "b", "c", "c", "c"]


async def run(order, workers, per_key, durations=None):
    started, running, peak = [], 0, 0
    by_key: dict[str, int] = {}
    peak_key = 0

    async def work(i):
        nonlocal running, peak, peak_key
        started.append(i)
        running += 1
        by_key[KEYS[i]] = by_key.get(KEYS[i], 0) + 1
        peak, peak_key = max(peak, running), max(peak_key, by_key[KEYS[i]])
        await asyncio.sleep((durations or {}).get(i, 0.01))
        running -= 1
        by_key[KEYS[i]] -= 1

    await asyncio.wait_for(dispatch(order, work, KEYS.__getitem__, workers, per_key), 10)
    return started, (peak, peak_key)


async def test_ungated_keeps_the_order_and_the_bound():
    started, (peak, peak_key) = await run(range(9), 2, per_key=None)
    assert started == list(range(9)) and peak == 2 and peak_key == 2


async def test_per_key_one_sends_one_item_of_a_key_at_a_time():
    # a's first is slow: b's and c's items go meanwhile, a's others only after it, in turn
    started, (peak, peak_key) = await run(range(9), 3, per_key=1, durations={0: 0.2})
    assert started[:3] == [0, 3, 6]  # the first of every key
    assert started.index(1) > started.index(5) and started.index(1) > started.index(8)
    assert started.index(2) > started.index(1)
    assert sorted(started) == list(range(9)) and peak == 3 and peak_key == 1


async def test_a_keys_next_item_goes_before_other_keys_firsts():
    keys_order = list(range(9))
    started, _ = await run(keys_order, 1, per_key=1)  # one worker: strictly one at a time
    assert started == [0, 1, 2, 3, 4, 5, 6, 7, 8]  # a0 done -> a1 a2 before b0


async def test_per_key_two_lets_two_of_a_key_run_together():
    started, (peak, peak_key) = await run(range(9), 9, per_key=2, durations={0: 0.1, 1: 0.1})
    assert started[:6] == [0, 1, 3, 4, 6, 7] and peak_key == 2 and sorted(started) == list(range(9))


async def test_a_failing_item_raises_and_does_not_strand_its_keys_others():
    import pytest

    seen = []

    async def work(i):
        seen.append(i)
        if i == 0:
            raise RuntimeError("boom")
        await asyncio.sleep(0.01)

    with pytest.raises(ExceptionGroup) as err:
        await asyncio.wait_for(dispatch(range(9), work, KEYS.__getitem__, 2, per_key=1), 10)
    assert err.group_contains(RuntimeError, match="boom")
    assert seen[0] == 0


async def test_an_empty_order_returns_at_once():
    await asyncio.wait_for(dispatch([], lambda i: asyncio.sleep(0), KEYS.__getitem__, 4, per_key=1), 1)


def test_pool_size_takes_turns_only_where_a_question_has_more_than_its_share_of_slots():
    from symoe_agents.dispatch import pool_size

    skills = {f"q{i}": 5 for i in range(6)}  # 6 questions x 5 samples
    assert pool_size(skills, in_flight=8, slots=8) == (8, 2)  # 8 slots over 6 questions: 2 each
    assert pool_size(skills, in_flight=64, slots=8) == (8, 2)  # a run-wide limit above the slots: still the slots
    assert pool_size({f"q{i}": 5 for i in range(20)}, 8, 8) == (8, 1)
    assert pool_size({"q": 5}, 8, 8) == (5, None)  # one question: its 5 samples all fit
    experts = {f"q{i}": 1 for i in range(18)}  # one request per question: no turns, spare workers for retries
    assert pool_size(experts, 8, 8) == (16, None)
    assert pool_size(skills, 1024, None) == (30, None)  # SGLang, vLLM: the whole group at once
    assert pool_size({}, 8, 8) == (0, None)


def test_sample_batches_put_a_prompts_samples_together_in_sample_order_up_to_the_limit():
    from symoe_agents.dispatch import sample_batches

    # indices 0..6: question a's prompt has samples 2, 0, 1, 3, 4 (out of order); b has 0 and 1
    shared = {0: ("a", 2), 1: ("a", 0), 2: ("b", 0), 3: ("a", 1), 4: ("a", 3), 5: ("b", 1), 6: ("a", 4)}
    got = sample_batches(shared, 3)
    assert got[1] == got[3] == got[0] == (1, 3, 0)  # samples 0, 1, 2
    assert got[4] == got[6] == (4, 6)  # samples 3, 4
    assert got[2] == got[5] == (2, 5)
    assert sample_batches(shared, 1) == {i: (i,) for i in shared}  # off: each alone
    assert sample_batches({}, 5) == {}
