"""The one interface every server backend implements, and what a running model offers.

A backend turns a model's config into a launch: the command line, the name the server
serves the model under, and how to tell that it is ready. It also says what it needs
before anything starts (preflight) and whether it can sleep instead of being killed.
Hosted endpoints have no launch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .gpu import MemoryShare
from .process import ReadinessProbe


@dataclass(frozen=True)
class Endpoint:
    """Where to send OpenAI-protocol requests for one model. ``api_key`` is never logged."""

    base_url: str
    served_model: str
    api_key: str = field(repr=False)
    key_env: str | None = None  # the variable the key came from, for error messages

    def __str__(self) -> str:
        return f"{self.served_model} @ {self.base_url}"


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    served_model: str
    probe: ReadinessProbe
    start_timeout_s: float | None = None  # None: the run's default
    env: dict[str, str] = field(default_factory=dict)


class Backend(Protocol):
    def server_key(self) -> str:
        """Identity of the server process: equal keys mean one process can serve both models."""

    def launch(self, host: str, port: int, api_key: str, share: "MemoryShare | None" = None) -> Launch:
        """The command line and readiness rule for a server on ``host:port``."""

    def preflight(self) -> list[str]:
        """Problems that would stop the server from starting, each saying what to change."""

    def gpus_needed(self) -> int: ...

    def supports_sleep(self) -> bool: ...

    async def sleep(self, port: int, api_key: str) -> None: ...

    async def wake(self, port: int, api_key: str) -> None: ...


class NoSleep:
    """Mixin for backends that can only be stopped."""

    def supports_sleep(self) -> bool:
        return False

    async def sleep(self, port: int, api_key: str) -> None:
        raise NotImplementedError("this backend cannot sleep")

    async def wake(self, port: int, api_key: str) -> None:
        raise NotImplementedError("this backend cannot sleep")


def options_key(label: str, backend: str, options: dict) -> str:
    """A short, stable server identity from the launch-relevant options."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return f"{backend}:{label}#{digest}"


def missing_executable(exe: str) -> bool:
    """True when ``exe`` is neither an executable path nor a command on PATH."""
    if os.sep in exe:
        return not (Path(exe).is_file() and os.access(exe, os.X_OK))
    return shutil.which(exe) is None


class ModelPathBackend:
    """What the GPU backends (SGLang, vLLM) share: a model path, an optional served name,
    GPUs from their parallelism settings, and an identity from every launch option."""

    backend_name = ""

    def __init__(self, cfg):
        self.cfg = cfg

    @property
    def served_name(self) -> str:
        return self.cfg.served_model_name or self.cfg.model_path

    def gpus_needed(self) -> int:
        return self.cfg.gpus_needed()

    def server_key(self) -> str:
        opts = self.cfg.model_dump(exclude={"description", "sampling", "start_timeout_s", "memory_gib"})
        return options_key(Path(self.cfg.model_path).name or "model", self.backend_name, opts)
