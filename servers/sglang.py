"""SGLang, the GPU backend, launched from its own Python environment.

SGLang pins its own torch and openai, so it is never imported here: symoe runs
``PYTHON -m sglang.launch_server`` (or the ``sglang serve`` script beside that python).
Readiness as SGLang defines it: ``GET /health`` is refused or answers 503 while the model
loads, then 200; and ``/v1/models`` lists the served name.
"""

from __future__ import annotations

import json
from pathlib import Path

from symoe_agents.config import SGLangModel

from .base import Launch, options_key
from .probe import http_get
from .process import LOOPBACK


class SGLangBackend:
    def __init__(self, cfg: SGLangModel):
        self.cfg = cfg

    @property
    def served_name(self) -> str:
        return self.cfg.served_model_name or self.cfg.model_path

    def server_key(self) -> str:
        opts = self.cfg.model_dump(exclude={"description", "sampling", "start_timeout_s"})
        return options_key(Path(self.cfg.model_path).name or "model", "sglang", opts)

    def command_prefix(self) -> list[str]:
        if self.cfg.launcher == "serve":
            script = Path(self.cfg.python).parent / "sglang"
            return [str(script) if self.cfg.python != "python" else "sglang", "serve"]
        return [self.cfg.python, "-m", "sglang.launch_server"]

    def launch(self, host: str, port: int, api_key: str) -> Launch:
        c = self.cfg
        argv = self.command_prefix() + [
            "--model-path", c.model_path,
            "--served-model-name", self.served_name,
            "--host", host,
            "--port", str(port),
            "--api-key", api_key,
            "--tp-size", str(c.tp_size),
            "--dp-size", str(c.dp_size),
        ]  # fmt: skip
        optional = {
            "--context-length": c.context_length,
            "--mem-fraction-static": c.mem_fraction_static,
            "--max-total-tokens": c.max_total_tokens,
            "--base-gpu-id": c.base_gpu_id,
            "--random-seed": c.random_seed,
            "--log-level": c.log_level,
        }
        for flag, value in optional.items():
            if value is not None:
                argv += [flag, str(value)]
        argv += c.extra_args
        headers = {"Authorization": f"Bearer {api_key}"}
        served = self.served_name

        async def ready(p: int) -> bool:
            status, _ = await http_get(LOOPBACK, p, "/health", headers, timeout=25)
            if status != 200:
                return False  # 503 while loading
            status, body = await http_get(LOOPBACK, p, "/v1/models", headers, timeout=5)
            if status != 200:
                return False
            ids = [m.get("id") for m in json.loads(body or b"{}").get("data", [])]
            return served in ids

        return Launch(argv=argv, served_model=served, probe=ready, start_timeout_s=c.start_timeout_s)
