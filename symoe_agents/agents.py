"""Agents: plain descriptions (role, model, prompt template, sampling), run by ``AgentRunner``.

An agent says *what* to ask; the runner says *how*: over the OpenAI protocol with
``openai.AsyncOpenAI``, one user message (no system prompt, the model's own chat template),
bounded concurrency (a semaphore) and rate (asyncio-throttle), a timeout around every call
and bounded retries with exponential backoff and jitter (tenacity) on errors that a retry
can fix: connection failures, timeouts, 429 and 5xx. 400/401/403/404 are not retried; the
error names the model and the key variable to check. A failed call becomes a
``Completion`` with ``error`` set, never an exception that loses the rest of the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import openai
from openai.types.chat import ChatCompletion, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from asyncio_throttle import Throttler
from opentelemetry.trace import Span
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from symoe_agents.servers import Endpoint

from . import redaction
from .config import SERIAL_IN_FLIGHT, Concurrency, Config, Sampling
from .costs import ShareClock
from .prompting import PromptTemplate, RenderedPrompt, load_template
from .records import Completion
from .telemetry import request_attributes, traceparent

Role = Literal["skill_inferencer", "expert", "aggregator"]


@dataclass(frozen=True)
class Agent:
    """Who answers and how: a model name from the config, a template, sampling settings."""

    role: Role
    model: str
    template: PromptTemplate
    sampling: Sampling


def build_agent(config: Config, role: Role, model: str) -> Agent:
    """The agent for ``model`` in ``role``: role sampling overlaid by the model's own."""
    template_name = {"skill_inferencer": "skills", "expert": "expert", "aggregator": "aggregator"}[role]
    role_sampling: Sampling = getattr(config.sampling, role)
    base = Sampling(**role_sampling.model_dump(include={"temperature", "top_p", "max_tokens"}))
    return Agent(role, model, load_template(template_name, config.prompts_dir), base.overlay(config.model(model).sampling))


class _NotSent(Exception):
    """The caller said not to send (its server is dead): fail at once, retryably."""


class CallFailed(Exception):
    """A call that failed where this process cannot see the cause (on a cluster node,
    ``cluster.py``): its description and whether a retry can fix it come with it.
    ``elsewhere``: the node is lost; not retried here, but the request stays unanswered,
    for the group to send again on another device."""

    def __init__(self, text: str, retryable: bool, elsewhere: bool = False):
        super().__init__(text)
        self.retryable = retryable
        self.elsewhere = elsewhere


class _StreamCut(Exception):
    """A stream that ended without saying why (no ``finish_reason``): the connection closed
    mid-answer. Retried when nothing of it was handed on."""


class _PartlyStreamed(Exception):
    """A streamed call broke after part of its text was handed on: not retried, since a
    reader cannot take back what it was given."""

    def __init__(self, cause: BaseException, chars: int):
        super().__init__(f"the stream broke after {chars} characters: {type(cause).__name__}: {cause}")
        self.cause = cause


class ModelClient(Protocol):
    """The one seam where requests meet a model: a chat completion per call, raising the
    ``openai`` errors (status, connection, timeout) on failure. Everything above it (slots,
    retries, seeds, records) is the same whatever answers here."""

    async def complete(self, **request: Any) -> ChatCompletion: ...

    async def aclose(self) -> None: ...


OnDelta = Callable[[str], None]


