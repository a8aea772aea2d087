"""Where a lost device's groups go (``Cluster.where``): decisions only, no Ray."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from symoe_agents.cluster import Cluster
from symoe_agents.config import load_config
from symoe_agents.events import EventLog
from symoe_agents.placement import Device

A0, A1 = Device((0,), None, "node-a"), Device((1,), None, "node-a")
B0, C0 = Device((0,), None, "node-b"), Device((0,), None, "node-c")


def cluster(*lost: Device) -> Cluster:
    c = Cluster(load_config(None), EventLog(), None, [], False)
    c._devices = [A0, A1, B0, C0]
    c._hosts = {d: SimpleNamespace(lost="gone" if d in lost else None) for d in c._devices}  # type: ignore[misc]
    return c


def test_a_live_device_stays_where_it_is():
    assert asyncio.run(cluster().where(B0)) == B0


def test_the_fewest_moves_first_among_sound_nodes():
    c = cluster(A0, A1)

    async def moves():
        return await c.where(A0), await c.where(A1)

    assert asyncio.run(moves()) == (B0, C0)


def test_a_lost_device_moves_to_another_node_first():
    # A1 is live and first in order, but on the lost device's node: B0 comes first
    assert asyncio.run(cluster(A0).where(A0)) == B0


def test_moves_spread_over_live_devices_and_are_remembered():
    c = cluster(A0, B0)

    async def moves():
        first = await c.where(A0)
        second = await c.where(B0)
        return first, second, await c.where(A0)

    first, second, again = asyncio.run(moves())
    assert first == C0  # node-c is the only node that has lost nothing
    assert second == C0  # still: A1 is live, but its node lost A0
    assert again == first  # every group of A0 goes to the same place


def test_a_move_whose_target_is_lost_too_moves_on():
    c = cluster(A0)

    async def moves():
        first = await c.where(A0)
        c._hosts[first].lost = "gone too"
        return first, await c.where(A0)

    first, then = asyncio.run(moves())
    assert first == B0 and then == C0


def test_nothing_left():
    assert asyncio.run(cluster(A0, A1, B0, C0).where(B0)) is None
