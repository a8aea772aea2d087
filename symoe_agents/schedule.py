"""The batch schedule as a pure value (method.md section 7).

A run is a sequence of *groups*: the skill-inference group, one group per recruited expert
model, the aggregation group. Every group names the model that answers it and the *server*
that model runs on. Consecutive groups on the same server share one load, so the order
matters: the planner puts the expert that runs on the skill inferencer's server first and
the expert that runs on the aggregator's server last, and keeps experts that share a server
(the same weights with other sampling) next to each other. Hosted endpoints have no server
to load and never count as a load.

The controller turns this value into server lifecycle events; nothing here does IO.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from .routing import Route

GroupKind = Literal["skills", "expert", "aggregate"]


class Request(NamedTuple):
    """One call to make: question ``question_id``, ``sample``-th sample (or expert slot).
    A named tuple: a 100,000-question batch makes 900,000 of them."""

    question_id: str
    sample: int = 0


class Requests(Sequence[Request]):
    """A group's requests as columns (question ids, samples), made into ``Request`` values
    on access. A 100,000-question batch plans 900,000 requests; as objects they took a
    second and 100 MB, as columns they take a list of ids the batch already has."""

    __slots__ = ("_ids", "_samples", "_repeat")

    def __init__(self, question_ids: Sequence[str], samples: Sequence[int] | None = None, repeat: int = 1):
        """``samples[i]`` for request i; or, without ``samples``, each id ``repeat`` times
        with samples 0..repeat-1."""
        self._ids, self._samples, self._repeat = question_ids, samples, repeat

    def __len__(self) -> int:
        return len(self._ids) * (self._repeat if self._samples is None else 1)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return tuple(self[j] for j in range(*i.indices(len(self))))
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self._samples is not None:
            return Request(self._ids[i], self._samples[i])
        return Request(self._ids[i // self._repeat], i % self._repeat)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"Requests({len(self)})"


@dataclass(frozen=True)
class Group:
    kind: GroupKind
    model: str
    server: str | None  # None for hosted endpoints: no lifecycle
    requests: Sequence[Request]

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.model}"


@dataclass(frozen=True)
class Schedule:
    groups: tuple[Group, ...]

    @property
    def loads(self) -> int:
        return count_loads(self.groups)

    @property
    def requests(self) -> int:
        return sum(len(g.requests) for g in self.groups)

    def describe(self) -> str:
        """A human-readable table of the plan (``--dry-run``)."""
        lines = [f"{'#':>3}  {'group':<32} {'server':<28} {'requests':>8}  load"]
        current: str | None = None
        for i, g in enumerate(self.groups, 1):
            load = ""
            if g.server is not None and g.server != current:
                load, current = "start", g.server
            elif g.server is None:
                load = "hosted"
            else:
                load = "reuse"
            lines.append(f"{i:>3}  {g.name:<32} {(g.server or '-'):<28} {len(g.requests):>8}  {load}")
        lines.append(f"model loads: {self.loads}; requests: {self.requests}")
        return "\n".join(lines)


def count_loads(groups: Sequence[Group]) -> int:
    """How many server starts running ``groups`` in order takes, one server at a time."""
    loads, current = 0, None
    for g in groups:
        if g.server is not None and g.server != current:
            loads += 1
            current = g.server
    return loads


def skill_group(question_ids: Sequence[str], model: str, server: str | None, samples: int) -> Group:
    return Group("skills", model, server, Requests(list(question_ids), repeat=samples))


def aggregate_group(question_ids: Sequence[str], model: str, server: str | None) -> Group:
    return Group("aggregate", model, server, Requests(list(question_ids)))


def expert_groups(
    routes: Mapping[str, Route],
    server_of: Mapping[str, str | None],
    first_server: str | None = None,
    last_server: str | None = None,
) -> list[Group]:
    """One group per recruited expert, ordered to load each server as few times as possible.

    ``first_server`` is the server already running before these groups (the skill
    inferencer's), ``last_server`` the one needed right after (the aggregator's).
    """
    by_model: dict[str, tuple[list[str], list[int]]] = {}
    for qid, route in routes.items():
        for slot, model in enumerate(route.experts):
            ids, slots = by_model.get(model) or by_model.setdefault(model, ([], []))
            ids.append(qid)
            slots.append(slot)
    groups = [Group("expert", m, server_of[m], Requests(ids, slots)) for m, (ids, slots) in sorted(by_model.items())]

    clusters: dict[str | None, list[Group]] = {}
    for g in groups:
        clusters.setdefault(g.server, []).append(g)

    def rank(server: str | None) -> tuple[int, int, str]:
        size = sum(len(g.requests) for g in clusters[server])
        if server is None:
            return (1, 0, "")  # hosted: no load, run between local servers
        if server == first_server:
            return (0, 0, server)
        if server == last_server:
            return (2, 0, server)
        return (1, -size, server)  # largest first, then by name: deterministic

    ordered: list[Group] = []
    for server in sorted(clusters, key=rank):
        ordered.extend(clusters[server])
    return ordered


def plan_schedule(
    question_ids: Sequence[str],
    routes: Mapping[str, Route],
    server_of: Mapping[str, str | None],
    skill_model: str,
    aggregator_model: str,
    skill_samples: int,
) -> Schedule:
    """The whole run: skills, experts, aggregation, in load-minimising order."""
    skills = skill_group(question_ids, skill_model, server_of[skill_model], skill_samples)
    experts = expert_groups(routes, server_of, server_of[skill_model], server_of[aggregator_model])
    agg = aggregate_group(question_ids, aggregator_model, server_of[aggregator_model])
    return Schedule((skills, *experts, agg))
