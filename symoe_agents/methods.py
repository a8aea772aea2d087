"""The methods ``symoe eval`` compares, all run by the same engine (controller, schedule,
server manager), so that accuracy, calls, tokens, loads and wall time are comparable.

A method is a small value: how experts are chosen per question, how many, whether an
aggregator synthesises their answers (otherwise: majority vote of the extracted answers),
and how many Mixture-of-Agents layers the proposers run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

METHOD_NAMES = ("symoe", "single", "majority", "top-k", "moa", "self-moa", "random")


@dataclass(frozen=True)
class Method:
    name: str
    routing: Literal["skills", "uniform", "fixed"]
    k: int
    aggregate: bool = True
    fixed: tuple[str, ...] = ()
    layers: int = 1  # MoA: proposers answer, then re-answer seeing the previous layer (layers-1 times)

    @property
    def needs_skills(self) -> bool:
        return self.routing == "skills"


def ranked_by_accuracy(pool: list[str], accuracy: Mapping[str, float | None]) -> list[str]:
    """Pool models, best validation accuracy first (pool order breaks ties)."""
    return sorted(pool, key=lambda m: (-(accuracy.get(m) or 0.0), pool.index(m)))


def build_methods(names: list[str], pool: list[str], k: int, accuracy: Mapping[str, float | None], moa_layers: int = 2) -> list[Method]:
    """The paper's baselines (method.md sections 4 and 8) over this pool."""
    unknown = [n for n in names if n not in METHOD_NAMES]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHOD_NAMES)}")
    ranked = ranked_by_accuracy(pool, accuracy)
    best, top = ranked[0], tuple(ranked[: min(k, len(ranked))])
    table = {
        "symoe": Method("symoe", "skills", k),
        "single": Method("single", "fixed", 1, aggregate=False, fixed=(best,)),
        "majority": Method("majority", "skills", k, aggregate=False),
        "top-k": Method("top-k", "fixed", len(top), fixed=top),
        "moa": Method("moa", "fixed", len(top), fixed=top, layers=moa_layers),
        "self-moa": Method("self-moa", "fixed", k, fixed=(best,) * k),
        "random": Method("random", "uniform", k),
    }
    return [table[n] for n in names]
