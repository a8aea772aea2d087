"""STAND-IN for SGLang's server, ``python -m sglang.launch_server`` (SGLang cannot run on
these machines).

Follows SGLang 0.5.23 (the PyPI wheel; its sglang/_version.py records no commit), files
under python/sglang/srt/:
- flags (arg_groups/fields/{model,serving,parallel,schedule,device,observability,exec_}.py,
  named by arg_groups/arg_utils.py as ``--`` + the field with '-' for '_'): the ones symoe
  passes, with their aliases (--model, --tensor-parallel-size, --data-parallel-size); others
  are refused as argparse would. The key comes from ``--api-key`` only: no variable sets it.
- auth (utils/auth.py decide_request_auth, added when a key is set by
  entrypoints/http_server.py): every path needs the key except those starting with
  /health, /ready or /metrics; /release_memory_occupation and /resume_memory_occupation are
  ADMIN_OPTIONAL, which with only --api-key means the api key too.
- loading (entrypoints/http_server.py launch_server, _wait_and_warmup, health_generate): the
  HTTP server starts only after the scheduler loaded the model (connections refused), then
  ``GET /health`` and ``GET /health_generate`` answer 503 (empty body) until the warmup
  request finished, then 200. Here: refused for the first half of STANDIN_LOAD_S, 503 for
  the second half.
- sleep (entrypoints/http_server.py, managers/scheduler_components/weight_updater.py,
  utils/torch_memory_saver_adapter.py): ``/release_memory_occupation`` and
  ``/resume_memory_occupation`` are always registered (GET or POST) and take a JSON body
  ({} or {"tags": [...]}; none: 400 from its validation handler); they answer 200 with a
  null body. Without --enable-memory-saver the adapter is a no-op: 200, and nothing is
  released.
- chat (entrypoints/http_server.py validate_json_request): a body that is not
  application/json answers 400.
Stand-in choice, not SGLang's: a chat request while memory is released answers 503 (real
SGLang has no guard and would compute on freed memory). Not modelled: /metrics.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from standin_http import Model, Reply, Request, Routes, load_s, record_argv, serve  # noqa: E402

UNGUARDED_PREFIX = ("/health", "/ready", "/metrics")


def parse(argv: list[str]) -> argparse.Namespace:
    if argv[:2] != ["-m", "sglang.launch_server"]:
        sys.exit(f"stand-in: expected '-m sglang.launch_server', got {argv[:2]}")
    p = argparse.ArgumentParser(prog="sglang.launch_server")
    p.add_argument("--model-path", "--model", required=True)
    p.add_argument("--served-model-name")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--api-key")
    p.add_argument("--tp-size", "--tensor-parallel-size", type=int, default=1)
    p.add_argument("--dp-size", "--data-parallel-size", type=int, default=1)
    p.add_argument("--context-length", type=int)
    p.add_argument("--mem-fraction-static", type=float)
    p.add_argument("--max-total-tokens", type=int)
    p.add_argument("--base-gpu-id", type=int, default=0)
    p.add_argument("--random-seed", type=int)
    p.add_argument("--log-level", default="info")
    p.add_argument("--enable-metrics", action="store_true")
    p.add_argument("--enable-memory-saver", action="store_true")
    p.add_argument("--enable-weights-cpu-backup", action="store_true")
    return p.parse_args(argv[2:])


class Server:
    def __init__(self, model: Model, memory_saver: bool, up_at: float):
        self.model = model
        self.memory_saver = memory_saver
        self.up_at = up_at

    def health(self, req: Request) -> Reply:
        return (200 if time.monotonic() >= self.up_at else 503), b""

    def _control(self, req: Request, released: bool) -> Reply:
        body = req.json()
        if not isinstance(body, dict):
            return 400, {"object": "error", "message": "Field required: body", "type": "Bad Request", "code": 400}
        if self.memory_saver and released:  # without the saver the adapter is a no-op
            self.model.sleep()
        elif self.memory_saver:
            self.model.wake()
        return 200, None

    def release(self, req: Request) -> Reply:
        return self._control(req, released=True)

    def resume(self, req: Request) -> Reply:
        return self._control(req, released=False)

    def chat(self, req: Request) -> Reply:
        if req.content_type.split(";")[0].strip().lower() != "application/json":
            return 400, {"object": "error", "message": "Unsupported Media Type: Only 'application/json' is allowed",
                         "type": "Bad Request", "code": 400}  # fmt: skip
        if not self.model.awake.is_set():
            return 503, {"error": "stand-in: generation while memory is released"}
        return 200, self.model.completion(req)


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["-c"]:  # preflight's "python -c 'import sglang'": this environment has it
        sys.exit(0 if "import sglang" in " ".join(argv[1:]) else 1)
    record_argv(argv)
    args = parse(argv)
    model = Model([args.served_model_name or args.model_path], "sglang")
    loading = load_s()
    server = Server(model, args.enable_memory_saver, time.monotonic() + loading)
    routes: Routes = {
        "/health": {"GET": server.health},
        "/health_generate": {"GET": server.health},
        "/v1/models": {"GET": model.models},
        "/v1/chat/completions": {"POST": server.chat},
        "/release_memory_occupation": {"GET": server.release, "POST": server.release},
        "/resume_memory_occupation": {"GET": server.resume, "POST": server.resume},
    }
    keys = [args.api_key] if args.api_key else []
    serve(args.host, args.port, model.served[0], routes, lambda path: not path.startswith(UNGUARDED_PREFIX), keys,
          listen_after_s=loading / 2, bind_early=False)  # fmt: skip


if __name__ == "__main__":
    main()
