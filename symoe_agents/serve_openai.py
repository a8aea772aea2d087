"""The OpenAI wire format of ``symoe serve``: requests read into questions, records written
as chat completions, text completions and their stream chunks. Pure: no IO here.

A chat request's last message is the question and must be the user's. Earlier messages
(system and developer instructions, earlier user and assistant turns, tool results) become
the question's context, shown to the experts and the aggregator before it; the skill
inferencer, the routing and the answer-format detection read the question alone. The
client's sampling fields are not used for the ensemble (each role samples as the config
says); a request sent to a pool model by its own name goes to it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .records import QuestionResult

#: the ensemble's models; "symoe" is the configured method
METHOD_MODELS = ("symoe", "moa", "self-moa", "majority", "top-k", "single")


class BadRequest(Exception):
    """A request the server cannot take: 400 with an OpenAI error body naming ``param``."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Asked:
    model: str
    question: str
    context: str
    stream: bool
    include_usage: bool


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _text_of(content: Any, where: str) -> str:
    """A message's text: a string, or a list of text parts (other parts are refused)."""
    if content is None:
        return ""
    if isinstance(content, str):
        _check_unicode(content, where)
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                shown = kind if isinstance(kind, str) and kind.isascii() and kind.isprintable() and len(kind) <= 40 else "non-text"
                raise BadRequest(f"{where}[{i}] is a '{shown}' part; the ensemble reads text parts only", f"{where}[{i}]")
            _check_unicode(part["text"], f"{where}[{i}].text")
            texts.append(part["text"])
        return "\n".join(texts)
    raise BadRequest(f"{where} must be a string or a list of text parts", where)


def _check_unicode(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{where} holds a lone surrogate (half of a UTF-16 pair, e.g. \\ud800); send valid Unicode", where) from None


_LABELS = {"system": "Instructions", "developer": "Instructions", "user": "User", "assistant": "Assistant", "tool": "Tool result"}


def _common(body: Any) -> tuple[str, bool, bool]:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required: one of the names GET /v1/models lists", "model")
    _check_unicode(model, "model")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    n = body.get("n", 1)
    if n not in (1, None):
        raise BadRequest("the ensemble gives one answer per request: 'n' must be 1", "n")
    return model, stream, bool(options.get("include_usage"))


def read_chat(body: Any) -> Asked:
    """A chat completion request for the ensemble, or ``BadRequest`` saying what to fix."""
    model, stream, include_usage = _common(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or m["role"] not in _LABELS:
            raise BadRequest(f"messages[{i}] needs a 'role' of {', '.join(_LABELS)}", f"messages[{i}].role")
        turns.append((m["role"], _text_of(m.get("content"), f"messages[{i}].content")))
    role, question = turns[-1]
    if role != "user":
        raise BadRequest(f"the last message is the question and must be the user's (it is '{role}')", f"messages[{len(turns) - 1}].role")
    if not question.strip():
        raise BadRequest("the last user message is empty", f"messages[{len(turns) - 1}].content")
    earlier = [f"{_LABELS[r]}: {t.strip()}" for r, t in turns[:-1] if t.strip()]
    context = ("Conversation so far:\n" + "\n\n".join(earlier) + "\n\nThe question to answer now:") if earlier else ""
    return Asked(model, question, context, stream, include_usage)


def read_completion(body: Any) -> Asked:
    """A (legacy) completion request: its one prompt is the question."""
    model, stream, include_usage = _common(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest("'prompt' must be one non-empty string (one question per request)", "prompt")
    _check_unicode(prompt, "prompt")
    return Asked(model, prompt, "", stream, include_usage)


def answer_text(r: QuestionResult) -> str:
    """What the client reads as the answer: the aggregator's response; for a method without
    one, the response of the first expert whose answer won the vote (or the voted answer)."""
    if r.aggregator_response:
        return r.aggregator_response
    for a in r.expert_answers:
        if r.final_answer is not None and a.extracted == r.final_answer and a.text:
            return a.text
    return r.final_answer or ""


def finish_reason(r: QuestionResult) -> str:
    return "length" if r.aggregator_answer is not None and r.aggregator_answer.truncated else "stop"


def usage_of(r: QuestionResult) -> dict[str, int]:
    u = r.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens}


def symoe_object(r: QuestionResult, method: str, queue_s: float, window_s: float) -> dict[str, Any]:
    """Who answered and how: skills, experts and their extracted answers, the aggregator,
    where the final answer came from, tokens by stage and the cost counters; with
    ``explain = true``, why those experts (``routing_explanation``)."""
    u = r.usage
    explained = {"routing_explanation": r.routing_explanation.model_dump()} if r.routing_explanation is not None else {}
    return {
        **explained,
        "method": method,
        "skills": r.skills,
        "routing": r.routing,
        "experts": [
            {"model": a.model, "slot": a.slot, "extracted": a.extracted, "error": a.error, "cached": a.cached,
             "prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens, "latency_s": round(a.latency_s, 3)}
            for a in r.expert_answers
        ],  # fmt: skip
        "aggregator": r.aggregator,
        "aggregator_status": r.aggregator_status,
        "final_answer": r.final_answer,
        "final_source": r.final_source,
        "answer_format": r.answer_format.value,
        "usage": u.model_dump(include={"skills", "experts", "aggregator"}),
        "cost": {
            "calls": u.skills.calls + u.experts.calls + u.aggregator.calls,
            "cached_calls": u.skills.cached + u.experts.cached + u.aggregator.cached,
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "usd": u.cost_usd,
            "device_s": round(u.device_s, 3),
            "queue_s": round(queue_s, 3),
            "window_s": round(window_s, 3),
        },
        "errors": r.errors,
        "truncated": r.truncated,
    }


def chat_completion(rid: str, model: str, created: int, r: QuestionResult, symoe: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer_text(r)}, "finish_reason": finish_reason(r), "logprobs": None}],
        "usage": usage_of(r), "symoe": symoe,
    }  # fmt: skip


def text_completion(rid: str, model: str, created: int, r: QuestionResult, symoe: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": answer_text(r), "finish_reason": finish_reason(r), "logprobs": None}],
        "usage": usage_of(r), "symoe": symoe,
    }  # fmt: skip


class Chunks:
    """The stream chunks of one request, chat or text completion."""

    def __init__(self, rid: str, model: str, created: int, chat: bool):
        self.rid, self.model, self.created, self.chat = rid, model, created, chat

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.rid, "object": kind, "created": self.created, "model": self.model, "choices": choices, **extra}

    def _choice(self, text: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}

    def opening(self, queued: int) -> dict[str, Any]:
        return self._chunk([self._choice("", None, role=True)], symoe={"stage": "queued", "ahead": queued})

    def stage(self, text: str) -> dict[str, Any]:
        return self._chunk([self._choice(None if self.chat else "", None)], symoe={"stage": text})

    def text(self, piece: str) -> dict[str, Any]:
        return self._chunk([self._choice(piece, None)])

    def closing(self, r: QuestionResult, symoe: dict[str, Any]) -> dict[str, Any]:
        return self._chunk([self._choice(None if self.chat else "", finish_reason(r))], symoe=symoe)

    def usage(self, r: QuestionResult) -> dict[str, Any]:
        return self._chunk([], usage=usage_of(r))
