"""The HTTP face of ``symoe serve``: an OpenAI-compatible API in front of the window
scheduler (Starlette; uvicorn runs it, see ``cli_serve``).

- ``GET /health``: 200 while taking requests (the pool passed preflight before the port
  opened), 503 once shutting down; with the queue, the windows so far and the servers up.
- ``GET /v1/models``: the ensemble's methods, then every pool model by its own name.
- ``POST /v1/chat/completions`` and ``POST /v1/completions``: a method's name asks the
  ensemble (``serve_openai`` reads the request); a pool model's name sends the request to
  that model as it is, when the scheduler gives it its turn.

Streams are server-sent events: a first chunk at once (the request is queued), a chunk
with a ``symoe.stage`` field as each of its window's groups starts, a comment every few
seconds while nothing else is sent, the aggregator's text as it is written, a last chunk
with ``finish_reason`` and the ``symoe`` object, the usage chunk when
``stream_options.include_usage`` is set, and ``data: [DONE]``. A client that disconnects
is dropped from the scheduler; the others are not disturbed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import redaction
from .methods import Method, build_methods
from .preparation import prepare
from .profiles import load_profiles
from .records import Question, QuestionResult
from .serve_openai import (
    METHOD_MODELS, Asked, BadRequest, Chunks, answer_text, chat_completion, error_body, read_chat, read_completion, symoe_object, text_completion,
)  # fmt: skip
from .serve_windows import Ask, QueueFull, Relay, ShuttingDown, WindowFailed, WindowScheduler

T = TypeVar("T")

HEARTBEAT_S = 5.0
MAX_BODY_BYTES = 8 * 2**20  # a question, its conversation and a request's fields fit many times over


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:  # fmt: skip
    return JSONResponse(error_body(message, kind, param, code), status_code=status, headers=headers)


def _sse(data: Any) -> bytes:
    # ASCII escapes: a lone surrogate (half an emoji, cut at max_tokens) is then "\ud83d", not a failed encode
    return b"data: " + json.dumps(data).encode() + b"\n\n"


class _Gone(Exception):
    """The client disconnected."""


async def _until_gone(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _or_gone(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result, or ``_Gone`` when the client disconnects first."""
    waiting = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_until_gone(request))
    try:
        await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not waiting.done():
        waiting.cancel()
        raise _Gone()
    return waiting.result()


