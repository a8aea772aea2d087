"""Shared HTTP core of the server STAND-INS (SGLang, vLLM): OpenAI routes plus health,
sleep/wake routes, and fake GPU memory bookkeeping for the nvidia-smi stand-in.

Knobs (environment):
  STANDIN_LOAD_S      seconds of 503 on /health before 200 (default 1)
  STANDIN_EXIT_CODE   exit with this code during "loading" instead of becoming ready
  STANDIN_ESCAPEE     path: spawn a child in its own session and write its pid there
  STANDIN_ARGV_OUT    path: write the received argv as JSON
  STANDIN_GPU_DIR     folder: hold STANDIN_GPU_MIB of "GPU memory" (a file named by our pid
                      that the nvidia-smi stand-in reads; STANDIN_GPU_RELEASE_S delays its
                      release after exit, as a driver may)
  STANDIN_DELAY_S     seconds each completion takes (default 0)
"""

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve(host, port, served, api_key, sleep_routes):
    if os.environ.get("STANDIN_ESCAPEE"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], start_new_session=True)
        with open(os.environ["STANDIN_ESCAPEE"], "w") as f:
            f.write(str(child.pid))
    gpu_dir = os.environ.get("STANDIN_GPU_DIR")
    if gpu_dir:
        with open(os.path.join(gpu_dir, str(os.getpid())), "w") as f:
            json.dump({"mib": int(os.environ.get("STANDIN_GPU_MIB", "1000")),
                       "release_s": float(os.environ.get("STANDIN_GPU_RELEASE_S", "0"))}, f)  # fmt: skip
    started = time.monotonic()
    load_s = float(os.environ.get("STANDIN_LOAD_S", "1"))
    delay_s = float(os.environ.get("STANDIN_DELAY_S", "0"))
    state = {"asleep": False}
    sleep_path, wake_path = sleep_routes

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *a):
            print("stand-in:", fmt % a, flush=True)

        def _send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self):
            return api_key is None or self.headers.get("Authorization") == f"Bearer {api_key}"

        def do_GET(self):
            if self.path in ("/health", "/health_generate"):
                ready = time.monotonic() - started >= load_s
                return self._send(200 if ready else 503, {} if ready else {"status": "loading"})
            if not self._authorized():
                return self._send(401, {"error": "unauthorized"})
            if self.path == "/v1/models":
                return self._send(200, {"object": "list", "data": [{"id": served, "object": "model"}]})
            return self._send(404, {"detail": "Not Found"})

        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            req = json.loads(self.rfile.read(length) or b"{}")
            if not self._authorized():
                return self._send(401, {"error": "unauthorized"})
            if sleep_path and self.path == sleep_path:
                state["asleep"] = True
                print("stand-in: asleep", flush=True)
                return self._send(200, {"success": True})
            if wake_path and self.path == wake_path:
                state["asleep"] = False
                print("stand-in: awake", flush=True)
                return self._send(200, {"success": True})
            if self.path != "/v1/chat/completions":
                return self._send(404, {"detail": "Not Found"})
            if state["asleep"]:
                return self._send(503, {"error": "asleep"})
            time.sleep(delay_s)
            content = req["messages"][0]["content"]
            text = "Keywords: arithmetic, algebra" if "Keywords" in content else "Reasoning. The answer is (A)"
            return self._send(200, {
                "id": "standin", "object": "chat.completion", "created": 0, "model": req.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            })

    server = ThreadingHTTPServer((host, port), Handler)
    exit_code = os.environ.get("STANDIN_EXIT_CODE")
    if exit_code is not None:
        threading.Timer(0.3, lambda: os._exit(int(exit_code))).start()
    print(f"stand-in serving {served} on {host}:{port}", flush=True)
    server.serve_forever()


def record_argv(argv):
    if os.environ.get("STANDIN_ARGV_OUT"):
        with open(os.environ["STANDIN_ARGV_OUT"], "w") as f:
            json.dump(argv, f)
