"""STAND-IN for vLLM's server (vLLM cannot run on these machines).

Accepts ``vllm serve MODEL`` with the flags symoe passes (unknown flags are rejected as vLLM's
argparse would); ``/health`` 503 while "loading" then 200; ``/v1/models`` lists the served
name; with ``--enable-sleep-mode``, ``POST /sleep?level=1`` and ``POST /wake_up``.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from standin_http import record_argv, serve  # noqa: E402


def main():
    argv = sys.argv[1:]
    record_argv(argv)
    if argv[:1] != ["serve"]:
        sys.exit(f"stand-in vllm: expected 'serve', got {argv[:1]}")
    p = argparse.ArgumentParser(prog="vllm serve")
    p.add_argument("model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key")
    p.add_argument("--served-model-name")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--gpu-memory-utilization", type=float)
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--enable-sleep-mode", action="store_true")
    args = p.parse_args(argv[1:])
    routes = ("/sleep?level=1", "/wake_up") if args.enable_sleep_mode else (None, None)
    serve(args.host, args.port, args.served_model_name or args.model, args.api_key, routes)


if __name__ == "__main__":
    main()
