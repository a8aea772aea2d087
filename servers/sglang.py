"""SGLang, the GPU backend, launched from its own Python environment.

SGLang pins its own torch and openai, so it is never imported here: symoe runs
``PYTHON -m sglang.launch_server``, the ``sglang serve`` script beside that python, or a
command of the user's. Readiness as SGLang defines it: ``GET /health`` is refused or
answers 503 while the model loads, then 200; and ``/v1/models`` lists the served name.
With ``enable_memory_saver`` a server can sleep (``/release_memory_occupation``) and
wake (``/resume_memory_occupation``) instead of being killed and reloaded. Those routes
always exist, but without ``--enable-memory-saver`` they answer 200 and free nothing
(python/sglang/srt/utils/torch_memory_saver_adapter.py, a no-op adapter), so symoe only
sleeps a server started with it. /health needs no key; every other route does
(python/sglang/srt/utils/auth.py).
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from symoe_agents.config import SGLangModel
from symoe_agents.redaction import child_env

from .gpu import MemoryShare
from .base import Launch, ModelPathBackend, missing_executable
from .probe import http_get, lists_model, post_ok
from .process import LOOPBACK


class SGLangBackend(ModelPathBackend):
    backend_name = "sglang"
    cfg: SGLangModel

    def command_prefix(self) -> list[str]:
        if self.cfg.command:
            return list(self.cfg.command)
        if self.cfg.launcher == "serve":
            if self.cfg.python == "python":
                return ["sglang", "serve"]
            return [str(Path(self.cfg.python).parent / "sglang"), "serve"]
        return [self.cfg.python, "-m", "sglang.launch_server"]

    def preflight(self) -> list[str]:
        exe = self.command_prefix()[0]
        if missing_executable(exe):
            return [f"'{exe}' not found; set 'python' to the python of SGLang's environment (or 'command')"]
        if not self.cfg.command and self.cfg.launcher == "module":
            if not _can_import(exe, "sglang"):
                return [f"'{exe}' cannot import sglang; install SGLang in that environment or fix 'python'"]
        local = Path(self.cfg.model_path)
        if (self.cfg.model_path.startswith(("/", ".", "~"))) and not local.exists():
            return [f"model directory {local} not found; fix 'model_path'"]
        return []

    def launch(self, host: str, port: int, api_key: str, share: MemoryShare | None = None) -> Launch:
        c = self.cfg
        argv = self.command_prefix() + [
            "--model-path", c.model_path,
            "--served-model-name", self.served_name,
            "--host", host,
            "--port", str(port),
            # on argv because SGLang reads its key from nowhere else: in SGLang 0.5.23 the key
            # is only the field ``api_key`` of python/sglang/srt/arg_groups/fields/serving.py
            # (flag --api-key, no environment fallback; entrypoints/http_server.py reads it
            # from the parsed args). A process listing shows it, unlike vLLM's and llama.cpp's.
            "--api-key", api_key,
            "--tp-size", str(c.tp_size),
            "--dp-size", str(c.dp_size),
        ]  # fmt: skip
        fraction = share.of_free() if share is not None else c.mem_fraction_static
        optional = {
            "--context-length": c.context_length,
            "--mem-fraction-static": None if fraction is None else round(fraction, 4),
            "--max-total-tokens": c.max_total_tokens,
            "--base-gpu-id": c.base_gpu_id,
            "--random-seed": c.random_seed,
            "--log-level": c.log_level,
        }
        for flag, value in optional.items():
            if value is not None:
                argv += [flag, str(value)]
        for flag, on in (
            ("--enable-memory-saver", c.enable_memory_saver),
            ("--enable-weights-cpu-backup", c.enable_weights_cpu_backup),
            ("--enable-metrics", c.enable_metrics),
        ):
            if on:
                argv.append(flag)
        argv += c.extra_args
        headers = {"Authorization": f"Bearer {api_key}"}
        served = self.served_name

        async def ready(p: int) -> bool:
            status, _ = await http_get(LOOPBACK, p, "/health", headers, timeout=25)
            return status == 200 and await lists_model(LOOPBACK, p, served, headers)  # 503 while loading

        return Launch(argv=argv, served_model=served, probe=ready, start_timeout_s=c.start_timeout_s)

    def supports_sleep(self) -> bool:
        return self.cfg.enable_memory_saver

    async def sleep(self, port: int, api_key: str) -> None:
        await post_ok(port, "/release_memory_occupation", api_key)

    async def wake(self, port: int, api_key: str) -> None:
        await post_ok(port, "/resume_memory_occupation", api_key)


@functools.lru_cache(maxsize=16)
def _can_import(python: str, module: str) -> bool:
    """Whether ``python`` can import ``module`` (asked once per executable: imports are slow)."""
    try:
        return subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=300, env=child_env()).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
