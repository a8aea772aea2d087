"""STAND-IN for SGLang's server (SGLang cannot run on these machines).

It accepts the command line symoe builds (``python -m sglang.launch_server --model-path ...``),
rejecting unknown flags as SGLang's argparse would, and behaves as SGLang's docs describe:
``/health`` answers 503 while "loading" and 200 after; ``/v1/models`` lists the served name;
with ``--enable-memory-saver``, ``/release_memory_occupation`` and
``/resume_memory_occupation``. Behaviour knobs: see standin_http.py (an escaping child
stands for SGLang's scheduler processes that leave the launcher's process tree).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from standin_http import record_argv, serve  # noqa: E402


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
    p.add_argument("--enable-weights-cpu-backup", action="store_true")
    return p.parse_args(argv[2:])


def main():
    argv = sys.argv[1:]
    if argv[:1] == ["-c"]:  # preflight's "python -c 'import sglang'": this environment has it
        sys.exit(0 if "import sglang" in " ".join(argv[1:]) else 1)
    record_argv(argv)
    args = parse(argv)
    routes = ("/release_memory_occupation", "/resume_memory_occupation") if args.enable_memory_saver else (None, None)
    serve(args.host, args.port, args.served_model_name or args.model_path, args.api_key, routes)


if __name__ == "__main__":
    main()
