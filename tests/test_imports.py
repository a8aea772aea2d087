"""No import cycles among symoe's modules, counting imports made inside functions too: a
cycle hidden in a function body is still two modules that cannot be understood apart."""

import ast

import pytest

from conftest import ROOT

PACKAGES = {"symoe_agents": "symoe_agents", "symoe_agents.servers": "servers", "symoe_agents.eval": "eval", "symoe_agents.prompts": "prompts"}


def module_graph() -> dict[str, set[str]]:
    files = {}
    for package, folder in PACKAGES.items():
        for path in (ROOT / folder).glob("*.py"):
            files[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in files]
                targets = subs if len(subs) == len(node.names) else [base, *subs]  # `from pkg import module`
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_module_imports_itself_through_others():
    assert cycles(module_graph()) == []


@pytest.mark.parametrize(
    "graph, expected",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}}, [["a", "b", "c"]]),
    ],
)
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert cycles(graph) == expected


def test_the_graph_sees_imports_inside_functions():
    graph = module_graph()
    assert "symoe_agents.profiler" in graph["symoe_agents.cli_profiles"]  # only inside profile()
    assert "symoe_agents.cache" in graph["symoe_agents.cli_eval"]  # only inside evaluate()
    assert "symoe_agents.cli_common" in graph["symoe_agents.cli_profiles"]


def test_the_core_never_imports_eval_which_stands_on_the_api():
    """eval/ is a user of the engine (its harness runs methods through the API): the engine
    imports nothing of it, so scoring and extraction live in the core. The command line sits
    above both and may import either."""
    graph = module_graph()
    assert "symoe_agents.api" in graph["symoe_agents.eval.harness"]
    core = [m for m in graph if not m.startswith(("symoe_agents.eval", "symoe_agents.cli"))]
    reaching = {m: sorted(t for t in graph[m] if t.startswith("symoe_agents.eval")) for m in core}
    assert {m: t for m, t in reaching.items() if t} == {}
