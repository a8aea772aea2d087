"""Prometheus metrics: what ``symoe serve`` exposes at ``/metrics`` and a batch run can write
to a file at its end (``--metrics FILE``, the text format a node_exporter textfile
collector reads).

The counters live in a registry of their own (not prometheus-client's global one), so two
instances in one process never mix. They are fed from three places: every call's final
completion (``GroupRunner``), every record (``Controller``) and the lifecycle events (loads,
restarts, failures); ``symoe serve`` adds its HTTP requests and queue. prometheus-client is
in the ``[telemetry]`` extra; ``available()`` says whether it is installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .events import Event
    from .records import Completion, QuestionResult

#: seconds: from a cache hit (1 ms) to a long generation (10 min)
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
LOAD_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
#: a call's role (``Agent.role``) as a stage label
STAGES = {"skill_inferencer": "skills", "expert": "experts", "aggregator": "aggregator"}


class Counts(Protocol):
    """What the engine feeds: ``Metrics``, or a ``HeldCounts`` that waits to be kept."""

    def call(self, role: str, model: str, c: "Completion") -> None: ...
    def question(self, r: "QuestionResult") -> None: ...


class HeldCounts:
    """Calls and records held back (serve's cache probe): they reach the counters only if
    the probe answers its request, so a probe that stops short counts nothing and the
    window that then answers counts each call once."""

    def __init__(self) -> None:
        self._calls: list[tuple[str, str, Completion]] = []
        self._questions: list[QuestionResult] = []

    def call(self, role: str, model: str, c: "Completion") -> None:
        self._calls.append((role, model, c))

    def question(self, r: "QuestionResult") -> None:
        self._questions.append(r)

    def keep(self, into: "Metrics") -> None:
        for call in self._calls:
            into.call(*call)
        for r in self._questions:
            into.question(r)


def available() -> bool:
    return importlib.util.find_spec("prometheus_client") is not None


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("symoe_http_requests", "completion requests answered by symoe serve, by model asked and HTTP status",
                                ["model", "code"], registry=r)  # fmt: skip
        self.queue_depth = Gauge("symoe_queue_depth", "requests waiting for a window (symoe serve)", registry=r)
        self.windows = Gauge("symoe_windows_in_flight", "windows running (symoe serve)", registry=r)
        self.loads = Counter("symoe_model_loads", "model servers started and ready", ["model"], registry=r)
        self.load_seconds = Histogram("symoe_model_load_seconds", "seconds from a server's start to ready", ["model"],
                                      buckets=LOAD_BUCKETS, registry=r)  # fmt: skip
        self.calls = Counter("symoe_calls", "calls with a final outcome, by model, stage and outcome (ok, error, cached)",
                             ["model", "stage", "outcome"], registry=r)  # fmt: skip
        self.tokens = Counter("symoe_tokens", "tokens of the calls made (not cached), by model and direction (input, output)",
                              ["model", "direction"], registry=r)  # fmt: skip
        self.cache_hits = Counter("symoe_cache_hits", "calls answered from the answer cache", ["model"], registry=r)
        self.errors = Counter("symoe_errors", "errors by kind: call (a call that failed), server_failed, server_restart, "
                              "question (a record with errors), window_failed", ["kind"], registry=r)  # fmt: skip
        self.latency = Histogram("symoe_stage_latency_seconds", "seconds per call by stage (skills, experts, aggregator); "
                                 "per request from arrival to answer (request, symoe serve)", ["stage"],
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.cost = Counter("symoe_cost_usd", "USD of the calls made, by model", ["model"], registry=r)
        self.device = Counter("symoe_device_seconds", "device-seconds of the local calls made, by model", ["model"], registry=r)
        self.questions = Counter("symoe_questions", "questions finished, by where the final answer came from (none: unanswered)",
                                 ["source"], registry=r)  # fmt: skip

    def call(self, role: str, model: str, c: "Completion") -> None:
        """One call's final completion (answered, failed or from the cache)."""
        stage = STAGES.get(role, role)
        if c.cached:
            self.calls.labels(model, stage, "cached").inc()
            self.cache_hits.labels(model).inc()
            return
        self.calls.labels(model, stage, "error" if c.error else "ok").inc()
        if c.error:
            self.errors.labels("call").inc()
        self.tokens.labels(model, "input").inc(c.prompt_tokens)
        self.tokens.labels(model, "output").inc(c.completion_tokens)
        if c.cost_usd:
            self.cost.labels(model).inc(c.cost_usd)
        if c.device_s:
            self.device.labels(model).inc(c.device_s)
        if c.latency_s:
            self.latency.labels(stage).observe(c.latency_s)

    def question(self, r: "QuestionResult") -> None:
        self.questions.labels(r.final_source or "none").inc()
        if r.errors:
            self.errors.labels("question").inc()

    def window_failed(self) -> None:
        self.errors.labels("window_failed").inc()

    def on_event(self, e: "Event") -> None:
        if e.kind == "server_ready" and e.model:
            self.loads.labels(e.model).inc()
            if e.duration_s is not None:
                self.load_seconds.labels(e.model).observe(e.duration_s)
        elif e.kind in ("server_failed", "server_restart"):
            self.errors.labels(e.kind).inc()

    def text(self) -> bytes:
        """The registry in Prometheus' text exposition format."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def write(self, path: Path) -> None:
        """The text format to ``path``, whole or not at all (written beside it, then renamed)."""
        from prometheus_client import write_to_textfile

        write_to_textfile(str(path), self.registry)