async def complete_streamed(client: ModelClient, on_delta: OnDelta, request: dict[str, Any]) -> ChatCompletion:
    """A chat completion asked as a stream: each piece of text goes to ``on_delta`` as it
    arrives, and the pieces are assembled into the completion ``complete`` would return
    (usage from the final chunk, asked for with ``include_usage``). A client without a
    ``stream`` method (a scripted one) answers whole: its text is handed on in one piece."""
    stream = getattr(client, "stream", None)
    if stream is None:
        response = await client.complete(**request)
        text = response.choices[0].message.content if response.choices else None
        if text:
            on_delta(text)
        return response
    parts: list[str] = []
    finish: str | None = None
    usage = None
    async for chunk in await stream(**request, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices or []:
            if choice.finish_reason:
                finish = choice.finish_reason
            piece = choice.delta.content if choice.delta else None
            if piece:
                parts.append(piece)
                on_delta(piece)
    if finish is None:  # a clean close mid-answer: not an answer to keep (nor to cache)
        raise _StreamCut("the stream ended without a finish_reason")
    return ChatCompletion.model_construct(
        id="streamed", object="chat.completion", created=int(time.time()), model=str(request.get("model", "")),
        choices=[Choice.model_construct(index=0, finish_reason=finish, message=ChatCompletionMessage.model_construct(role="assistant", content="".join(parts)))],
        usage=usage,
    )  # fmt: skip


#: opens the client of one endpoint: (endpoint, request timeout in s, requests in flight)
Connect = Callable[[Endpoint, float, int], ModelClient]


class OpenAIClient:
    """The default client: ``openai.AsyncOpenAI`` over HTTP, its own retries off (the
    runner's tenacity retries instead)."""

    def __init__(self, endpoint: Endpoint, timeout_s: float, max_in_flight: int):
        self._client = openai.AsyncOpenAI(
            base_url=endpoint.base_url,
            api_key=endpoint.api_key,
            max_retries=0,
            timeout=timeout_s,
            http_client=_pooled_client(max_in_flight),
        )

    async def complete(self, **request: Any) -> ChatCompletion:
        return await self._client.chat.completions.create(**request)

    async def stream(self, **request: Any):
        return await self._client.chat.completions.create(**request, stream=True)

    async def aclose(self) -> None:
        await self._client.close()


def _pooled_client(max_in_flight: int):
    """An HTTP client whose connection pool holds ``max_in_flight`` open requests: beyond the
    client's default pool (1000), a request would wait for a connection, not the server."""
    _room_for_sockets(max_in_flight)
    if max_in_flight <= 900:
        return None
    try:
        import httpx2 as httpx  # the openai client's transport since openai 3
    except ModuleNotFoundError:
        import httpx  # type: ignore[no-redef]
    limits = httpx.Limits(max_connections=max_in_flight + 16, max_keepalive_connections=max_in_flight + 16)
    return openai.DefaultAsyncHttpxClient(limits=limits)


def _room_for_sockets(n: int) -> None:
    """Raise this process's open-file limit (often 1024) so ``n`` sockets fit beside the
    files a run holds; best effort, up to the hard limit."""
    try:
        import resource
    except ModuleNotFoundError:  # not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 512
    if soft != resource.RLIM_INFINITY and soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def retryable_error(exc: BaseException) -> bool:
    """Whether another attempt of the same call can succeed (transient errors only)."""
    if isinstance(exc, CallFailed):
        return exc.retryable and not exc.elsewhere
    if isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError, asyncio.TimeoutError, _StreamCut)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return False


def request_seed(run_seed: int, role: str, stream: str, sample: int) -> int:
    """A per-request seed: reproducible on servers that honour it, distinct per sample.
    ``stream`` is the question's content key (``preparation.stream_key``), so two
    different questions never get the same seeds because they share an id."""
    h = hashlib.sha256(f"{run_seed}\x1f{role}\x1f{stream}\x1f{sample}".encode()).digest()
    return int.from_bytes(h[:4], "big") & 0x7FFFFFFF


def sampling_params(agent: Agent, run_seed: int, stream: str, sample: int) -> dict[str, object]:
    """The request's sampling fields and seed: sent with the call, and part of its cache key."""
    params: dict[str, object] = {"seed": request_seed(run_seed, agent.role, stream, sample)}
    for name in ("temperature", "top_p", "max_tokens"):
        value = getattr(agent.sampling, name)
        if value is not None:
            params[name] = value
    return params


def describe_error(exc: BaseException, model: str, endpoint: Endpoint) -> str:
    """What failed and what to check, with every key and fragment of one removed: some
    APIs echo the key they rejected in their error message, and this text goes to records
    and logs. The API's own words are scrubbed before they are cut to length, so a key
    that straddles the cut cannot leave its first part behind."""
    return redaction.scrub(_describe(exc, model, endpoint), {endpoint.api_key})


def _describe(exc: BaseException, model: str, endpoint: Endpoint) -> str:
    if isinstance(exc, CallFailed):  # described where it happened
        return str(exc)
    if isinstance(exc, _PartlyStreamed):
        return f"{_describe(exc.cause, model, endpoint)} (the stream broke after part of the answer was sent; not retried)"
    key = f", key from ${endpoint.key_env}" if endpoint.key_env else ""
    where = f"model '{model}' ({endpoint.base_url}{key})"
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        said = str(body.get("message") or exc.message)
        # the API's own words, scrubbed and then cut to 300: first cut to what can hold a key
        # that straddles character 300 (scrubbing a page of HTML would hold the event loop)
        longest = max((len(k) for k in (*redaction.known_keys(), endpoint.api_key)), default=0)
        said = redaction.scrub(said[: 300 + longest], {endpoint.api_key})[:300]
        head = f"{where}: HTTP {exc.status_code} {type(exc).__name__}: {said}"
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return head + (f"; check the key in ${endpoint.key_env}" if endpoint.key_env else "; check the endpoint's API key")
        if isinstance(exc, openai.NotFoundError):
            return head + f"; check base_url and that it serves '{endpoint.served_model}'"
        return head
    if isinstance(exc, asyncio.TimeoutError | openai.APITimeoutError):
        return f"{where}: no answer within the request timeout (concurrency.request_timeout_s)"
    if isinstance(exc, openai.APIConnectionError):
        return f"{where}: connection failed ({exc.__cause__ or exc})"
    return f"{where}: {type(exc).__name__}: {exc}"


