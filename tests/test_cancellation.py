"""A caller's cancellation, on real llama.cpp servers: it stops the work at once, always
stops the servers, and reaches the caller (never swallowed)."""

import asyncio

import pytest

from conftest import pids_alive
from symoe_agents import EventLog, SymbolicMoE
from symoe_agents.config import load_config, parse_config

pytestmark = pytest.mark.servers

QUESTIONS = [f"What is {i} + {i}? The options are: (A) {2 * i} (B) {2 * i + 1}" for i in range(3)]


def small_pool():
    data = load_config().model_dump(mode="json")
    data["sampling"]["skill_inferencer"].update(max_tokens=16, samples=2)
    data["sampling"]["expert"]["max_tokens"] = 32
    data["sampling"]["aggregator"]["max_tokens"] = 16
    return parse_config(data, "test")


def started(events: EventLog) -> list[int]:
    return [e.pid for e in events.events if e.kind == "server_start"]


async def test_a_timeout_around_solve_batch_stops_the_servers_before_the_block_ends():
    """``asyncio.timeout`` fires while the experts answer: TimeoutError reaches the caller,
    and the servers are down already, inside the ``async with`` block."""
    events = EventLog()
    async with SymbolicMoE(small_pool(), events=events) as moe:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(None) as deadline:

                def on(e):  # the deadline passes the moment the first expert group begins
                    if e.kind == "group_start" and e.group.startswith("expert:"):
                        deadline.reschedule(asyncio.get_running_loop().time())

                events.listen(on)
                await moe.solve_batch(QUESTIONS)
        pids = started(events)
        assert pids and pids_alive(pids) == []
        kinds = [e.kind for e in events.events]
        assert kinds.count("server_stop") == kinds.count("server_start")
        assert not any(e.kind == "group_end" and e.group.startswith("aggregate:") for e in events.events)  # work stopped


async def test_a_solve_cancelled_while_its_server_starts_stops_that_server():
    events = EventLog()
    async with SymbolicMoE(small_pool(), events=events) as moe:
        task = asyncio.create_task(moe.solve_batch(QUESTIONS))
        events.listen(lambda e: task.cancel() if e.kind == "server_start" else None)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()  # the cancellation itself reached the caller
        (pid,) = started(events)
        assert pids_alive([pid]) == []
        (stop,) = [e for e in events.events if e.kind == "server_stop"]
        assert stop.pid == pid and stop.detail["reason"] == "cancelled while starting"
        assert not [e for e in events.events if e.kind == "server_ready"]


async def test_a_stop_cut_short_by_a_cancel_is_finished_on_the_way_out():
    """A release cancelled midway leaves its stop running and the server listed, so the
    manager's close waits for that same stop: one stop, nothing left running."""
    events = EventLog()
    moe = SymbolicMoE(small_pool(), events=events)
    async with moe:
        manager = moe._manager
        await manager.acquire("smollm2")
        (pid,) = started(events)
        key = manager.server_key("smollm2")
        release = asyncio.create_task(manager.release(key))
        while manager._running[key].stopping is None:
            await asyncio.sleep(0)
        release.cancel()
        with pytest.raises(asyncio.CancelledError):
            await release
        assert key in manager.running_keys()  # not forgotten while it stops
    assert pids_alive([pid]) == []
    assert [e.kind for e in events.events].count("server_stop") == 1


async def test_a_release_all_cancelled_midway_still_stops_every_server():
    """The close's stop-everything is cancelled during its first stop (a second Ctrl-C, a
    host app's timeout): it goes on to stop the others, then lets the cancellation through."""
    events = EventLog()
    moe = SymbolicMoE(small_pool(), events=events)
    async with moe:
        manager = moe._manager
        await manager.acquire("smollm2", exclusive=False)
        await manager.acquire("gemma3", exclusive=False)
        first, second = started(events)
        closing = asyncio.create_task(manager.release_all())
        while not any(r.stopping is not None for r in manager._running.values()):
            await asyncio.sleep(0)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert pids_alive([second]) == []  # the second stop ran in full after the cancel arrived
    assert pids_alive([first, second]) == []
    assert [e.kind for e in events.events].count("server_stop") == 2
