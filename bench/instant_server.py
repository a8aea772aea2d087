"""STAND-IN OpenAI-compatible server that answers at once, for measuring symoe's own cost.

    python bench/instant_server.py --port PORT [--model NAME] [--answer-bytes N]

HTTP/1.1 with keep-alive on 127.0.0.1: ``/v1/chat/completions`` answers a fixed completion
(10 prompt + 20 completion tokens; with --answer-bytes, a text of about N bytes ending in
the same answer) without looking at the request beyond its length;
``/health`` and ``/v1/models`` answer 200. It does no model work, so whatever limits
requests per second is the client's side. Not a test double for behaviour: see
tests/standins/ for those.
"""

from __future__ import annotations

import argparse
import asyncio
import json

ANSWER = "The answer is (B)."


def completion_body(answer_bytes: int = 0) -> bytes:
    # a long answer is reasoning-like filler before the answer line, as a model's would be
    filler = ("Let us reason about the options one at a time. " * (answer_bytes // 48 + 1))[: max(0, answer_bytes - len(ANSWER))]
    return json.dumps({
        "id": "instant", "object": "chat.completion", "created": 0, "model": "instant",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": filler + ANSWER}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 20 + answer_bytes // 4, "total_tokens": 30 + answer_bytes // 4},
    }).encode()  # fmt: skip


BODY = completion_body()


def response(body: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes, bool]:
    """One HTTP/1.1 request: its head, its body, and whether the client asked to close."""
    head = await reader.readuntil(b"\r\n\r\n")
    length, close = 0, False
    for line in head.split(b"\r\n")[1:]:
        low = line.lower()
        if low.startswith(b"content-length:"):
            length = int(line[15:])
        elif low.startswith(b"connection:") and b"close" in low:
            close = True
    return head, (await reader.readexactly(length) if length else b""), close


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, models: bytes, body: bytes = BODY) -> None:
    try:
        while True:
            head, _, close = await read_request(reader)
            path = head.split(b" ", 2)[1]
            writer.write(response(models if path.startswith(b"/v1/models") else body if path.endswith(b"/completions") else b"{}"))
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", default="instant")
    ap.add_argument("--answer-bytes", type=int, default=0, help="answer texts of about this many bytes (default: a short answer)")
    args = ap.parse_args()
    body = completion_body(args.answer_bytes)
    models = json.dumps({"object": "list", "data": [{"id": args.model, "object": "model"}]}).encode()
    server = await asyncio.start_server(lambda r, w: handle(r, w, models, body), "127.0.0.1", args.port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
