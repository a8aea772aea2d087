import pytest

from symoe_agents.routing import Route
from symoe_agents.schedule import Group, Request, count_loads, expert_groups, plan_schedule


def routes(*experts_per_q):
    return {f"q{i}": Route(tuple(e), "skills") for i, e in enumerate(experts_per_q)}


SERVERS = {"S": "srv-S", "X": "srv-X", "Y": "srv-Y", "A": "srv-A", "S2": "srv-S", "H": None}


@pytest.mark.parametrize(
    "experts, skill, agg, expected_order, expected_loads",
    [
        # the skill model is also an expert: its group comes first, no reload
        ([("X", "S", "Y")], "S", "A", ["S", "X", "Y"], 4),
        # the aggregator is also an expert: its group comes last, no reload
        ([("A", "X", "X")], "S", "A", ["X", "A"], 3),
        # both: skill server first, aggregator's last
        ([("A", "S", "X")], "S", "A", ["S", "X", "A"], 3),
        # the same weights behind two names: adjacent, one load
        ([("S2", "X", "S")], "S", "A", ["S", "S2", "X"], 3),
        # one model does everything: one load
        ([("S", "S", "S")], "S", "S", ["S"], 1),
        # skill == aggregator with another expert in between: reload is unavoidable
        ([("S", "X", "X")], "S", "S", ["S", "X"], 3),
        # hosted experts cost no load and keep the local server up
        ([("H", "S", "S")], "S", "S", ["S", "H"], 1),
    ],
)
def test_plan_orders_groups_to_minimise_loads(experts, skill, agg, expected_order, expected_loads):
    sched = plan_schedule([f"q{i}" for i in range(len(experts))], routes(*experts), SERVERS, skill, agg, 5)
    kinds = [g.kind for g in sched.groups]
    assert kinds[0] == "skills" and kinds[-1] == "aggregate"
    assert [g.model for g in sched.groups[1:-1]] == expected_order
    assert sched.loads == expected_loads


def test_larger_groups_first_among_middle_servers():
    r = routes(("X", "Y", "Y"), ("Y", "Y", "X"))
    order = [g.model for g in expert_groups(r, SERVERS, "srv-S", "srv-A")]
    assert order == ["Y", "X"]


def test_every_expert_slot_becomes_one_request():
    r = routes(("X", "X", "Y"), ("Y", "X", "Y"))
    groups = {g.model: g for g in expert_groups(r, SERVERS)}
    assert groups["X"].requests == (Request("q0", 0), Request("q0", 1), Request("q1", 1))
    assert groups["Y"].requests == (Request("q0", 2), Request("q1", 0), Request("q1", 2))


def test_skill_group_has_samples_per_question():
    sched = plan_schedule(["q0", "q1"], routes(("X",), ("X",)), SERVERS, "S", "A", 5)
    assert len(sched.groups[0].requests) == 10
    assert len(sched.groups[-1].requests) == 2


def test_count_loads_ignores_hosted_groups():
    g = lambda s: Group("expert", "m", s, ())  # noqa: E731
    assert count_loads([g("a"), g(None), g("a"), g("b"), g(None), g("b")]) == 2


def test_describe_lists_every_group_and_the_load_count():
    sched = plan_schedule(["q0"], routes(("X", "S", "Y")), SERVERS, "S", "A", 5)
    text = sched.describe()
    for name in ("skills:S", "expert:S", "expert:X", "expert:Y", "aggregate:A"):
        assert name in text
    assert "model loads: 4" in text

