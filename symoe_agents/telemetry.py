"""OpenTelemetry traces: every question a trace, every group and server a span beside them.

symoe calls only ``opentelemetry-api``. Tracing is on when a real tracer provider is in
place: one the host application installed, one passed in (``tracer_provider=``), or the
one ``tracing_setup.configure`` installs for the command line (``[telemetry]`` or the
standard ``OTEL_*`` variables; the SDK and exporter are the ``[telemetry]`` extra). With
none, nothing here is called: no span, no header, no attribute is built.

The shape of a batch's traces:

- ``symoe.run`` (a root): the batch; its children are the ``symoe.group …`` spans, one per
  group, with the group's counters and its restarts and resends as events.
- ``symoe.question`` (a root per question, linked to the run): its children are one
  ``chat MODEL`` span per call (skill samples, experts, aggregator; GenAI semantic
  conventions: model, tokens, finish reasons; retries as ``retry`` events; a call answered
  from the cache is a span with ``symoe.cached`` and a ``cache_hit`` event) and one
  ``symoe.routing`` span. Each call sends its span's ``traceparent`` header to the server.
- ``symoe.server MODEL`` (a root per server process, from the lifecycle events): start to
  stop, with ``ready``, ``sleep``, ``wake`` and ``restart`` events.

A question's root span is open from its first call to its record: one span per question in
flight. A sampler (``OTEL_TRACES_SAMPLER=traceidratio``) keeps a large batch's traces
small; unsampled spans record nothing.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .events import Event
    from .records import Completion, QuestionResult
    from .routing import Route


def tracing_on(provider: trace.TracerProvider | None = None) -> bool:
    """A provider that records: the one given, else the global one once an app set it."""
    p = provider if provider is not None else trace.get_tracer_provider()
    return not isinstance(p, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


class Tracing:
    """The tracer of one API instance, and the server spans it keeps from the events."""

    def __init__(self, provider: trace.TracerProvider | None = None):
        self.tracer = (provider or trace.get_tracer_provider()).get_tracer("symoe_agents", _version())
        self._servers: dict[tuple[str | None, int | None], trace.Span] = {}

    def run(self, method: str, questions: int) -> "RunTrace":
        return RunTrace(self.tracer, method, questions)

    def on_event(self, e: "Event") -> None:
        """Server lifecycle events as spans: one per server process, start to stop."""
        if not e.kind.startswith("server_"):
            return
        key = (e.server, e.pid)
        if e.kind == "server_start":
            attrs = _clean({"symoe.model": e.model, "symoe.server": e.server, "server.address": "127.0.0.1", "server.port": e.port,
                            "process.pid": e.pid, "symoe.node": e.node})  # fmt: skip
            self._servers[key] = self.tracer.start_span(f"symoe.server {e.model}", attributes=attrs, start_time=_ns(e.ts))
            return
        span = self._servers.get(key) or next((s for (server, _), s in self._servers.items() if server == e.server), None)
        if span is None:
            return
        detail = _clean({"symoe.duration_s": e.duration_s, "symoe.reason": e.detail.get("reason")})
        if e.kind in ("server_stop", "server_failed"):
            if e.kind == "server_failed":
                span.set_status(Status(StatusCode.ERROR, str(e.detail.get("reason", "failed"))[:500]))
            span.add_event(e.kind.removeprefix("server_"), detail, timestamp=_ns(e.ts))
            span.end(end_time=_ns(e.ts))
            self._servers = {k: s for k, s in self._servers.items() if s is not span}
        else:  # ready, sleep, wake, restart, released
            span.add_event(e.kind.removeprefix("server_"), detail, timestamp=_ns(e.ts))

    def close(self) -> None:
        """Servers still open when the API closes (each stop event ends its span first)."""
        for span in self._servers.values():
            span.end()
        self._servers.clear()


class RunTrace:
    """One batch's spans: the run, its groups, and each question's trace until its record."""

    def __init__(self, tracer: trace.Tracer, method: str, questions: int):
        self.tracer = tracer
        self.span = tracer.start_span("symoe.run", attributes={"symoe.method": method, "symoe.questions": questions})
        self._run_ctx = trace.set_span_in_context(self.span)
        self._questions: dict[str, tuple[trace.Span, Context]] = {}

    # -- groups --------------------------------------------------------------------------

    def group(self, name: str, model: str, requests: int, node: str | None) -> trace.Span:
        return self.tracer.start_span(f"symoe.group {name}", context=self._run_ctx,
                                      attributes=_clean({"symoe.group": name, "symoe.model": model, "symoe.requests": requests, "symoe.node": node}))  # fmt: skip

    # -- questions -----------------------------------------------------------------------

    def question(self, qid: str) -> Context:
        """The context of question ``qid``'s trace (its root span starts at first use)."""
        held = self._questions.get(qid)
        if held is None:
            span = self.tracer.start_span("symoe.question", attributes={"symoe.question.id": qid}, links=[Link(self.span.get_span_context())],
                                          context=Context())  # a root: each question is a trace  # fmt: skip
            held = self._questions[qid] = (span, trace.set_span_in_context(span))
        return held[1]

    def call(self, qid: str, role: str, model: str, sample: int) -> trace.Span:
        """A span for one call of question ``qid`` (``role``: skill_inferencer, expert, aggregator)."""
        attrs = {"gen_ai.operation.name": "chat", "gen_ai.request.model": model, "symoe.role": role, "symoe.sample": sample}
        return self.tracer.start_span(f"chat {model}", context=self.question(qid), kind=SpanKind.CLIENT, attributes=attrs)

    def cached(self, qid: str, role: str, model: str, sample: int, c: "Completion") -> None:
        span = self.call(qid, role, model, sample)
        span.set_attribute("symoe.cached", True)
        span.add_event("cache_hit")
        finish_call(span, [c], paid=False)
        span.end()

    async def routing(self, routes: Mapping[str, "Route"], began: float, ended: float) -> None:
        """One ``symoe.routing`` span per question, spanning the batch's routing. A span
        costs about 50 µs: the loop is given back every few hundred (100,000 questions are
        seconds of spans, which must not stop the loop for seconds)."""
        for n, (qid, route) in enumerate(routes.items(), 1):
            if n % 256 == 0:
                await asyncio.sleep(0)
            attrs: dict[str, Any] = {"symoe.routing.method": route.method, "symoe.experts": list(route.experts),
                                     "symoe.keywords": list(route.keywords)}  # fmt: skip
            if route.probabilities:
                attrs["symoe.routing.probabilities"] = json.dumps(dict(route.probabilities))
            if route.replaced:
                attrs["symoe.routing.replaced"] = [f"{a}->{b}" for a, b in route.replaced]
            span = self.tracer.start_span("symoe.routing", context=self.question(qid), attributes=attrs, start_time=_ns(began))
            span.end(end_time=_ns(ended))

    def done(self, r: "QuestionResult") -> None:
        held = self._questions.pop(r.id, None)
        if held is None:
            return
        span = held[0]
        u = r.usage
        span.set_attributes(_clean({
            "symoe.routing.method": r.routing, "symoe.experts": list(r.experts), "symoe.aggregator": r.aggregator,
            "symoe.aggregator_status": r.aggregator_status, "symoe.final_source": r.final_source, "symoe.correct": r.correct,
            "gen_ai.usage.input_tokens": u.prompt_tokens, "gen_ai.usage.output_tokens": u.completion_tokens,
            "symoe.cost_usd": u.cost_usd, "symoe.device_s": u.device_s, "symoe.errors": len(r.errors),
        }))  # fmt: skip
        if r.errors:
            span.set_status(Status(StatusCode.ERROR, r.errors[0][:500]))
        span.end()

    def dropped(self, qid: str) -> None:
        held = self._questions.pop(qid, None)
        if held is not None:
            held[0].set_attribute("symoe.dropped", True)
            held[0].end()

    def close(self, error: BaseException | None = None) -> None:
        """End what is open: questions that got no record (the run stopped), and the run."""
        for span, _ in self._questions.values():
            span.set_status(Status(StatusCode.ERROR, "the run stopped before this question finished"))
            span.end()
        self._questions.clear()
        if error is not None:
            self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:500]))
        self.span.end()


