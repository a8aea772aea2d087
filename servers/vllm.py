"""vLLM (``vllm serve MODEL``), launched from its own environment.

Readiness: ``GET /health`` answers 200 (the port refuses connections while the model
loads) and ``/v1/models`` lists the served name. With ``enable_sleep_mode`` a server can
sleep (``POST /sleep?level=1``) and wake (``POST /wake_up``) instead of being killed and
reloaded. Facts from vLLM 0.33.0 (commit 4ba787ec9), files under vllm/:

- ``/sleep`` and ``/wake_up`` are dev routes: registered only when VLLM_SERVER_DEV_MODE=1
  (entrypoints/launchers/api_server/routers.py); ``--enable-sleep-mode`` alone leaves them
  404. So symoe sets the variable whenever it means to sleep the server.
- The key: ``args.api_key or [envs.VLLM_API_KEY]`` (entrypoints/serve/middleware/register.py),
  so VLLM_API_KEY in the server's environment turns auth on as ``--api-key`` does, without
  showing the key to every local user in a process listing.
- Auth covers only paths under /v1, /v2, /inference and /cohere
  (entrypoints/serve/middleware/authenticate.py): /health, /sleep and /wake_up take no key.
"""

from __future__ import annotations

from pathlib import Path

from symoe_agents.config import VLLMModel

from .gpu import MemoryShare
from .base import Launch, ModelPathBackend, missing_executable
from .probe import http_get, lists_model, post_ok
from .process import LOOPBACK


class VLLMBackend(ModelPathBackend):
    backend_name = "vllm"
    cfg: VLLMModel

    def preflight(self) -> list[str]:
        exe = self.cfg.command[0]
        if missing_executable(exe):
            return [f"'{exe}' not found; set 'command' to vLLM's launcher, e.g. ['/opt/vllm/bin/vllm', 'serve']"]
        if self.cfg.model_path.startswith(("/", ".", "~")) and not Path(self.cfg.model_path).exists():
            return [f"model directory {self.cfg.model_path} not found; fix 'model_path'"]
        return []

    def launch(self, host: str, port: int, api_key: str, share: MemoryShare | None = None) -> Launch:
        c = self.cfg
        argv = list(c.command) + [
            c.model_path,
            "--host", host,
            "--port", str(port),
            "--served-model-name", self.served_name,
            "--tensor-parallel-size", str(c.tensor_parallel_size),
        ]  # fmt: skip
        utilization = share.of_total() if share is not None else c.gpu_memory_utilization
        for flag, value in (
            ("--gpu-memory-utilization", None if utilization is None else round(utilization, 4)),
            ("--max-model-len", c.max_model_len),
            ("--seed", c.seed),
        ):
            if value is not None:
                argv += [flag, str(value)]
        if c.enable_sleep_mode:
            argv.append("--enable-sleep-mode")
        argv += c.extra_args
        headers = {"Authorization": f"Bearer {api_key}"}
        served = self.served_name

        async def ready(p: int) -> bool:
            status, _ = await http_get(LOOPBACK, p, "/health", headers, timeout=25)
            return status == 200 and await lists_model(LOOPBACK, p, served, headers)

        # the key travels in the environment, never on the command line (see the docstring)
        env = {"VLLM_API_KEY": api_key}
        if c.enable_sleep_mode:
            env["VLLM_SERVER_DEV_MODE"] = "1"  # or /sleep and /wake_up are not registered
        return Launch(argv=argv, served_model=served, probe=ready, start_timeout_s=c.start_timeout_s, env=env)

    def supports_sleep(self) -> bool:
        return self.cfg.enable_sleep_mode

    async def sleep(self, port: int, api_key: str) -> None:
        await post_ok(port, "/sleep?level=1", api_key)

    async def wake(self, port: int, api_key: str) -> None:
        await post_ok(port, "/wake_up", api_key)
