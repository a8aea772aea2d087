"""STAND-IN for a hosted OpenAI-compatible API, for faults a real server cannot show here.

An asyncio HTTP server on 127.0.0.1 that answers ``/v1/chat/completions`` from a script of
status codes: e.g. [429, 503, 200] answers 429, then 503, then a real completion.
``hang`` instead of a code sleeps past any client timeout.

``text`` is the completion's content, or a function of the request body giving the
content, ``(content, finish_reason)``, or an ``int`` status to answer instead: a scripted
pool of models behind one endpoint. As OpenAI's API does, a completion stopped by
``max_tokens`` says ``"finish_reason": "length"``. Every request body is kept in
``requests``, and its headers in ``headers`` (a traced call's ``traceparent``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable


Reply = str | Callable[[dict], "str | int | tuple[str, str]"]


class ScriptedAPI:
    def __init__(self, script: list[int | str], text: Reply = "The answer is (B)"):
        self.script = list(script)
        self.text = text
        self.requests: list[dict] = []
        self.calls = 0
        self.auth_headers: list[str] = []
        self.headers: list[dict[str, str]] = []  # each request's headers, names in lower case
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def __aenter__(self) -> "ScriptedAPI":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def error_message(self, code: int) -> str:
        return f"scripted {code}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            self.calls += 1
            self.auth_headers.append(headers.get("authorization", ""))
            self.headers.append(headers)
            step = self.script.pop(0) if self.script else 200
            if step == "hang":
                await asyncio.sleep(3600)
            code = int(step)
            req = json.loads(body) if body else {}
            self.requests.append(req)
            reply = self.text(req) if callable(self.text) else self.text
            if isinstance(reply, int):
                code = reply
            content, finish = reply if isinstance(reply, tuple) else (reply, "stop")
            if code == 200:
                payload = {
                    "id": "x", "object": "chat.completion", "created": 0, "model": req["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
                }
            else:
                payload = {"error": {"message": self.error_message(code), "type": "test", "code": code}}
            data = json.dumps(payload).encode()
            writer.write(
                f"HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
