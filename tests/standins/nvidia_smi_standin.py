"""STAND-IN for nvidia-smi (no GPU on these machines).

Reports GPUs from $STANDIN_GPUS (count, default 2, 81920 MiB each) and, as compute apps, the
server stand-ins that registered memory in $STANDIN_GPU_DIR: a live process holds its
memory; after it exits, the memory shows as held for its release_s more seconds, as a
driver can take a moment to free it. Supports -L, --query-gpu and --query-compute-apps with
``--format=csv,noheader,nounits``: as nvidia-smi does, it prints the requested fields in the
order asked, and refuses a field it does not know ('Field "x" is not a valid field to
query.', exit code 2) or a query without a csv ``--format``.
"""

import json
import os
import sys
import time


def holders():
    d = os.environ.get("STANDIN_GPU_DIR")
    out = {}
    if not d:
        return out
    for name in os.listdir(d):
        if not name.isdigit():
            continue  # our own ".dead" markers
        path = os.path.join(d, name)
        try:
            info = json.load(open(path))
        except (OSError, ValueError):
            continue
        pid = int(name)
        alive = os.path.exists(f"/proc/{pid}") and "Z" not in open(f"/proc/{pid}/stat").read().split()[2]
        if alive:
            out[pid] = info["mib"]
            continue
        dead_marker = path + ".dead"
        if not os.path.exists(dead_marker):
            open(dead_marker, "w").write(str(time.time()))
        died = float(open(dead_marker).read())
        if time.time() - died < info["release_s"]:
            out[pid] = info["mib"]
    return out


def main():
    args = sys.argv[1:]
    n = int(os.environ.get("STANDIN_GPUS", "2"))
    total = 81920
    if args[:1] == ["-L"]:
        for i in range(n):
            print(f"GPU {i}: NVIDIA Stand-in (UUID: GPU-standin-{i})")
        return
    query = next((a for a in args if a.startswith("--query")), "")
    if not query:
        sys.exit("stand-in nvidia-smi: only -L and --query-* are implemented")
    if not any(a.startswith("--format=") and "csv" in a for a in args):
        print("ERROR: --format=csv is required with --query-*", file=sys.stderr)
        sys.exit(2)
    kind, _, fields = query.partition("=")
    held = holders()
    if kind == "--query-gpu":
        used = sum(held.values())
        rows = [{"index": i, "memory.total": total, "memory.used": used if i == 0 else 0,
                 "memory.free": total - (used if i == 0 else 0)} for i in range(n)]  # fmt: skip
    elif kind == "--query-compute-apps":
        rows = [{"pid": pid, "used_memory": mib} for pid, mib in held.items()]
    else:
        sys.exit(f"stand-in nvidia-smi: unknown option {kind}")
    known = {"index", "memory.total", "memory.used", "memory.free"} if kind == "--query-gpu" else {"pid", "used_memory"}
    wanted = [f.strip() for f in fields.split(",") if f.strip()]
    for f in wanted:
        if f not in known:
            print(f'Field "{f}" is not a valid field to query.', file=sys.stderr)
            sys.exit(2)
    for row in rows:
        print(", ".join(str(row[f]) for f in wanted))


if __name__ == "__main__":
    main()
