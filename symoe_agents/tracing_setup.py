"""The command line's trace exporter: an OpenTelemetry SDK provider, when asked for.

Asked for by ``[telemetry] traces`` ("otlp" or "console"), or else by the standard
variables: ``OTEL_TRACES_EXPORTER`` (otlp, console, none), or an OTLP endpoint in
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``.
``OTEL_SDK_DISABLED=true`` turns it off. The SDK reads the rest itself (the sampler
``OTEL_TRACES_SAMPLER``, headers, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``).
OTLP goes over HTTP/protobuf: the gRPC exporter is not a dependency. The SDK and the
exporter are the ``[telemetry]`` extra; preflight says so when they are missing.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Mapping

from .config import Config


def exporter_wanted(config: Config, environ: Mapping[str, str] = os.environ) -> str | None:
    """"otlp", "console" or None (no tracing), from the config, else the environment."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if config.telemetry.traces is not None:
        return config.telemetry.traces
    if config.telemetry.endpoint is not None:  # a collector named: OTLP to it
        return "otlp"
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if names:  # the first symoe can run; another alone is said by tracing_problems
        return next((n for n in names if n in ("otlp", "console")), next((n for n in names if n != "none"), None))
    if environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return "otlp"
    return None


def tracing_problems(config: Config, environ: Mapping[str, str] = os.environ) -> list[str]:
    """What would stop the command line's exporter, found before a run starts (none when an
    application already installed its own provider: symoe then uses that one)."""
    from .telemetry import tracing_on

    wanted = exporter_wanted(config, environ)
    if wanted is None or tracing_on():
        return []
    if wanted not in ("otlp", "console"):
        return [f"OTEL_TRACES_EXPORTER={wanted!r}: symoe exports traces with 'otlp' (HTTP/protobuf) or 'console'"]
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    if wanted == "otlp" and protocol != "http/protobuf":
        return [f"OTLP protocol {protocol!r}: symoe's exporter speaks http/protobuf; point it at the collector's HTTP port (4318)"]
    needed = ["opentelemetry.sdk"] + (["opentelemetry.exporter.otlp.proto.http"] if wanted == "otlp" else [])
    if any(importlib.util.find_spec(m.split(".")[0]) is None or _missing(m) for m in needed):
        return ['tracing is configured but the OpenTelemetry SDK or its OTLP exporter is not installed: pip install "symoe-agents[telemetry]"']
    return []


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:
        return True


def start_exporting(config: Config, environ: Mapping[str, str] = os.environ) -> Callable[[], None] | None:
    """Install the SDK provider as the global one; returns its shutdown (which exports what
    is buffered), or None when tracing is off or an application already set a provider."""
    from opentelemetry import trace

    from .telemetry import tracing_on

    wanted = exporter_wanted(config, environ)
    if wanted is None or tracing_on():
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {"service.name": config.telemetry.service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    if wanted == "console":  # to stderr, batched: stdout carries answers and reports
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = config.telemetry.endpoint
        exporter = OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces") if endpoint else OTLPSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider.shutdown
