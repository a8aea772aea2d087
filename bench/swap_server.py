"""STAND-IN OpenAI-compatible server whose start costs a fixed delay, for the swapping benchmark.

    python bench/swap_server.py --port PORT [--model NAME] [--start-delay S] [--decode-s S]

It models a model server on a GPU without using this machine's CPU for the model work:

- ``--start-delay S``: the process sleeps S seconds before it listens, as a server loads
  its weights (``/health`` answers only after that, so a start really costs S seconds).
- ``--decode-s S``: every completion answers after ``asyncio.sleep(S)``, as a batching
  server decodes: any number of requests at once each take S seconds (continuous batching
  with room to spare), and the CPU stays idle meanwhile.

HTTP/1.1 with keep-alive on 127.0.0.1 (asyncio streams, many requests at once):
``/health`` (200 once listening), ``/v1/models`` (the one model), ``/v1/chat/completions``
and ``/v1/completions`` (a short answer, "The answer is (B).", or "Keywords: ..." when the
prompt asks for keywords as symoe's skill prompt does; ``n`` choices; usage). With
``"stream": true`` the answer comes as server-sent events in a few pieces, a usage chunk
when ``stream_options.include_usage`` is set, then ``data: [DONE]``. The request's API key
is not checked. Not a test double for behaviour: see tests/standins/ for those.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid

from instant_server import read_request  # bench/ is this script's folder, first on sys.path

ANSWER = "The answer is (B)."
KEYWORDS = "Keywords: arithmetic, logic"
PIECES = 4  # a streamed answer arrives in this many pieces, spread over the decode time


def answer_for(prompt: str) -> str:
    # symoe's skill prompt ends with "Keywords: <keyword1>, ...": answer in that form, so the
    # skill stage parses keywords as it would from a real model
    return KEYWORDS if "Keywords:" in prompt else ANSWER


def prompt_text(body: dict) -> str:
    if isinstance(body.get("messages"), list):
        parts = [m.get("content") for m in body["messages"] if isinstance(m, dict)]
        return "\n".join(p for p in parts if isinstance(p, str))
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def usage(prompt: str, answer: str, n: int) -> dict:
    # about 4 bytes a token: plausible numbers, no tokenizer
    p, c = max(1, len(prompt) // 4), max(1, len(answer) // 4) * n
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def completion(body: dict, model: str, chat: bool) -> bytes:
    prompt = prompt_text(body)
    text = answer_for(prompt)
    n = body.get("n") if isinstance(body.get("n"), int) and body["n"] > 0 else 1
    if chat:
        choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None} for i in range(n)]
    else:
        choices = [{"index": i, "text": text, "finish_reason": "stop", "logprobs": None} for i in range(n)]
    return json.dumps({
        "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex, "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()), "model": model, "choices": choices, "usage": usage(prompt, text, n),
    }).encode()  # fmt: skip


def stream_events(body: dict, model: str, chat: bool) -> list[bytes]:
    """The SSE events of a streamed answer, in order (the pieces, the end, usage, [DONE])."""
    prompt = prompt_text(body)
    text = answer_for(prompt)
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    kind = "chat.completion.chunk" if chat else "text_completion"
    created = int(time.time())

    def chunk(piece: str | None, finish: str | None, role: bool = False) -> dict:
        if chat:
            delta = {"role": "assistant"} if role else {}
            if piece is not None:
                delta["content"] = piece
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}
        return {"id": rid, "object": kind, "created": created, "model": model, "choices": [choice]}

    size = -(-len(text) // PIECES)
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    out = [chunk(p, None, role=(i == 0)) for i, p in enumerate(pieces)]
    out.append(chunk(None, "stop"))
    options = body.get("stream_options") or {}
    if isinstance(options, dict) and options.get("include_usage"):
        out.append({"id": rid, "object": kind, "created": created, "model": model, "choices": [], "usage": usage(prompt, text, 1)})
    return [b"data: " + json.dumps(c).encode() + b"\n\n" for c in out] + [b"data: [DONE]\n\n"]


def plain(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


class SwapServer:
    def __init__(self, model: str, decode_s: float):
        self.model = model
        self.decode_s = decode_s
        self.models = json.dumps({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "stand-in"}]}).encode()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: one request after another on this connection
                head, raw, close = await read_request(reader)
                method, path = head.split(b" ", 2)[:2]
                await self.answer(writer, method, path.split(b"?", 1)[0], raw)
                if close:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def answer(self, writer: asyncio.StreamWriter, method: bytes, path: bytes, raw: bytes) -> None:
        if path == b"/health":
            writer.write(plain("200 OK", b'{"status":"ok"}'))
        elif path == b"/v1/models":
            writer.write(plain("200 OK", self.models))
        elif method == b"POST" and path in (b"/v1/chat/completions", b"/v1/completions"):
            try:
                body = json.loads(raw or b"{}")
                assert isinstance(body, dict)
            except (ValueError, AssertionError):
                writer.write(plain("400 Bad Request", b'{"error":{"message":"the body is not a JSON object"}}'))
                await writer.drain()
                return
            chat = path.endswith(b"/chat/completions")
            if body.get("stream") is True:
                await self.stream(writer, body, chat)
                return
            await asyncio.sleep(self.decode_s)  # the decoding, on a GPU that is not here
            writer.write(plain("200 OK", completion(body, self.model, chat)))
        else:
            writer.write(plain("404 Not Found", b'{"error":{"message":"not found"}}'))
        await writer.drain()

    async def stream(self, writer: asyncio.StreamWriter, body: dict, chat: bool) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        events = stream_events(body, self.model, chat)
        step = self.decode_s / PIECES
        for i, event in enumerate(events):
            if i < PIECES:  # the text pieces are spread over the decode time; the rest follows at once
                await asyncio.sleep(step)
            writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def serve(port: int, model: str, decode_s: float) -> None:
    server = await asyncio.start_server(SwapServer(model, decode_s).handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def pool_toml(models: list[str], start_delay: float, decode_s: float, served_prefix: str, *, k: int, seed: int, samples: int,
              request_timeout_s: float, retries: int) -> list[str]:
    """A config's lines for a pool of these servers, one process per model (distinct served
    names: distinct servers), the first model the skill inferencer, the second the aggregator;
    what the benchmarks that use it share (each adds its own tables)."""
    lines = [f"k = {k}", f"seed = {seed}", ""]
    for name in models:
        command = [sys.executable, __file__, "--port", "{port}", "--model", "{model}",
                   "--start-delay", str(start_delay), "--decode-s", str(decode_s)]  # fmt: skip
        lines += [
            f"[models.{name}]",
            'backend = "command"',
            "command = [" + ", ".join(json.dumps(a) for a in command) + "]",
            f'served_model_name = "{served_prefix}{name}"',
            "continuous_batching = true  # the stand-in answers any number at once",
            "start_timeout_s = 60",
            "",
        ]
    return lines + [
        "[roles]",
        f'skill_inferencer = "{models[0]}"',
        f"experts = [{', '.join(json.dumps(m) for m in models)}]",
        f'aggregator = "{models[1]}"',
        "",
        "[sampling.skill_inferencer]",
        f"samples = {samples}",
        "max_tokens = 32",
        "[sampling.expert]",
        "max_tokens = 64",
        "[sampling.aggregator]",
        "max_tokens = 64",
        "",
        "[concurrency]",
        f"request_timeout_s = {request_timeout_s:g}",
        f"retries = {retries}",
        "",
        "[servers]",
        "start_timeout_s = 60",
        "stop_grace_s = 5",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", default="swap")
    ap.add_argument("--start-delay", type=float, default=0.0, help="seconds asleep before listening: the model's load")
    ap.add_argument("--decode-s", type=float, default=0.0, help="seconds before each completion answers: its decoding")
    args = ap.parse_args()
    time.sleep(args.start_delay)  # the load: the port stays closed, and no CPU is used
    asyncio.run(serve(args.port, args.model, args.decode_s))


if __name__ == "__main__":
    main()
