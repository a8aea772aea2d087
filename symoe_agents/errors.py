"""Typed exceptions. Each message says what to change, not only what went wrong."""

from __future__ import annotations


class SymoeError(Exception):
    """Base class of every error symoe raises on purpose."""


class ConfigError(SymoeError):
    """The config file (or the built-in pool) is invalid. Names the file and the key."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {key}: {msg}" if key else f"{source}: {msg}" for key, msg in problems]
        super().__init__("invalid config\n  " + "\n  ".join(lines))


def where(source: str, line: int | None, msg: str) -> str:
    """``file:line: problem`` (or ``file: problem``), as compilers write it."""
    return f"{source}:{line}: {msg}" if line else f"{source}: {msg}"


class InputError(SymoeError):
    """A question file is malformed. Names the file and the line."""

    def __init__(self, source: str, problems: list[tuple[int | None, str]]):
        self.source = source
        self.problems = problems
        super().__init__("invalid input\n  " + "\n  ".join(where(source, line, msg) for line, msg in problems))


class ProfileError(SymoeError):
    """A profiles directory is missing, malformed or does not cover the expert pool."""


class PromptError(SymoeError):
    """A prompt template is missing or was rendered with the wrong variables."""


class ServerStartError(SymoeError):
    """A model server did not become ready. Carries the tail of its log."""

    def __init__(self, model: str, reason: str, log_tail: str = "", log_path: str | None = None):
        self.model = model
        self.reason = reason
        self.log_tail = log_tail
        self.log_path = log_path
        msg = f"server for model '{model}' did not start: {reason}"
        if log_path:
            msg += f"\n  full log: {log_path}"
        if log_tail:
            msg += "\n  last lines of its log:\n    " + "\n    ".join(log_tail.splitlines()[-20:])
        super().__init__(msg)


class EndpointError(SymoeError):
    """A model endpoint answered with an error that retrying will not fix."""


class CacheError(SymoeError):
    """The answer cache cannot be opened or is not a symoe cache of this version."""


class OutputError(SymoeError):
    """An existing answers file cannot be resumed. Names the file and the line."""


class ClusterError(SymoeError):
    """The Ray cluster of ``[cluster]`` cannot run the config (Ray missing, no cluster at the
    address, no usable node, a node without the model files): found before anything starts."""


class BudgetSpent(SymoeError):
    """The run's calls cost ``--max-cost`` (``cost.max_usd``): no more requests were sent.
    Everything answered is kept; the same command resumes."""

    def __init__(self, limit_usd: float, spent_usd: float):
        self.limit_usd, self.spent_usd = limit_usd, spent_usd
        self.finished: list = []  # eval: the report rows of the methods that finished before it
        super().__init__(f"budget spent: the calls cost ${spent_usd:.4f} of the ${limit_usd:.4f} allowed (--max-cost), so no more requests were sent")
