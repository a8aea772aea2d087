"""Shared HTTP core of the server STAND-INS (SGLang, vLLM): a route table behind an auth
check, the OpenAI routes both serve, a loading phase, and fake GPU memory bookkeeping for
the nvidia-smi stand-in. What differs between the servers (which paths need the key, the
control routes, when the port listens) is passed in by sglang_standin.py / vllm_standin.py,
whose docstrings cite the upstream sources.

Shared facts, both servers being FastAPI apps: an unregistered path answers 404
{"detail": "Not Found"} and a registered path asked with another method 405
{"detail": "Method Not Allowed"} (FastAPI's default handler for Starlette's HTTPException);
a guarded path without a matching ``Authorization: Bearer KEY`` answers 401
{"error": "Unauthorized"} before any routing, so an unknown guarded path gives 401, not 404.

Knobs (environment):
  STANDIN_LOAD_S      seconds from start until ready (default 1)
  STANDIN_EXIT_CODE   exit with this code during "loading" instead of becoming ready
  STANDIN_ESCAPEE     path: spawn a child in its own session and write its pid there
  STANDIN_ARGV_OUT    path: write the received argv as JSON
  STANDIN_GPU_DIR     folder: hold STANDIN_GPU_MIB of "GPU memory" (a file named by our pid
                      that the nvidia-smi stand-in reads; STANDIN_GPU_RELEASE_S delays its
                      release after exit, as a driver may)
  STANDIN_DELAY_S     seconds each completion takes (default 0)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    query: dict[str, list[str]]
    body: bytes
    content_type: str

    def json(self) -> object:
        return json.loads(self.body) if self.body else None


Reply = tuple[int, object]  # status and a JSON body; bytes are sent as they are (b"": no body)
Handler = Callable[[Request], Reply]
Routes = dict[str, dict[str, Handler]]  # path -> method -> handler

NOT_FOUND: Reply = (404, {"detail": "Not Found"})
NOT_ALLOWED: Reply = (405, {"detail": "Method Not Allowed"})
UNAUTHORIZED: Reply = (401, {"error": "Unauthorized"})


def load_s() -> float:
    return float(os.environ.get("STANDIN_LOAD_S", "1"))


def bearer_ok(header: str | None, keys: list[str]) -> bool:
    """Both servers: scheme 'Bearer' (any case), one space, then exactly one of the keys."""
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and token in keys


class Model:
    """The served names, /v1/models, /v1/chat/completions and the asleep state."""

    def __init__(self, served: list[str], owned_by: str):
        self.served = served
        self.owned_by = owned_by
        self.awake = threading.Event()
        self.awake.set()
        self.delay_s = float(os.environ.get("STANDIN_DELAY_S", "0"))

    def sleep(self) -> None:
        self.awake.clear()
        print("stand-in: asleep", flush=True)

    def wake(self) -> None:
        self.awake.set()
        print("stand-in: awake", flush=True)

    def models(self, req: Request) -> Reply:
        cards = [{"id": n, "object": "model", "created": int(time.time()), "owned_by": self.owned_by, "root": n, "parent": None}
                 for n in self.served]  # fmt: skip
        return 200, {"object": "list", "data": cards}

    def completion(self, req: Request) -> dict:
        time.sleep(self.delay_s)
        body = req.json()
        assert isinstance(body, dict)
        content = body["messages"][0]["content"]
        text = "Keywords: arithmetic, algebra" if "Keywords" in content else "Reasoning. The answer is (A)"
        return {
            "id": "standin", "object": "chat.completion", "created": 0, "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }  # fmt: skip


def serve(host: str, port: int, label: str, routes: Routes, guarded: Callable[[str], bool], keys: list[str],
          *, listen_after_s: float, bind_early: bool) -> None:  # fmt: skip
    """Serve ``routes`` on host:port. Until ``listen_after_s`` the port refuses connections
    (the model is loading and the HTTP server is not up); ``bind_early`` holds the port
    meanwhile, as vLLM does."""
    _start_knobs()
    print(f"stand-in serving {label} on {host}:{port}", flush=True)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *a):
            print("stand-in:", fmt % a, flush=True)

        def _send(self, code: int, body: object) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            if not isinstance(body, bytes):
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, method: str) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            # auth first: both servers check it in a middleware, before routing
            if keys and guarded(url.path) and not bearer_ok(self.headers.get("Authorization"), keys):
                return self._send(*UNAUTHORIZED)
            methods = routes.get(url.path)
            if methods is None:
                return self._send(*NOT_FOUND)
            handler = methods.get(method)
            if handler is None:
                return self._send(*NOT_ALLOWED)
            req = Request(parse_qs(url.query), raw, self.headers.get("Content-Type", ""))
            try:
                return self._send(*handler(req))
            except (ValueError, KeyError, IndexError, TypeError, AssertionError) as exc:
                return self._send(400, {"error": {"message": f"stand-in: bad request: {exc!r}", "code": 400}})

        def do_GET(self):
            self._handle("GET")

        def do_POST(self):
            self._handle("POST")

    server = ThreadingHTTPServer((host, port), Handler, bind_and_activate=False)
    if bind_early:
        server.server_bind()
    time.sleep(listen_after_s)
    if not bind_early:
        server.server_bind()
    server.server_activate()
    print("stand-in: listening", flush=True)
    server.serve_forever()


def _start_knobs() -> None:
    if os.environ.get("STANDIN_ESCAPEE"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], start_new_session=True)
        with open(os.environ["STANDIN_ESCAPEE"], "w") as f:
            f.write(str(child.pid))
    gpu_dir = os.environ.get("STANDIN_GPU_DIR")
    if gpu_dir:
        with open(os.path.join(gpu_dir, str(os.getpid())), "w") as f:
            json.dump({"mib": int(os.environ.get("STANDIN_GPU_MIB", "1000")),
                       "release_s": float(os.environ.get("STANDIN_GPU_RELEASE_S", "0"))}, f)  # fmt: skip
    exit_code = os.environ.get("STANDIN_EXIT_CODE")
    if exit_code is not None:
        threading.Timer(0.3, lambda: os._exit(int(exit_code))).start()


def record_argv(argv: list[str]) -> None:
    if os.environ.get("STANDIN_ARGV_OUT"):
        with open(os.environ["STANDIN_ARGV_OUT"], "w") as f:
            json.dump(argv, f)
