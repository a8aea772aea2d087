"""STAND-IN for SGLang's server (SGLang cannot run on these machines).

It accepts the command line symoe builds (``python -m sglang.launch_server --model-path ...``),
rejecting unknown flags as SGLang's argparse would, and behaves as SGLang's docs describe:
``/health`` answers 503 while "loading" and 200 after; ``/v1/models`` lists the served name;
``/v1/chat/completions`` answers a fixed text. Knobs (environment):
  STANDIN_LOAD_S      seconds of 503 before 200 (default 1)
  STANDIN_EXIT_CODE   exit with this code during "loading" instead of becoming ready
  STANDIN_ESCAPEE     path: spawn a child in its own session (as SGLang's scheduler processes
                      escape a parent-to-child walk) and write its pid there
  STANDIN_ARGV_OUT    path: write the received argv as JSON
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def parse(argv):
    if argv[:2] != ["-m", "sglang.launch_server"]:
        sys.exit(f"stand-in: expected '-m sglang.launch_server', got {argv[:2]}")
    p = argparse.ArgumentParser(prog="sglang.launch_server")
    p.add_argument("--model-path", required=True)
    p.add_argument("--served-model-name")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--api-key")
    p.add_argument("--tp-size", type=int, default=1)
    p.add_argument("--dp-size", type=int, default=1)
    p.add_argument("--context-length", type=int)
    p.add_argument("--mem-fraction-static", type=float)
    p.add_argument("--max-total-tokens", type=int)
    p.add_argument("--base-gpu-id", type=int)
    p.add_argument("--random-seed", type=int)
    p.add_argument("--log-level")
    p.add_argument("--enable-metrics", action="store_true")
    p.add_argument("--enable-memory-saver", action="store_true")
    return p.parse_args(argv[2:])


def main():
    argv = sys.argv[1:]
    if argv[:1] == ["-c"]:  # preflight's "python -c 'import sglang'": this environment has it
        sys.exit(0 if "import sglang" in " ".join(argv[1:]) else 1)
    if os.environ.get("STANDIN_ARGV_OUT"):
        with open(os.environ["STANDIN_ARGV_OUT"], "w") as f:
            json.dump(argv, f)
    args = parse(argv)
    served = args.served_model_name or args.model_path
    started = time.monotonic()
    load_s = float(os.environ.get("STANDIN_LOAD_S", "1"))
    if os.environ.get("STANDIN_ESCAPEE"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], start_new_session=True)
        with open(os.environ["STANDIN_ESCAPEE"], "w") as f:
            f.write(str(child.pid))

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
            return args.api_key is None or self.headers.get("Authorization") == f"Bearer {args.api_key}"

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
            if self.path != "/v1/chat/completions":
                return self._send(404, {"detail": "Not Found"})
            text = "Keywords: arithmetic, algebra" if "Keywords" in req["messages"][0]["content"] else "Reasoning. The answer is (A)"
            return self._send(200, {
                "id": "standin", "object": "chat.completion", "created": 0, "model": req.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            })

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    exit_code = os.environ.get("STANDIN_EXIT_CODE")
    if exit_code is not None:
        threading.Timer(0.3, lambda: os._exit(int(exit_code))).start()
    print(f"stand-in SGLang serving {served} on {args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
