"""STAND-IN for vLLM's OpenAI server, ``vllm serve MODEL`` (vLLM cannot run on these machines).

Follows vLLM 0.33.0 (commit 4ba787ec9, the PyPI wheel's vllm/_version.py), files under vllm/:
- flags (engine/arg_utils.py, entrypoints/common/cli_args.py): the ones symoe passes;
  others are refused as argparse would. ``--api-key`` and ``--served-model-name`` take one or
  more values; ``--enable-sleep-mode`` is a BooleanOptionalAction.
- the key (entrypoints/serve/middleware/register.py): ``args.api_key or [envs.VLLM_API_KEY]``,
  empty keys dropped: ``--api-key`` wins over the VLLM_API_KEY variable, either one turns
  auth on. The middleware (entrypoints/serve/middleware/authenticate.py) guards only paths
  starting with /v1, /v2, /inference or /cohere: /health, /sleep and /wake_up take no key.
- loading (entrypoints/launchers/launcher.py setup_server): the port is bound before the
  engine loads but listens only once the app is up, so connections are refused while
  loading; then ``GET /health`` (entrypoints/serve/instrumentator/health.py) answers 200
  with an empty body.
- sleep (envs.py, entrypoints/launchers/api_server/routers.py, entrypoints/serve/__init__.py,
  entrypoints/serve/dev/sleep/api_router.py): the dev routes exist only when
  ``bool(int(VLLM_SERVER_DEV_MODE))`` (a non-integer value fails at start); otherwise they are
  unregistered: 404. ``--enable-sleep-mode`` does not register them. ``POST /sleep?level=N``
  (0..2, default 1; else 400 from the validation handler) -> {"status": "sleeping",
  "level": N}; ``POST /wake_up[?tags=T...]`` -> {"status": "awake"|"sleeping", "tags":
  [...]|null}; ``GET /is_sleeping`` -> {"is_sleeping": bool}.
- asleep (v1/engine/core.py pause_scheduler, v1/executor/abstract.py): level 0 pauses the
  scheduler, level 1+ also puts the tags {"weights", "kv_cache"} to sleep; new requests are
  queued, not refused, and run once fully awake.
- a chat request for a model it does not serve: 404 "The model `X` does not exist."
  (entrypoints/serve/engine/serving.py).
Not modelled: GPU memory freed by sleep (the real one frees it only with --enable-sleep-mode,
which enables the cumem allocator; without it /sleep still answers 200 in dev mode).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from standin_http import Model, Reply, Request, Routes, load_s, record_argv, serve  # noqa: E402

GUARDED_PREFIX = ("/v1", "/v2", "/inference", "/cohere")
SLEEP_TAGS = frozenset(("weights", "kv_cache"))


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vllm serve")
    p.add_argument("model")
    p.add_argument("--host")  # None: every interface, as vLLM's default
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", nargs="+")
    p.add_argument("--served-model-name", nargs="+")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--gpu-memory-utilization", type=float)
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--enable-sleep-mode", action=argparse.BooleanOptionalAction, default=False)
    return p.parse_args(argv)


class Engine:
    """The scheduler pause and the executor's sleeping tags, as vLLM's engine core keeps them."""

    def __init__(self, model: Model):
        self.model = model
        self.paused = False
        self.tags: set[str] = set()
        self.lock = threading.Lock()

    def sleep(self, req: Request) -> Reply:
        level = int(req.query.get("level", ["1"])[-1])
        mode = req.query.get("mode", ["abort"])[-1]
        if not 0 <= level <= 2 or mode not in ("abort", "wait", "keep"):
            return 400, {"error": {"message": "1 validation error", "type": "Bad Request", "code": 400}}
        with self.lock:
            self.paused = True
            if level >= 1:
                self.tags |= SLEEP_TAGS
            self.model.sleep()
        return 200, {"status": "sleeping", "level": level}

    def wake_up(self, req: Request) -> Reply:
        tags = req.query.get("tags") or None  # none given: wake everything
        with self.lock:
            rest = None if tags is None else [t for t in tags if t != "scheduling"]
            if rest is None:
                self.tags.clear()
            elif all(t in self.tags for t in rest):  # an unknown tag: vLLM warns and wakes nothing
                self.tags -= set(rest)
            if not self.tags:
                self.paused = False
                self.model.wake()
        return 200, {"status": "sleeping" if self.tags else "awake", "tags": tags}

    def is_sleeping(self, req: Request) -> Reply:
        return 200, {"is_sleeping": self.paused or bool(self.tags)}

    def chat(self, req: Request) -> Reply:
        body = req.json()
        assert isinstance(body, dict)
        if body.get("model") and body["model"] not in self.model.served:
            return 404, {"error": {"message": f"The model `{body['model']}` does not exist.", "type": "NotFoundError", "code": 404}}
        self.model.awake.wait()  # queued while asleep, as the paused scheduler does
        return 200, self.model.completion(req)


def main() -> None:
    argv = sys.argv[1:]
    record_argv(argv)
    if argv[:1] != ["serve"]:
        sys.exit(f"stand-in vllm: expected 'serve', got {argv[:1]}")
    args = parse(argv[1:])
    dev_mode = bool(int(os.environ.get("VLLM_SERVER_DEV_MODE", "0")))  # envs.py's parse
    keys = [k for k in (args.api_key or [os.environ.get("VLLM_API_KEY")]) if k]
    model = Model(args.served_model_name or [args.model], "vllm")
    engine = Engine(model)
    routes: Routes = {
        "/health": {"GET": lambda req: (200, b"")},
        "/v1/models": {"GET": model.models},
        "/v1/chat/completions": {"POST": engine.chat},
    }
    if dev_mode:
        routes |= {"/sleep": {"POST": engine.sleep}, "/wake_up": {"POST": engine.wake_up},
                   "/is_sleeping": {"GET": engine.is_sleeping}}  # fmt: skip
    serve(args.host or "", args.port, model.served[0], routes, lambda path: path.startswith(GUARDED_PREFIX), keys,
          listen_after_s=load_s(), bind_early=True)  # fmt: skip


if __name__ == "__main__":
    main()