class ServeApp:
    def __init__(self, scheduler: WindowScheduler, api_key: str | None = None, http_client: Any = None):
        self.scheduler = scheduler
        self.config = scheduler.config
        self.api_key = api_key
        self.http = http_client  # for requests sent on to a pool model
        cfg = self.config
        accuracy: dict[str, float | None] = {}
        if cfg.profiles:
            accuracy = {m: p.validation_accuracy for m, p in load_profiles(cfg.profiles, cfg.roles.experts).items()}
        named = build_methods([m for m in METHOD_MODELS if m != "symoe"], cfg.roles.experts, cfg.k, accuracy)
        self.methods: dict[str, Method] = {"symoe": Method("symoe", "skills", cfg.k), **{m.name: m for m in named}}
        self.created = int(time.time())
        self.app = Starlette(routes=[
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
        ], exception_handlers={404: self._no_route, 405: self._no_route})  # fmt: skip
        self.app.router.redirect_slashes = False  # a wrong path is a 404 that says so, not a redirect

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/") and self.api_key is not None:
            given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            token = given[7:] if given[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode("utf-8", "replace"), self.api_key.encode()):
                await _error(401, "a valid API key is needed: send 'Authorization: Bearer KEY'", "authentication_error",
                             code="invalid_api_key")(scope, receive, send)  # fmt: skip
                return
        await self.app(scope, receive, send)

    # -- small routes ---------------------------------------------------------------------

    async def _no_route(self, request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        routes = "GET /health, GET /metrics, GET /v1/models, POST /v1/chat/completions, POST /v1/completions"
        return _error(status, f"no {request.method} {request.url.path[:200]} here; this server has {routes}", code="not_found")

    async def health(self, request: Request) -> Response:
        s = self.scheduler
        body = {
            "status": "failed" if s.fault else "stopping" if s.closing else "ok",
            "error": s.fault,
            "queued": s.queued,
            "windows": s.stats.windows,
            "requests": s.stats.requests,
            "model_loads": s.stats.loads,
            "from_cache": s.stats.from_cache,
            "servers_up": sorted(s.manager.running_keys()),
            "turns": dataclasses.asdict(s.turns.stats()),  # swaps between models, and the longest wait for one
        }
        return JSONResponse(body, status_code=503 if s.closing else 200)

    async def metrics(self, request: Request) -> Response:
        """Prometheus' text format (metrics.py); like /health, it needs no key."""
        metrics = self.scheduler.metrics
        if metrics is None:
            return _error(404, 'metrics need prometheus-client: pip install "symoe-agents[telemetry]"', code="not_found")
        metrics.queue_depth.set(self.scheduler.queued)
        metrics.windows.set(self.scheduler.running)
        body = await asyncio.to_thread(metrics.text)  # many label sets take a while to format: not on the loop
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def models(self, request: Request) -> Response:
        cfg = self.config
        data = [{"id": name, "object": "model", "created": self.created, "owned_by": "symoe",
                 "description": f"the ensemble, method '{m.name}' (k={m.k})"} for name, m in self.methods.items()]  # fmt: skip
        for name, model in cfg.models.items():
            data.append({"id": name, "object": "model", "created": self.created, "owned_by": "symoe-pool",
                         "description": getattr(model, "description", None) or f"pool model '{name}', served as it is"})  # fmt: skip
        return JSONResponse({"object": "list", "data": data})

    # -- completions ----------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        return await self._counted(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._counted(request, chat=False)

    async def _counted(self, request: Request, chat: bool) -> Response:
        """A completion request, counted by the model asked and the status (``/metrics``);
        an answer that was not streamed also gives its time from arrival."""
        began = time.monotonic()
        request.state.model = "other"  # the label of a model this server does not have: no label per typo
        response = await self._complete(request, chat)
        metrics = self.scheduler.metrics
        if metrics is not None:
            metrics.requests.labels(request.state.model, str(response.status_code)).inc()
            if response.status_code == 200 and not isinstance(response, StreamingResponse):
                metrics.latency.labels("request").observe(time.monotonic() - began)
        return response

    async def _complete(self, request: Request, chat: bool) -> Response:
        raw = bytearray()
        try:
            async for piece in request.stream():  # read up to the limit, not whatever a client sends
                raw += piece
                if len(raw) > MAX_BODY_BYTES:
                    return _error(413, f"the request body is over {MAX_BODY_BYTES // 2**20} MiB", code="body_too_large")
        except ClientDisconnect:
            return Response(status_code=499)  # gone while sending: nobody reads an answer
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return _error(400, "the request body is not valid JSON (UTF-8)")
        model = body.get("model") if isinstance(body, dict) else None
        if isinstance(model, str) and (model in self.config.models or model in self.methods):
            request.state.model = model
        if isinstance(model, str) and model in self.config.models and model not in self.methods:
            return await self._relay(request, body, model, chat)
        try:
            asked = read_chat(body) if chat else read_completion(body)
        except BadRequest as exc:
            return _error(exc.status, str(exc), param=exc.param, code=exc.code)
        method = self.methods.get(asked.model)
        if method is None:
            names = ", ".join([*self.methods, *self.config.models])
            return _error(404, f"no model '{asked.model}'; this server has: {names}", param="model", code="model_not_found")
        question = Question(id=Ask.new_id(), question=asked.question, metadata={"context": asked.context} if asked.context else {})
        try:
            await asyncio.to_thread(prepare, question)  # megabytes of text take a second: not on the loop
        except ValueError as exc:
            return _error(400, str(exc), param="messages" if chat else "prompt")
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        if asked.stream:
            return self._stream(request, asked, method, question, rid, chat)
        ask = Ask(method, question)
        refused = self._submit(ask)
        if refused is not None:
            return refused
        try:
            result = await _or_gone(request, asyncio.shield(ask.done))
        except _Gone:
            self.scheduler.drop(ask)
            return Response(status_code=499)  # nobody reads it
        except (WindowFailed, ShuttingDown) as exc:
            return self._failed(exc)
        make = chat_completion if chat else text_completion
        return JSONResponse(make(rid, asked.model, int(time.time()), result, self._symoe(ask, result)))

    def _submit(self, item: Ask | Relay) -> Response | None:
        try:
            self.scheduler.submit(item)
        except QueueFull as exc:
            return _error(429, str(exc), "rate_limit_error", code="queue_full", headers={"Retry-After": str(exc.retry_after)})
        except ShuttingDown as exc:
            return _error(503, str(exc), "server_error", code="shutting_down")
        return None

    @staticmethod
    def _failed(exc: Exception) -> JSONResponse:
        if isinstance(exc, ShuttingDown):
            return _error(503, str(exc), "server_error", code="shutting_down")
        return _error(500, str(exc), "server_error", code="window_failed")

    def _symoe(self, ask: Ask, result: QuestionResult) -> dict[str, Any]:
        started = ask.started or ask.arrived
        return symoe_object(result, ask.method.name, started - ask.arrived, time.monotonic() - started)

    def _stream(self, request: Request, asked: Asked, method: Method, question: Question, rid: str, chat: bool) -> Response:
        events: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        ask = Ask(method, question, progress=lambda kind, text: events.put_nowait((kind, text)))
        ahead = self.scheduler.queued
        refused = self._submit(ask)
        if refused is not None:
            return refused
        chunks = Chunks(rid, asked.model, int(time.time()), chat)

        async def body() -> AsyncIterator[bytes]:
            streamed = False
            try:
                yield _sse(chunks.opening(ahead))
                while not ask.done.done():
                    getting = asyncio.ensure_future(events.get())
                    try:
                        await asyncio.wait({getting, ask.done}, timeout=HEARTBEAT_S, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        got = getting.done()
                        if not got:
                            getting.cancel()
                    if not got:
                        if not ask.done.done():
                            yield b": symoe: waiting\n\n"
                        continue
                    kind, text = getting.result()
                    if kind == "token":
                        streamed = True
                        yield _sse(chunks.text(text))
                    else:
                        yield _sse(chunks.stage(text))
                while not events.empty():  # tokens that came in with the end
                    kind, text = events.get_nowait()
                    if kind == "token":
                        streamed = True
                        yield _sse(chunks.text(text))
                try:
                    result = ask.done.result()
                except (WindowFailed, ShuttingDown) as exc:
                    code = "shutting_down" if isinstance(exc, ShuttingDown) else "window_failed"
                    yield _sse(error_body(str(exc), "server_error", code=code))
                    return
                if streamed and result.aggregator_response is None:
                    # the aggregator's stream broke part-way: what the client read is not an answer
                    said = "; ".join(e for e in result.errors if e.startswith("aggregator")) or "the aggregator's stream broke"
                    yield _sse(error_body(f"the answer was cut off: {said}", "server_error", code="aggregator_failed"))
                    return
                if not streamed:  # cached, a method without an aggregator, or a failed aggregator: the answer whole
                    text = answer_text(result)
                    if text:
                        yield _sse(chunks.text(text))
                yield _sse(chunks.closing(result, self._symoe(ask, result)))
                if asked.include_usage:
                    yield _sse(chunks.usage(result))
                yield b"data: [DONE]\n\n"
            finally:
                if not ask.done.done():  # the client went away (the stream was closed early)
                    self.scheduler.drop(ask)

        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # -- a pool model by its own name --------------------------------------------------

    async def _relay(self, request: Request, body: dict[str, Any], model: str, chat: bool) -> Response:
        relay = Relay(model)
        refused = self._submit(relay)
        if refused is not None:
            return refused
        try:
            endpoint = await _or_gone(request, asyncio.shield(relay.turn))
        except _Gone:
            self.scheduler.drop(relay)
            return Response(status_code=499)
        except (WindowFailed, ShuttingDown) as exc:
            relay.finished.set()
            return self._failed(exc)
        url = endpoint.base_url.rstrip("/") + ("/chat/completions" if chat else "/completions")
        headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
        sent = {**body, "model": endpoint.served_model}
        timeout = self.config.concurrency.request_timeout_s
        keys = {endpoint.api_key} if endpoint.api_key else set()
        if not body.get("stream"):
            try:
                upstream = await _or_gone(request, self.http.post(url, json=sent, headers=headers, timeout=timeout))
            except _Gone:
                return Response(status_code=499)
            except Exception as exc:
                return _error(502, f"model '{model}' did not answer: {type(exc).__name__}", "server_error", code="upstream_failed")
            finally:
                relay.finished.set()
            if upstream.status_code >= 400:  # some APIs echo the key they refused: never passed on whole
                said = redaction.scrub(upstream.text[:2000], keys)[:500]
                return _error(upstream.status_code, f"model '{model}' answered HTTP {upstream.status_code}: {said}", "upstream_error", code="upstream_error")
            try:
                data = upstream.json()
            except ValueError:
                return _error(502, f"model '{model}' answered HTTP {upstream.status_code} without JSON", "server_error", code="upstream_failed")
            if isinstance(data, dict) and "model" in data:
                data["model"] = model
            return JSONResponse(data, status_code=upstream.status_code)

        async def relayed() -> AsyncIterator[bytes]:
            try:
                async with self.http.stream("POST", url, json=sent, headers=headers, timeout=timeout) as upstream:
                    if upstream.status_code != 200:
                        said = redaction.scrub((await upstream.aread())[:2000].decode("utf-8", "replace"), keys)[:500]
                        yield _sse(error_body(f"model '{model}' answered HTTP {upstream.status_code}: {said}", "upstream_error", code="upstream_error"))
                        return
                    # lines are split at b"\n" only: a U+2028 inside a JSON string is text, not a line end
                    pending = b""
                    async for raw in upstream.aiter_bytes():
                        relay.touched = time.monotonic()
                        pending += raw
                        *lines, pending = pending.split(b"\n")
                        if lines:
                            yield b"".join(_renamed(line, model) + b"\n" for line in lines)
                    if pending:
                        yield _renamed(pending, model)
            except Exception as exc:
                yield _sse(error_body(f"model '{model}' stream failed: {type(exc).__name__}", "server_error", code="upstream_failed"))
            finally:
                relay.finished.set()

        return StreamingResponse(relayed(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _renamed(line: bytes, model: str) -> bytes:
    """An upstream SSE line with the pool model's name in place of the server's."""
    if not line.startswith(b"data: {"):
        return line
    try:
        chunk = json.loads(line[6:])
    except ValueError:
        return line
    if isinstance(chunk, dict) and "model" in chunk:
        chunk["model"] = model
        return b"data: " + json.dumps(chunk).encode()
    return line
