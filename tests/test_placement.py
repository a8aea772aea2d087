import pytest

from symoe_agents.placement import Device, place
from symoe_agents.routing import Route
from symoe_agents.schedule import plan_schedule

SERVERS = {m: f"srv-{m}" for m in "SABCDX"} | {"H": None}
CPU = Device(None, 8.0)


def schedule(experts_per_q, skill="S", agg="S"):
    routes = {f"q{i}": Route(tuple(e), "skills") for i, e in enumerate(experts_per_q)}
    return plan_schedule(list(routes), routes, SERVERS, skill, agg, 5)


def lanes(p):
    return [[(ln.device.name, [g.name for g in ln.groups]) for ln in st.lanes] for st in p.stages]


def test_default_is_the_sequential_schedule_in_one_lane():
    s = schedule([("S", "A", "B")], agg="B")
    p = place(s, [CPU])
    assert lanes(p) == [
        [("cpu", ["skills:S"])],
        [("cpu", ["expert:S", "expert:A", "expert:B"])],
        [("cpu", ["aggregate:B"])],
    ]
    assert p.loads == s.loads == 3


@pytest.mark.parametrize(
    "mem, capacity, expected_stages, loads",
    [
        # everything fits: all experts side by side in one stage
        # (S is released after the skills and reloaded for aggregation: 5 loads in all)
        ({"srv-A": 2, "srv-B": 2, "srv-C": 2}, 8, [["A", "B", "C"]], 5),
        # two fit at a time: largest first, first fit
        ({"srv-A": 5, "srv-B": 3, "srv-C": 4}, 8, [["A", "B"], ["C"]], 5),
        # unknown memory never shares
        ({"srv-A": 2, "srv-B": None, "srv-C": 2}, 8, [["A", "C"], ["B"]], 5),
        # nothing fits together: one at a time
        ({"srv-A": 5, "srv-B": 5, "srv-C": 5}, 8, [["A"], ["B"], ["C"]], 5),
    ],
)
def test_co_residency_packs_by_memory(mem, capacity, expected_stages, loads):
    s = schedule([("A", "B", "C")], agg="S")
    p = place(s, [Device((0,), capacity)], mem, co_residency=True)
    middle = [[g.model for ln in st.lanes for g in ln.groups] for st in p.stages[1:-1]]
    assert [sorted(x) for x in middle] == [sorted(x) for x in expected_stages]
    assert all(len(ln.groups) == 1 or len({g.server for g in ln.groups}) == 1 for st in p.stages for ln in st.lanes)
    assert p.loads == loads


def test_co_residency_keeps_the_skill_server_in_the_first_bin():
    s = schedule([("S", "A", "B")], agg="B")
    p = place(s, [Device((0,), 4)], {"srv-S": 2, "srv-A": 2, "srv-B": 3}, co_residency=True)
    first = [g.model for ln in p.stages[1].lanes for g in ln.groups]
    assert "S" in first
    assert p.loads == 3  # S reused from skills, B reused by the aggregator


def test_several_gpus_take_the_largest_groups_first():
    s = schedule([("A", "A", "A"), ("A", "B", "B"), ("C", "A", "D")])  # A:5, B:2, C:1, D:1
    gpus = [Device((0,), 80), Device((1,), 80)]
    p = place(s, gpus)
    (expert_stage,) = [st for st in p.stages[1:-1]]  # one stage: no barrier between devices
    by_gpu = {ln.device.name: [g.model for g in ln.groups] for ln in expert_stage.lanes}
    assert by_gpu["gpu0"] == ["A"]  # the largest alone on one GPU
    assert sorted(by_gpu["gpu1"]) == ["B", "C", "D"]
    assert len(expert_stage.lanes) == 2  # one lane per GPU


def test_tp_slices_are_devices():
    s = schedule([("A", "B", "B")])
    p = place(s, [Device((0, 1), 160), Device((2, 3), 160)])
    layout = [[(ln.device.name, [g.name for g in ln.groups]) for ln in st.lanes] for st in p.stages]
    assert layout == [
        [("gpu0+1", ["skills:S"])],
        [("gpu0+1", ["expert:B"]), ("gpu2+3", ["expert:A"])],  # the larger group first, on the first slice
        [("gpu0+1", ["aggregate:S"])],
    ]


@pytest.mark.parametrize(
    "mem, capacity, prestart",
    [
        ({"srv-S": 2, "srv-A": 2, "srv-B": 2}, 8, True),
        ({"srv-S": 5, "srv-A": 5, "srv-B": 5}, 8, False),
        ({"srv-S": 2, "srv-A": None, "srv-B": 2}, 8, False),
    ],
)
def test_overlap_only_when_both_fit(mem, capacity, prestart):
    s = schedule([("A", "A", "A")], agg="B")
    p = place(s, [Device((0,), capacity)], mem, co_residency=True, overlap=True)
    # experts (A) -> aggregation (B): may B start while A's last requests decode?
    assert p.stages[1].prestart_next is prestart
    # never after the skills: the next stage depends on routing
    assert p.stages[0].prestart_next is False


def test_sleep_marks_servers_needed_again_later():
    s = schedule([("A", "B", "B")], skill="S", agg="S")
    p = place(s, [Device((0,), 8)], sleep=True)
    assert p.sleep_servers == {"srv-S"}
    assert p.loads == 3  # S, A, B; the aggregator wakes S instead of reloading it
    assert place(s, [Device((0,), 8)]).loads == 4


def test_hosted_groups_cost_no_load():
    s = schedule([("H", "S", "S")])
    assert place(s, [CPU]).loads == 1


def test_no_devices_is_an_error():
    with pytest.raises(ValueError):
        place(schedule([("A",)]), [])


def test_the_skill_servers_expert_job_stays_on_the_first_device():
    """Skills run on the first device before routing is known; the skill server's experts
    then stay there, where it is loaded, even when a larger job would take that device."""
    s = schedule([("S", "A", "B"), ("A", "B", "C"), ("A", "C", "D"), ("A", "B", "D")], agg="S")
    nodes = [Device(None, 8.0, "node-one"), Device(None, 8.0, "node-two"), Device(None, 8.0, "node-three")]
    p = place(s, nodes)
    first = next(ln for ln in p.stages[1].lanes if ln.device == nodes[0])
    assert first.groups[0].model == "S"
    assert [ln.device for ln in p.stages[0].lanes] == [nodes[0]] == [ln.device for ln in p.stages[-1].lanes]
    assert p.loads == 6  # A-D once; S for skills and its experts, and again for the aggregation after the lane moved on
    assert nodes[0].name == "node-one/cpu"
