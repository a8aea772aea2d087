"""Preflight: everything that would stop a run, found before any server starts.

Each problem names the model and what to change. ``symoe check`` runs only this; ``solve``
and the Python API run it first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from .alignment import alignment_problems
from .config import Config, OpenAIModel
from .errors import SymoeError


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
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [i for i, line in enumerate(l for l in out.stdout.splitlines() if l.startswith("GPU "))]


def used_models(config: Config) -> list[str]:
    names = [config.roles.skill_inferencer, *config.roles.experts, config.roles.aggregator]
    return list(dict.fromkeys(names))


def preflight(config: Config, models: list[str] | None = None) -> list[Problem]:
    from symoe_agents.servers import backend_for

    problems: list[Problem] = []
    gpus_needed = 0
    for name in models or used_models(config):
        cfg = config.model(name)
        if isinstance(cfg, OpenAIModel):
            if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
                problems.append(Problem(name, f"environment variable {cfg.api_key_env} is not set; export it"))
            continue
        backend = backend_for(cfg)
        assert backend is not None
        problems += [Problem(name, msg) for msg in backend.preflight()]
        gpus_needed = max(gpus_needed, backend.gpus_needed())
    if models is None and config.profiles is not None:  # the embedder maps skills onto profiles; nothing else uses it
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
