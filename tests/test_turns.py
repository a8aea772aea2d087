"""The device arbiter of symoe serve: its decisions without a clock, then its async turns."""

import asyncio

import pytest

from symoe_agents.turns import Turns, _Device, _Waiter


def waiter(server: str, since: float) -> _Waiter:
    return _Waiter(server, since, None)  # type: ignore[arg-type]  # the decisions never touch the future


def test_a_free_device_takes_anyone_and_the_loaded_model_takes_its_own():
    d = _Device(max_wait_s=5)
    assert d.may_enter("A", 0.0)
    d.current, d.holders = "A", 1
    assert d.may_enter("A", 1.0)  # joins the model that is up
    assert not d.may_enter("B", 1.0)  # another model waits


def test_a_group_waiting_past_max_wait_stops_others_joining():
    d = _Device(max_wait_s=5)
    d.current, d.holders = "A", 2
    d.waiting.append(waiter("B", 0.0))
    assert d.may_enter("A", 4.9)
    assert not d.may_enter("A", 5.0)  # B is overdue: A drains
    assert d.grant(6.0) == []  # nothing is admitted while A still holds it
    d.holders = 0
    granted = d.grant(6.0)
    assert [w.server for w in granted] == ["B"] and d.current == "B" and d.holders == 1 and d.stats.switches == 1
    assert d.stats.longest_wait_s == 6.0


def test_a_freed_device_goes_to_the_loaded_model_then_to_the_oldest():
    d = _Device(max_wait_s=100)
    d.current = "A"
    d.waiting.extend([waiter("B", 0.0), waiter("A", 1.0), waiter("C", 2.0), waiter("A", 3.0)])
    first = d.grant(4.0)
    assert [w.server for w in first] == ["A", "A"] and d.current == "A"  # no load: A is up
    d.holders = 0
    second = d.grant(5.0)
    assert [w.server for w in second] == ["B"]  # then the longest waiting
    d.holders = 0
    assert [w.server for w in d.grant(6.0)] == ["C"]
    assert d.stats.switches == 2


def test_overdue_beats_the_loaded_model():
    d = _Device(max_wait_s=5)
    d.current = "A"
    d.waiting.extend([waiter("B", 0.0), waiter("A", 4.0)])
    assert [w.server for w in d.grant(6.0)] == ["B"]


async def test_turns_share_a_model_and_swap_only_when_it_drains():
    turns = Turns(max_wait_s=60)
    log: list[str] = []
    a_running = asyncio.Event()
    release_a = asyncio.Event()

    async def group(server: str, name: str, hold: asyncio.Event | None = None) -> None:
        async with turns.turn("cpu", server):
            log.append(f"start {name}")
            if name == "a1":
                a_running.set()
            if hold is not None:
                await hold.wait()
            log.append(f"end {name}")

    a1 = asyncio.ensure_future(group("A", "a1", release_a))
    await a_running.wait()
    b1 = asyncio.ensure_future(group("B", "b1"))
    a2 = asyncio.ensure_future(group("A", "a2", release_a))  # joins A while it is up
    await asyncio.sleep(0.01)
    assert log == ["start a1", "start a2"] and turns.busy("A") and turns.busy("B")
    release_a.set()
    await asyncio.gather(a1, a2, b1)
    assert log[-2:] == ["start b1", "end b1"]
    assert turns.stats().switches == 1 and not turns.busy("A") and not turns.busy("B")


async def test_an_overdue_group_goes_before_later_arrivals_for_the_loaded_model():
    turns = Turns(max_wait_s=0.05)
    order: list[str] = []
    release = asyncio.Event()

    async def group(server: str, name: str, hold: asyncio.Event | None = None) -> None:
        async with turns.turn("cpu", server):
            order.append(name)
            if hold is not None:
                await hold.wait()

    a1 = asyncio.ensure_future(group("A", "a1", release))
    await asyncio.sleep(0)
    b = asyncio.ensure_future(group("B", "b"))
    await asyncio.sleep(0.1)  # b is overdue now
    a2 = asyncio.ensure_future(group("A", "a2"))  # may not join A any more
    await asyncio.sleep(0.01)
    assert order == ["a1"]
    release.set()
    await asyncio.gather(a1, b, a2)
    assert order == ["a1", "b", "a2"]


async def test_a_cancelled_waiter_leaves_no_turn_behind():
    turns = Turns(max_wait_s=60)
    release = asyncio.Event()

    async def hold_a() -> None:
        async with turns.turn("cpu", "A"):
            await release.wait()

    async def use_b() -> None:
        async with turns.turn("cpu", "B"):
            pass

    a = asyncio.ensure_future(hold_a())
    await asyncio.sleep(0)
    b = asyncio.ensure_future(use_b())
    await asyncio.sleep(0.01)
    b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b
    release.set()
    await a
    d = turns.device("cpu")
    assert d.holders == 0 and not d.waiting
    async with asyncio.timeout(1):
        await use_b()  # the device is free for anyone


async def test_hosted_models_need_no_turn():
    turns = Turns(max_wait_s=60)
    release = asyncio.Event()

    async def hold_a() -> None:
        async with turns.turn("cpu", "A"):
            await release.wait()

    a = asyncio.ensure_future(hold_a())
    await asyncio.sleep(0)
    async with asyncio.timeout(1):
        async with turns.turn("cpu", None):
            pass
    release.set()
    await a
