"""STAND-IN for nvidia-smi (no GPU on these machines).

Reports GPUs from $STANDIN_GPUS (count, default 2, 81920 MiB each) and, as compute apps, the
server stand-ins that registered memory in $STANDIN_GPU_DIR: a live process holds its
memory; after it exits, the memory shows as held for its release_s more seconds, as a
driver can take a moment to free it. Supports -L, --query-gpu and --query-compute-apps.
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
    held = holders()
    if query.startswith("--query-gpu"):
        used = sum(held.values())
        for i in range(n):
            u = used if i == 0 else 0
            print(f"{i}, {total}, {u}, {total - u}")
    elif query.startswith("--query-compute-apps"):
        for pid, mib in held.items():
            print(f"{pid}, {mib}")


if __name__ == "__main__":
    main()