def traceparent(span: trace.Span) -> dict[str, str]:
    """The W3C Trace Context headers naming ``span``: ``traceparent`` (version 00, the
    trace and span ids, the flags) and ``tracestate`` when it has entries. Written out
    rather than through the propagator, which builds a context for each call."""
    ctx = span.get_span_context()
    headers = {"traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"}
    if ctx.trace_state:
        headers["tracestate"] = ctx.trace_state.to_header()
    return headers


def finish_call(span: trace.Span, calls: "list[Completion]", paid: bool = True) -> None:
    """A call's outcome on its span (a request of n samples: their sum): tokens, finish
    reasons, cost (``paid``: not for an answer from the cache, paid by an earlier run), or
    the error."""
    first = calls[0]
    attrs: dict[str, Any] = {"gen_ai.usage.input_tokens": sum(c.prompt_tokens for c in calls),
                             "gen_ai.usage.output_tokens": sum(c.completion_tokens for c in calls)}  # fmt: skip
    cost, device = (sum(c.cost_usd for c in calls), sum(c.device_s for c in calls)) if paid else (0.0, 0.0)
    if cost:
        attrs["symoe.cost_usd"] = cost
    if device:
        attrs["symoe.device_s"] = device
    reasons = [c.finish_reason for c in calls if c.finish_reason]
    if reasons:
        attrs["gen_ai.response.finish_reasons"] = reasons
    span.set_attributes(attrs)
    if first.error:
        span.set_attribute("error.type", "retryable" if first.retryable else "call_failed")
        span.set_status(Status(StatusCode.ERROR, first.error[:500]))


@functools.lru_cache(maxsize=256)
def _address(base_url: str) -> tuple[str | None, int | None]:
    where = urlsplit(base_url)
    return where.hostname, where.port


def request_attributes(kwargs: Mapping[str, Any], base_url: str) -> dict[str, Any]:
    """The GenAI request attributes of a chat request's parameters, and the server's address."""
    host, port = _address(base_url)
    return _clean({
        "gen_ai.request.temperature": kwargs.get("temperature"), "gen_ai.request.top_p": kwargs.get("top_p"),
        "gen_ai.request.max_tokens": kwargs.get("max_tokens"), "gen_ai.request.seed": kwargs.get("seed"),
        "gen_ai.request.choice.count": kwargs.get("n"), "server.address": host, "server.port": port,
    })  # fmt: skip


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("symoe-agents")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return None


def _ns(ts: float) -> int:
    return int(ts * 1e9)


def _clean(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """OpenTelemetry attributes take no None."""
    return {k: v for k, v in attrs.items() if v is not None}
