"""Preflight: everything that would stop a run, found before any server starts.

Each problem names the model and what to change. ``symoe check`` runs only this; ``solve``
and the Python API run it first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .alignment import alignment_problems
from .config import Config, OpenAIModel
from .errors import PromptError, SymoeError
from .formats import AnswerFormat
from .preparation import Prepared, aggregation_prompt, expert_prompt, skills_prompt
from .prompting import load_template
from .records import Question
from .redaction import child_env, hide_from_children


@dataclass(frozen=True)
class Problem:
    model: str | None
    message: str

    def __str__(self) -> str:
        return f"model '{self.model}': {self.message}" if self.model else self.message


class PreflightError(SymoeError):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("preflight found problems:\n  " + "\n  ".join(map(str, problems)))


def visible_gpus() -> list[int] | None:
    """GPU indices ``nvidia-smi -L`` lists; None when there is no nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20, env=child_env())
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [i for i, line in enumerate(l for l in out.stdout.splitlines() if l.startswith("GPU "))]


def used_models(config: Config) -> list[str]:
    names = [config.roles.skill_inferencer, *config.roles.experts, config.roles.aggregator]
    return list(dict.fromkeys(names))


def prompt_problems(prompts_dir: Path | None) -> list[str]:
    """Every prompt a run renders, rendered here with sample values through the same functions
    the run uses (so with exactly the variables it passes), once per answer format: a missing
    file, a malformed template or an unknown variable is found before the skill and expert
    groups are paid for, not when the first prompt of a group is built."""
    if prompts_dir is not None and not prompts_dir.is_dir():
        return [f"prompts_dir {prompts_dir} is not a folder; fix 'prompts_dir' or remove it to use the built-in prompts"]
    where = f"prompts_dir {prompts_dir}" if prompts_dir is not None else "built-in prompts"
    question = Question(id="preflight", question="A sample question? The options are: (A) one (B) two")
    renders = [lambda: skills_prompt(load_template("skills", prompts_dir), Prepared(question, AnswerFormat.FREE, [], ""))]
    for fmt in AnswerFormat:  # each format has its own answer instruction template
        p = Prepared(question, fmt, ["A", "B"] if fmt is AnswerFormat.MULTIPLE_CHOICE else [], "")
        renders.append(lambda p=p: expert_prompt(load_template("expert", prompts_dir), p, prompts_dir))
        renders.append(lambda p=p: aggregation_prompt(load_template("aggregator", prompts_dir), p, ["A sample response."], prompts_dir))
    problems: list[str] = []
    for render in renders:
        try:
            render()
        except PromptError as exc:
            message = f"{where}: {exc}"
            if message not in problems:  # one broken answer template fails the expert and the aggregator prompt alike
                problems.append(message)
    return problems


def preflight(config: Config, models: list[str] | None = None, part: Literal["all", "driver", "node"] | None = None) -> list[Problem]:
    """``part``: "driver" checks what the process that runs the batch needs (hosted keys,
    prompts, the embedder), "node" what a machine that runs servers needs (executables,
    model files, GPUs); default: both, or "driver" alone for a cluster run, whose nodes
    each run the "node" part (``cluster.py``)."""
    from symoe_agents.servers import backend_for

    part = part or ("driver" if config.cluster is not None else "all")
    hide_from_children(config.secret_env_names())  # the probes below are processes too
    problems: list[Problem] = []
    gpus_needed = 0
    for name in models or used_models(config):
        cfg = config.model(name)
        if isinstance(cfg, OpenAIModel):
            if part != "node" and cfg.api_key_env and not os.environ.get(cfg.api_key_env):
                problems.append(Problem(name, f"environment variable {cfg.api_key_env} is not set; export it"))
            continue
        if part == "driver":
            continue
        backend = backend_for(cfg)
        assert backend is not None
        problems += [Problem(name, msg) for msg in backend.preflight()]
        gpus_needed = max(gpus_needed, backend.gpus_needed())
    if models is None and part != "node":  # a run renders prompts; `servers up MODEL...` does not
        problems += [Problem(None, msg) for msg in prompt_problems(config.prompts_dir)]
    if models is None and part != "node" and config.profiles is not None:  # the embedder maps skills onto profiles; nothing else uses it
        problems += [Problem(None, msg) for msg in alignment_problems(config.alignment)]
    if gpus_needed:
        have = config.schedule.gpus if config.schedule.gpus is not None else visible_gpus()
        if have is None:
            problems.append(Problem(None, f"a model needs {gpus_needed} GPU(s) but nvidia-smi is not found; "
                                          "install the NVIDIA driver or list GPU ids in schedule.gpus"))  # fmt: skip
        elif len(have) < gpus_needed:
            problems.append(Problem(None, f"a model needs {gpus_needed} GPU(s), {len(have)} available; "
                                          "lower tp_size/tensor_parallel_size or add GPUs to schedule.gpus"))  # fmt: skip
    return problems
