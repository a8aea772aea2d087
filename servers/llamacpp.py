"""llama-cpp-python's OpenAI server, the embedded CPU default.

Flags from measurements (shared/serving.md): ``--logits_all false`` (the default keeps
logits for every prompt token: 3 GB RSS on a long prompt) and ``--interrupt_requests
false`` (the default silently cuts concurrent streams to 0 tokens). The server has no
``/health``: it is ready when ``/v1/models`` answers 200.
"""

from __future__ import annotations

import sys

from symoe_agents.config import LlamaCppModel

from .base import Launch, options_key
from .embedded import embedded_model_path
from .probe import http_get
from .process import LOOPBACK


class LlamaCppBackend:
    def __init__(self, cfg: LlamaCppModel):
        self.cfg = cfg

    @property
    def label(self) -> str:
        return self.cfg.embedded or (self.cfg.model_path.stem if self.cfg.model_path else "model")

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

    def launch(self, host: str, port: int, api_key: str) -> Launch:
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
            "--api_key", api_key,
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

        return Launch(argv=argv, served_model=self.label, probe=ready)
