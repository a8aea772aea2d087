"""The wheel installs everything under ``symoe_agents``: no generic top-level modules."""

import subprocess
import sys
import zipfile

import symoe_agents
from conftest import ROOT


def test_wheel_layout(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("symoe_agents-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"symoe_agents", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    for expected in [
        "symoe_agents/servers/manager.py",
        "symoe_agents/servers/llamacpp.py",
        "symoe_agents/servers/launcher.py",  # run by path: they must ship as files
        "symoe_agents/servers/watchdog.py",
        "symoe_agents/extract.py",
        "symoe_agents/eval/harness.py",
        "symoe_agents/prompts/skills.md",
        "symoe_agents/prompts/aggregator.md",
        "symoe_agents/data/embedded.toml",
        "symoe_agents/cli.py",
    ]:
        assert expected in names, expected
    assert not any(n.startswith(("servers/", "eval/", "prompts/", "tests/")) for n in names)
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "symoe = symoe_agents.cli:main" in entry


def test_public_names_are_pinned():
    assert sorted(symoe_agents.__all__) == [
        "AggregatorAnswer", "AnswerCache", "AnswerFormat", "BudgetSpent", "CacheError", "Config", "ConfigError", "EndpointError",
        "Event", "EventLog", "ExpertAnswer", "InputError", "OutputError", "ProfileError", "PromptError", "Question",
        "QuestionResult", "RunSummary",
        "Schedule", "ServerStartError", "SymbolicMoE", "SymoeError", "__version__", "load_config",
    ]  # fmt: skip


def test_importing_the_package_starts_nothing_heavy():
    code = "import sys, symoe_agents; bad = [m for m in ('llama_cpp', 'torch', 'sglang') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