class AgentRunner:
    """Sends one group's calls to one endpoint under the run's concurrency bounds:
    ``max_in_flight`` sequences open at once (the model's limit, ``Config.in_flight``; a
    request of ``n`` samples holds ``n``), the rate limit, a timeout per attempt and retries
    with backoff. A request waiting out its backoff gives its slots back, so a retry never
    keeps another request from the server."""

    def __init__(
        self, endpoint: Endpoint, concurrency: Concurrency, run_seed: int, max_in_flight: int | None = None, connect: Connect = OpenAIClient,
        clock: ShareClock | None = None,
    ):
        """``connect`` opens the model client (``OpenAIClient`` unless a caller puts another
        model there, e.g. a scripted one in a test). ``clock``: the server's device-time
        clock, shared by every runner that sends to it (each call's ``device_s``)."""
        self.endpoint = endpoint
        self.concurrency = concurrency
        self.run_seed = run_seed
        self.max_in_flight = max_in_flight or concurrency.max_in_flight or SERIAL_IN_FLIGHT
        self._client = connect(endpoint, concurrency.request_timeout_s, self.max_in_flight)
        self._slots = asyncio.Semaphore(self.max_in_flight)
        # a request of n samples takes its n slots one by one; one taker at a time, in arrival
        # order, so two wide requests never each hold part of what both need
        self._taking = asyncio.Lock()
        self.calls_sent = 0  # HTTP attempts, retries included: proves what was (not) sent twice
        self.peak_in_flight = 0  # the most sequences open at once, for the group's event
        self._open = 0
        self.clock = clock or ShareClock()
        rps = concurrency.requests_per_second
        self._throttle = Throttler(rate_limit=1, period=1.0 / rps) if rps else None

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> "AgentRunner":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @contextlib.asynccontextmanager
    async def _admitted(self, weight: int = 1) -> AsyncIterator[None]:
        weight = max(1, min(weight, self.max_in_flight))
        taken = 0
        try:
            if weight == 1:
                await self._slots.acquire()
                taken = 1
            else:
                async with self._taking:
                    while taken < weight:
                        await self._slots.acquire()
                        taken += 1
            if self._throttle is not None:
                async with self._throttle:
                    yield
            else:
                yield
        finally:
            for _ in range(taken):  # also what a cancelled taker held so far
                self._slots.release()

    async def call(
        self,
        agent: Agent,
        prompt: RenderedPrompt,
        stream: str,
        sample: int = 0,
        on_admitted: Callable[[], None] | None = None,
        proceed: Callable[[], bool] | None = None,
    ) -> Completion:
        """One call, retried on transient errors. ``proceed()`` is asked before every HTTP
        attempt: False (the server is known dead) returns a retryable "not sent" failure
        instead of spending the attempt, so a dead server costs no more sends than needed.
        ``on_admitted()`` runs once, when the first attempt gets its slot."""
        return (await self.call_many(agent, prompt, stream, sample, 1, on_admitted, proceed))[0]

    async def call_many(
        self,
        agent: Agent,
        prompt: RenderedPrompt,
        stream: str,
        first_sample: int,
        n: int,
        on_admitted: Callable[[], None] | None = None,
        proceed: Callable[[], bool] | None = None,
        on_delta: OnDelta | None = None,
        span: Span | None = None,
    ) -> list[Completion]:
        """``n`` samples of one prompt in one request (the OpenAI ``n``, with the first
        sample's seed), as ``call`` otherwise. The prompt is processed once, so its tokens
        count once, on the first sample. A sample's completion tokens come from its
        logprobs, asked for when ``n`` > 1: llama-server's usage counts only the first
        choice, and OpenAI's sums them all. ``on_delta`` (one sample only) streams the call:
        it receives the text as it is written; a call that breaks after some text was handed
        on is not retried."""
        kwargs: dict[str, object] = {
            "model": self.endpoint.served_model,
            "messages": [{"role": "user", "content": prompt.text}],
            **sampling_params(agent, self.run_seed, stream, first_sample),
        }
        if n > 1:  # top 1, not llama-server's default 20: 16 samples of 200 tokens took 3.7% longer with 20
            kwargs.update(n=n, logprobs=True, top_logprobs=1)
        on_retry: Callable[[RetryCallState], None] | None = None
        if span is not None:  # traced (telemetry.py): the server is told the call's span
            kwargs["extra_headers"] = traceparent(span)
            span.set_attributes(request_attributes(kwargs, self.endpoint.base_url))

            def record_retry(state: RetryCallState) -> None:
                exc = state.outcome.exception() if state.outcome is not None else None
                span.add_event("retry", {"symoe.attempt": state.attempt_number, "error.type": type(exc).__name__,
                                         "symoe.error": describe_error(exc, agent.model, self.endpoint)[:500] if exc else ""})  # fmt: skip

            on_retry = record_retry
        handed = 0  # characters of a streamed call handed on: once there are some, no retry

        def hand_on(piece: str) -> None:
            nonlocal handed
            handed += len(piece)
            assert on_delta is not None
            on_delta(piece)

        started: float | None = None
        device_s = 0.0  # each sequence's share of the server's time, every attempt
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(retryable_error),
                stop=stop_after_attempt(self.concurrency.retries + 1),
                wait=wait_exponential(multiplier=0.5, max=20.0) + wait_random(0, 0.5),  # backoff plus jitter, slot released
                reraise=True,
                before_sleep=on_retry,
            ):
                with attempt:
                    async with self._admitted(n):
                        if proceed is not None and not proceed():
                            raise _NotSent()
                        if started is None:
                            started = time.monotonic()
                            if on_admitted is not None:
                                on_admitted()
                        self.calls_sent += 1
                        self._open += n
                        self.peak_in_flight = max(self.peak_in_flight, self._open)
                        mark = self.clock.enter(n)
                        try:
                            async with asyncio.timeout(self.concurrency.request_timeout_s):
                                if on_delta is not None and n == 1:
                                    response = await complete_streamed(self._client, hand_on, kwargs)
                                else:
                                    response = await self._client.complete(**kwargs)
                        except Exception as exc:  # the request timeout included: a reader cannot take text back
                            if handed:
                                raise _PartlyStreamed(exc, handed) from exc
                            raise
                        finally:
                            self._open -= n
                            device_s += self.clock.leave(mark, n)  # failed attempts held the device too
        except Exception as exc:  # recorded, not raised: one failed call must not sink the group
            failed = Completion(
                model=agent.model,
                latency_s=time.monotonic() - started if started is not None else 0.0,
                prompt_sha256=prompt.sha256,
                error="not sent: the server is down" if isinstance(exc, _NotSent) else describe_error(exc, agent.model, self.endpoint),
                retryable=isinstance(exc, _NotSent) or retryable_error(exc) or (isinstance(exc, CallFailed) and exc.elsewhere),
                device_s=device_s,
            )
            return [failed] + [failed.model_copy() for _ in range(n - 1)]
        assert started is not None
        latency = time.monotonic() - started
        usage = response.usage
        if span is not None and getattr(response, "model", None):
            span.set_attribute("gen_ai.response.model", str(response.model))
        choices = {c.index: c for c in response.choices or []}
        if n == 1:
            choice = response.choices[0] if response.choices else None
            text = choice.message.content if choice else None
            return [
                Completion(
                    model=agent.model, text=text or "", finish_reason=choice.finish_reason if choice else None,
                    prompt_tokens=usage.prompt_tokens if usage else 0, completion_tokens=usage.completion_tokens if usage else 0,
                    latency_s=latency, prompt_sha256=prompt.sha256, device_s=device_s,
                )  # fmt: skip
            ]
        out: list[Completion] = []
        for j in range(n):
            choice = choices.get(j)
            if choice is None:
                out.append(Completion(
                    model=agent.model, latency_s=latency, prompt_sha256=prompt.sha256, device_s=device_s,
                    error=f"model '{agent.model}' ({self.endpoint.base_url}) answered {len(choices)} of {n} samples asked "
                          "in one request: set samples_per_request = 1 for this model",
                ))  # fmt: skip
                continue
            tokens = choice.logprobs.content if choice.logprobs is not None else None
            out.append(Completion(
                model=agent.model, text=choice.message.content or "", finish_reason=choice.finish_reason,
                prompt_tokens=(usage.prompt_tokens if usage else 0) if j == 0 else 0,
                completion_tokens=len(tokens) if tokens is not None else ((usage.completion_tokens if usage else 0) // n),
                latency_s=latency, prompt_sha256=prompt.sha256, device_s=device_s,
            ))  # fmt: skip
        return out
