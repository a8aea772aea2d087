"""Any OpenAI-compatible server, from a command template (``backend = "command"``).

The template's placeholders are filled per start: {host} (always 127.0.0.1), {port} (a
free port), {model} (the served model name) and {api_key} (the run's random key). Two
documented uses:

    # llama.cpp's own server binary
    command = ["llama-server", "-m", "/models/q.gguf", "--host", "{host}", "--port", "{port}",
               "--alias", "{model}", "--api-key", "{api_key}", "-ngl", "99"]
    health_path = "/health"

    # Hugging Face transformers (no API key support: send_api_key = false)
    command = ["transformers", "serve", "--host", "{host}", "--port", "{port}"]
    health_path = "/health"
"""

from __future__ import annotations

from symoe_agents.config import CommandModel

from .gpu import MemoryShare
from .base import Launch, NoSleep, missing_executable, options_key
from .probe import http_get, lists_model
from .process import LOOPBACK


class CommandBackend(NoSleep):
    def __init__(self, cfg: CommandModel):
        self.cfg = cfg

    def gpus_needed(self) -> int:
        return self.cfg.gpus

    def server_key(self) -> str:
        opts = self.cfg.model_dump(include={"command", "served_model_name", "env", "gpus"})
        exe = self.cfg.command[0].rsplit("/", 1)[-1]
        return options_key(f"{exe}:{self.cfg.served_model_name}", "command", opts)

    def preflight(self) -> list[str]:
        exe = self.cfg.command[0]
        if "{" in exe:
            return [f"the executable '{exe}' must not be a placeholder"]
        if missing_executable(exe):
            return [f"'{exe}' not found on PATH; install it or give its full path in 'command'"]
        return []

    def launch(self, host: str, port: int, api_key: str, share: "MemoryShare | None" = None) -> Launch:
        c = self.cfg
        values = {"host": host, "port": str(port), "model": c.served_model_name, "api_key": api_key}
        argv = [arg.format(**values) for arg in c.command]
        headers = {"Authorization": f"Bearer {api_key}"} if c.send_api_key else {}

        async def ready(p: int) -> bool:
            status, _ = await http_get(LOOPBACK, p, c.health_path, headers, timeout=25)
            if status not in c.ready_status:
                return False
            return not c.require_model_listed or await lists_model(LOOPBACK, p, c.served_model_name, headers)

        return Launch(argv=argv, served_model=c.served_model_name, probe=ready, start_timeout_s=c.start_timeout_s, env=dict(c.env))
