"""Scale-out over a Ray cluster: the same batch on one worker node and on three, a node lost
mid-group, the Ray path's own cost, and the memory each node holds.

    python bench/scaleout.py [--parts a,b,c,d,e] [--questions 4] [--standin-questions 36]
                             [--experts 16] [--k 3] [--start-delay 2] [--decode-s 1]
                             [--kill-after 0.4] [--request-timeout 60] [--timeout 300] [--keep DIR]

    quick check (stand-ins only, about 2 minutes): python bench/scaleout.py --parts b,c,e --standin-questions 12

The defaults take about 5 minutes on a 2-core machine (3 real-server runs of ~50 s each).

Every run is ``symoe solve`` as a subprocess (with --timeout), a fresh answers file and answer
cache each, with the same questions and seed, so routing (seeded per question id) sends the
same requests to the same experts in every run. The clusters are local: a head and 1 or 3
worker nodes made with ``ray.cluster_utils.Cluster`` in this process (each worker with
num_cpus=1 and the lane resource ``symoe``), so the "nodes" share this machine's cores; the
figures say what the cluster path costs and how the schedule spreads, not what separate
machines would gain.

a. REAL servers: the embedded llama.cpp pool, made smaller as tests/conftest.py's
   ``small_pool_toml`` does (2 skill samples, 64 tokens), without its profiles (uniform
   routing) and with a fourth expert, ``smollm2-short`` (its own server): 4 experts over 3
   servers. Every llama.cpp model gets ``n_threads = 1``, which is what a 1-CPU node gives it
   anyway, so that the local run of (d) uses the same threads. Wall time on 1 worker node
   and on 3.
b. STAND-IN servers (bench/swap_server.py through the ``command`` backend, each expert its
   own server): a start costs --start-delay s, every completion --decode-s s without CPU
   use, as GPU-bound servers on separate machines would. Wall time on 1 node and on 3, the
   speed-up (the issue's goal: at least 2.5x on 3 nodes), and the expert stage's own
   speed-up (first expert group_start to last expert group_end).
c. Recovery: the stand-ins on 3 nodes; when an expert group's server on a worker node is
   ready (its group_start, then its server_ready, in the events file), --kill-after s later
   that node is removed (``remove_node(allow_graceful=False)``: its raylet SIGKILLed, and its
   agents and workers, the DeviceHost actor among them, end with it). Reported: kill to ``node_lost``, ``node_lost`` to the moved group's
   ``group_moved`` and to its ``group_end``, and the answers file's counts (records,
   records with errors, failed requests).
d. The Ray path's own cost: the real pool on 1 worker node against no [cluster] at all
   (this machine, the same pool and threads); the difference in wall time as a % of the
   local wall time (goal: under 5%), and the group seconds per call (the sum of group
   durations over the calls sent). The same for the stand-ins, whose fixed timings make the
   difference visible above the noise of real decoding on shared cores.
e. Memory: resident memory of each node's processes, sampled every second while its
   cluster runs: Ray's own (gcs, raylet, agents, idle workers), the DeviceHost actor (a Ray
   worker that runs symoe's node side), and the model servers (and symoe's watchdogs); RSS
   counts shared pages in every process, PSS divides them. And the driver's (the ``symoe
   solve`` process; its own, not its servers').

It is a benchmark, not a test: no assertion on speed; it prints markdown tables. Every
cluster it starts is shut down on the way out (also on an error or Ctrl-C), and it checks
that no model server it started (llama-server, swap_server) and no process of its clusters
is left. A run during which symoe's own sources change (someone editing the tree) is flagged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from swap_server import pool_toml  # bench/ is this script's folder, first on sys.path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MiB = 2**20
STANDIN_TAG = "scaleout-"  # in every stand-in's served model name: finds ours among other processes


def say(text: str) -> None:
    print(f"[scaleout] {text}", file=sys.stderr, flush=True)


# -- questions and configs ------------------------------------------------------------------


def questions(n: int, seed: int) -> list[dict]:
    """examples/questions.jsonl first, then generated multiple-choice sums."""
    base = [json.loads(line) for line in (ROOT / "examples" / "questions.jsonl").read_text().splitlines() if line.strip()]
    extra = []
    for i in range(max(0, n - len(base))):
        a, b = 7 + (i * 13 + seed) % 89, 3 + (i * 29 + seed) % 97
        s = a + b
        extra.append({"id": f"sum-{i}", "question": f"What is {a} + {b}? The options are: (A) {s - 1} (B) {s} (C) {s + 1} (D) {s + 10}",
                      "gold_answer": "B"})  # fmt: skip
    return (base + extra)[:n]


def write_questions(path: Path, qs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(q) + "\n" for q in qs))
    return path


def cluster_table(address: str | None) -> str:
    return "" if address is None else f'\n[cluster]\naddress = "{address}"\nlane_resource = "symoe"\n'


def real_pool_text(address: str | None) -> str:
    """The embedded pool as tests/conftest.py's small_pool_toml makes it (2 skill samples, 64
    tokens), without its profiles, with a fourth expert on a server of its own, and one
    thread per llama.cpp server."""
    from symoe_agents.config import embedded_config_text

    text = embedded_config_text()
    for old in ("samples = 5", "max_tokens = 200", 'backend = "llamacpp"'):
        assert old in text, f"the embedded pool's TOML changed: {old!r} is gone"
    text = text.replace("samples = 5", "samples = 2").replace("max_tokens = 200", "max_tokens = 64")
    text, n = re.subn(r"(?m)^profiles = .*\n", "", text)
    assert n == 1, "the embedded pool's TOML changed: no single 'profiles =' line"
    text, n = re.subn(r'(?m)^(experts = \[.*)\]$', r'\1, "smollm2-short"]', text)
    assert n == 1, "the embedded pool's TOML changed: no single 'experts = [...]' line"
    text += (
        '\n[models.smollm2-short]\nbackend = "llamacpp"\nembedded = "smollm2-135m-instruct"\ndequantize = "auto"\n'
        'parallel = 8\nn_ctx = 1024\nextra_args = ["--no-warmup"]\n'
    )
    # every llama.cpp server one thread: what a num_cpus=1 node gives it, and the local run the same
    text = text.replace('backend = "llamacpp"\n', 'backend = "llamacpp"\nn_threads = 1\n')
    return text + cluster_table(address)


def standin_text(args, address: str | None) -> str:
    """--experts stand-in servers, each its own process and server (distinct served names)."""
    models = [f"m{i + 1}" for i in range(args.experts)]
    lines = pool_toml(models, args.start_delay, args.decode_s, STANDIN_TAG, k=args.k, seed=args.seed, samples=2,
                      request_timeout_s=args.request_timeout, retries=2)
    return "\n".join(lines) + "\n" + cluster_table(address)


def write_config(path: Path, text: str) -> Path:
    from symoe_agents.config import load_config

    path.write_text(text)
    load_config(path)  # fails here, with the config's own message, if it is not valid
    return path


# -- local clusters and their memory -----------------------------------------------------------


class LocalCluster:
    """A head (no lane resource) and ``workers`` worker nodes, each num_cpus=1 and the lane
    resource, in this process (only it can remove their nodes)."""

    def __init__(self, workers: int, scratch: Path):
        self.tmp = tempfile.mkdtemp(prefix="sc", dir="/tmp")  # short: Ray's socket paths must fit
        os.environ["RAY_TMPDIR"] = self.tmp
        os.makedirs(self.tmp + "/ray", exist_ok=True)  # Ray writes ray_current_cluster there
        from ray.cluster_utils import Cluster

        began = time.monotonic()
        self.c = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, include_dashboard=False, object_store_memory=80 * MiB, temp_dir=self.tmp))
        try:
            for _ in range(workers):
                self.c.add_node(num_cpus=1, resources={"symoe": 1}, object_store_memory=80 * MiB)
            self.c.wait_for_nodes()
        except BaseException:
            self.shutdown()
            raise
        self.start_s = time.monotonic() - began
        self.address = self.c.address
        # stable labels, also for a node removed later
        self.nodes = [("head", self.c.head_node)] + [(f"worker{i + 1}", n) for i, n in enumerate(self.c.worker_nodes)]
        self.removed: set[str] = set()
        self.memory = Memory(self)

    def label_of(self, short_id: str) -> str:
        return next((label for label, n in self.nodes if n.node_id.startswith(short_id)), short_id)

    def node_of(self, short_id: str):
        return next((n for _, n in self.nodes if n.node_id.startswith(short_id)), None)

    def remove(self, node) -> None:
        self.c.remove_node(node, allow_graceful=False)
        self.removed.add(node.node_id)

    def shutdown(self, keep_logs: bool = False) -> None:
        """Every node's processes stopped; the cluster's temporary folder (Ray's session logs)
        removed unless ``keep_logs``."""
        c = getattr(self, "c", None)
        if c is not None:
            with contextlib.suppress(Exception):
                c.shutdown()
            self.c = None
        os.environ.pop("RAY_TMPDIR", None)
        if not keep_logs:
            shutil.rmtree(self.tmp, ignore_errors=True)


def node_processes(node) -> list[psutil.Process]:
    """A node's processes: those Ray started for it, and all their descendants."""
    out: dict[int, psutil.Process] = {}
    for infos in node.all_processes.values():
        for info in infos:
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(info.process.pid)
                out[p.pid] = p
                for c in p.children(recursive=True):
                    out[c.pid] = c
    return list(out.values())


def category(p: psutil.Process) -> str:
    """ray (Ray's daemons: gcs, raylet, agents, monitors), workers (Ray's other worker processes),
    host (the DeviceHost actor), servers (model servers, launchers and watchdogs)."""
    try:
        argv = p.cmdline()
    except psutil.Error:
        return "gone"
    cmd = " ".join(argv)
    if argv and os.path.basename(argv[0]) in ("raylet", "gcs_server"):
        return "ray"
    if "llama-server" in cmd or "swap_server.py" in cmd or "launcher.py" in cmd or "watchdog.py" in cmd:
        return "servers"
    if cmd.startswith("ray::DeviceHost"):
        return "host"
    if cmd.startswith("ray::") and not cmd.startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent")) or "default_worker.py" in cmd:
        return "workers"  # Ray's worker processes: idle ones, and those that ran a task (symoe's node_report)
    return "ray"


@dataclass
class NodeMemory:
    procs: int = 0
    rss: dict[str, float] = field(default_factory=dict)  # peak MiB by category
    pss: dict[str, float] = field(default_factory=dict)
    idle_rss: float = 0.0  # Ray's own, right after the cluster started


class Memory:
    """Peak memory by node and category over the cluster's runs, sampled by ``sample``."""

    def __init__(self, cluster: LocalCluster):
        self.cluster = cluster
        self.by_node = {label: NodeMemory() for label, _ in cluster.nodes}
        self.sample(idle=True)

    def sample(self, idle: bool = False) -> None:
        for label, node in self.cluster.nodes:
            if node.node_id in self.cluster.removed:
                continue
            sums: dict[str, list[float]] = {}
            n = 0
            for p in node_processes(node):
                cat = category(p)
                try:
                    full = p.memory_full_info()
                except psutil.Error:
                    continue
                s = sums.setdefault(cat, [0.0, 0.0])
                s[0] += full.rss / MiB
                s[1] += full.pss / MiB
                n += cat == "ray"
            m = self.by_node[label]
            m.procs = max(m.procs, n)
            for cat, (rss, pss) in sums.items():
                m.rss[cat] = max(m.rss.get(cat, 0.0), rss)
                m.pss[cat] = max(m.pss.get(cat, 0.0), pss)
            if idle:
                m.idle_rss = sums.get("ray", [0.0])[0]


# -- one symoe solve --------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    nodes: int  # 0: no [cluster], this machine
    rc: int | None = None
    wall_s: float = 0.0  # the process, start to exit (Python start, joining the cluster, the run, leaving)
    run_s: float = 0.0  # run_start to run_end in its events
    loads: int = 0
    calls: int = 0
    group_s: float = 0.0  # the sum of group durations
    expert_s: float = 0.0  # first expert group_start to last expert group_end
    records: int = 0
    with_errors: int = 0
    failed_requests: int = 0
    server_pids: list[int] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    summary: str = ""
    driver_rss: float = 0.0  # peak MiB, the symoe process alone
    stderr_tail: str = ""
    timed_out: bool = False
    extra: dict = field(default_factory=dict)


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tree_stamp() -> tuple:
    """symoe's sources as (path, mtime, size): a run during which they change ran a mixed tree."""
    return tuple(sorted((str(f), f.stat().st_mtime_ns, f.stat().st_size)
                        for d in ("symoe_agents", "servers") for f in (ROOT / d).rglob("*.py")))  # fmt: skip


def sample_memory(pid: int, run: Run, cluster: LocalCluster | None, stop: threading.Event) -> None:
    """Every second until ``stop``: the driver's RSS (its own process), and its cluster's nodes."""
    try:
        me = psutil.Process(pid)
    except psutil.Error:
        return
    while not stop.wait(1.0):
        with contextlib.suppress(psutil.Error):
            run.driver_rss = max(run.driver_rss, me.memory_info().rss / MiB)
        if cluster is not None:
            with contextlib.suppress(Exception):  # a node removed meanwhile
                cluster.memory.sample()


def solve(name: str, qfile: Path, config: Path, folder: Path, nodes: int, timeout: float,
          cluster: LocalCluster | None = None, watch=None) -> Run:  # fmt: skip
    """``symoe solve`` as a subprocess; ``watch(new_events, run)`` is called as its events file grows."""
    out, events, log = folder / f"{name}.answers.jsonl", folder / f"{name}.events.jsonl", folder / f"{name}.stderr"
    for p in (out, events, Path(str(out.with_suffix("")) + ".cache.sqlite")):
        p.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "symoe_agents.cli", "solve", str(qfile), "-o", str(out), "--events", str(events), "--config", str(config)]
    run = Run(name, nodes)
    stamp = tree_stamp()
    say(f"{name}: symoe solve on {'this machine' if nodes == 0 else f'{nodes} worker node(s)'} ...")
    began, began_epoch = time.monotonic(), time.time()
    with open(log, "w") as err, open(folder / f"{name}.stdout", "w") as stdout_file:
        proc = subprocess.Popen(cmd, stdout=stdout_file, stderr=err, cwd=ROOT, start_new_session=True)
        stop = threading.Event()
        sampler = threading.Thread(target=sample_memory, args=(proc.pid, run, cluster, stop), daemon=True)
        sampler.start()
        try:
            offset = 0
            while proc.poll() is None:
                if time.monotonic() - began > timeout:
                    run.timed_out = True
                    break
                if watch is not None and events.exists():
                    with open(events, "rb") as f:
                        f.seek(offset)
                        chunk = f.read()
                    complete = chunk[: chunk.rfind(b"\n") + 1]
                    offset += len(complete)
                    new = [json.loads(line) for line in complete.decode().splitlines() if line.strip()]
                    if new:
                        watch(new, run)
                time.sleep(0.05)
        finally:
            run.wall_s = time.monotonic() - began
            run.extra["ended_epoch"] = time.time()
            if proc.poll() is None:  # timed out, or this script is interrupted: symoe stops its servers on SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            stop.set()
            sampler.join()
    run.rc = proc.returncode
    if tree_stamp() != stamp:
        run.extra["tree_changed"] = True
        say(f"{name}: WARNING: symoe's sources changed while it ran")
    run.stderr_tail = log.read_text(errors="replace")[-3000:]
    stdout = (folder / f"{name}.stdout").read_text(errors="replace")
    m = re.search(r"model loads: .*", stdout + run.stderr_tail)
    run.summary = m.group(0).strip() if m else ""
    run.events = ev = read_events(events)
    kinds = lambda k: [e for e in ev if e["kind"] == k]  # noqa: E731
    starts, ends = kinds("run_start"), kinds("run_end")
    if starts and ends:
        run.run_s = ends[-1]["ts"] - starts[0]["ts"]
        run.extra["before_s"] = starts[0]["ts"] - began_epoch  # Python's start, imports, joining the cluster
        run.extra["after_s"] = run.extra["ended_epoch"] - ends[-1]["ts"]  # stopping the hosts, leaving
    run.loads = len(kinds("server_start"))
    run.server_pids = [e["pid"] for e in kinds("server_start") if e.get("pid")]
    group_ends = kinds("group_end")
    run.calls = sum(int(e.get("detail", {}).get("calls", 0)) for e in group_ends)
    run.group_s = sum(e.get("duration_s") or 0 for e in group_ends)
    run.failed_requests = len(kinds("request_failed"))
    xs = [e for e in kinds("group_start") if str(e.get("group", "")).startswith("expert:")]
    xe = [e for e in group_ends if str(e.get("group", "")).startswith("expert:")]
    if xs and xe:
        run.expert_s = max(e["ts"] for e in xe) - min(e["ts"] for e in xs)
    if out.exists():
        recs = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        run.records = len(recs)
        run.with_errors = sum(1 for r in recs if r.get("errors"))
    state = "TIMED OUT" if run.timed_out else f"exit {run.rc}"
    say(f"{name}: {state}, {run.wall_s:.1f} s, {run.records} answers, {run.with_errors} with errors ({run.summary})")
    if run.rc != 0:
        say(f"{name}: stderr ends with:\n{run.stderr_tail}")
    return run


# -- recovery -----------------------------------------------------------------------------


class Killer:
    """Watches a run's events: the first expert group on a worker node whose server becomes
    ready gets its node removed ``after`` seconds after that server_ready (by the event's
    time stamp: the requests are then in flight)."""

    def __init__(self, cluster: LocalCluster, after: float):
        self.cluster = cluster
        self.after = after
        self.started: dict[tuple[str, str], str] = {}  # (node, model) -> group, for expert groups under way
        self.target: tuple[str, str, str] | None = None  # node, model, group
        self.ready_ts: float | None = None
        self.killed_at: float | None = None  # epoch, as the events' ts
        self.kill_s: float = 0.0  # how long remove_node took

    def __call__(self, new: list[dict], run: Run) -> None:
        for e in new:
            node, model, group = e.get("node"), e.get("model"), str(e.get("group", ""))
            if e["kind"] == "group_start" and group.startswith("expert:"):
                self.started[(node, model)] = group
            elif e["kind"] == "group_end":
                self.started.pop((node, model), None)
            elif e["kind"] == "server_ready" and self.target is None and (node, model) in self.started:
                self.target = (node, model, self.started[(node, model)])
                self.ready_ts = e["ts"]
        if self.target is not None and self.killed_at is None:
            time.sleep(max(0.0, self.ready_ts + self.after - time.time()))
            node = self.cluster.node_of(self.target[0])
            if node is None:
                return
            self.killed_at = time.time()
            began = time.monotonic()
            self.cluster.remove(node)
            self.kill_s = time.monotonic() - began
            say(f"removed {self.cluster.label_of(self.target[0])} ({self.target[0]}) during {self.target[2]}, "
                f"{self.killed_at - self.ready_ts:.2f} s after its server was ready")  # fmt: skip


def recovery_lines(run: Run, killer: Killer, cluster: LocalCluster) -> list[str]:
    ev = run.events
    if killer.killed_at is None:
        return ["no node was removed: no expert group's server became ready on a worker node (see the events)"]
    k = killer.killed_at
    node, model, group = killer.target
    label = lambda n: cluster.label_of(n or "")  # noqa: E731
    lost = [e for e in ev if e["kind"] == "node_lost"]
    starts = {e["group"]: e for e in ev if e["kind"] == "group_start"}
    ends = {e["group"]: e for e in ev if e["kind"] == "group_end"}
    resent = [e for e in ev if e["kind"] == "group_moved"]
    # moved: the lost node's groups that ended elsewhere (requests in flight or not)
    moved = [g for g, e in ends.items() if starts.get(g, {}).get("node") == node and e.get("node") != node]
    out = [f"removed node {label(node)} ({node}) {k - killer.ready_ts:.2f} s after {group}'s server was ready there, "
           f"its requests in flight (remove_node(allow_graceful=False) took {killer.kill_s:.2f} s)", ""]  # fmt: skip
    out.append("events from the kill on (s after the kill):\n")
    out.append("| s | event | node | group / model | detail |")
    out.append("| ---: | --- | --- | --- | --- |")
    for e in ev:
        if e["ts"] < k - 0.5 or e["kind"] in ("server_released", "routing", "progress"):
            continue
        d = e.get("detail") or {}
        if e["kind"] == "node_lost":
            detail = d.get("reason", "")[:110]
        elif e["kind"] == "group_moved":
            detail = f"{e.get('requests')} unanswered requests, {d.get('moved_from')} -> {d.get('moved_to')}"
        elif e["kind"] == "requests_resent":
            detail = f"{e.get('requests')} requests"
        elif e["kind"] == "group_end":
            detail = f"{e.get('duration_s')} s, failed {d.get('failed')}, resent {d.get('resent')}"
        elif e["kind"] == "server_stop":
            detail = f"uptime {d.get('uptime_s')} s" + (f", {d.get('reason')}" if d.get("reason") else "")
        else:
            detail = ""
        out.append(f"| {e['ts'] - k:+.2f} | {e['kind']} | {label(e.get('node'))} | {e.get('group') or e.get('model') or ''} | {detail} |")
    out.append("")
    if not lost:
        out.append("NO node_lost event: the driver never wrote the node off")
    else:
        out.append(f"kill -> node_lost: {lost[0]['ts'] - k:.2f} s ({lost[0].get('detail', {}).get('reason', '')[:60]}...)")
    for g in moved:
        rs = [e for e in resent if e.get("group") == g]
        how = (f"moved with {rs[0].get('requests')} unanswered requests to {rs[0]['detail'].get('moved_to')} "
               f"{rs[0]['ts'] - lost[0]['ts']:.2f} s after node_lost" if rs and lost else "no group_moved event")  # fmt: skip
        since = f"{ends[g]['ts'] - lost[0]['ts']:.2f} s after node_lost" if lost else ""
        out.append(f"moved group {g}: {how}; its group_end on {label(ends[g].get('node'))} {since} "
                   f"({ends[g].get('duration_s')} s in all, failed {ends[g].get('detail', {}).get('failed')})")  # fmt: skip
    if group not in moved:
        out.append(f"{group} did not move (it ended on {label(ends.get(group, {}).get('node'))}): the kill came after its last answer?")
    base = run.extra.get("baseline_wall", float("nan"))
    out.append(f"questions {run.extra.get('questions')}: answer records {run.records}, records with errors {run.with_errors}, "
               f"request_failed events {run.failed_requests}, exit {run.rc}; wall {run.wall_s:.1f} s "
               f"(the same batch on 3 nodes without a kill: {base:.1f} s); model loads {run.loads}")  # fmt: skip
    return out


# -- leftovers --------------------------------------------------------------------------------


def leftovers(runs: list[Run], temp_dirs: list[str]) -> list[str]:
    """Model servers this benchmark started, and processes of its clusters, still alive."""
    ours = {pid for r in runs for pid in r.server_pids}
    alive_ours, others, ray_left = [], 0, []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        if "llama-server" in cmd or "swap_server.py" in cmd:
            if p.pid in ours or STANDIN_TAG in cmd:
                alive_ours.append(f"{p.pid} {cmd[:100]}")
            else:
                others += 1
        elif any(t in cmd for t in temp_dirs):
            ray_left.append(f"{p.pid} {cmd[:100]}")
    lines = [f"model servers started by this benchmark: {len(ours)}; still alive: {len(alive_ours)}"]
    lines += [f"  LEFT: {x}" for x in alive_ours]
    lines.append(f"processes of this benchmark's Ray clusters still alive: {len(ray_left)}")
    lines += [f"  LEFT: {x}" for x in ray_left]
    if others:
        lines.append(f"(llama-server/swap_server processes on this machine not started by this benchmark: {others})")
    return lines


# -- the parts --------------------------------------------------------------------------------


def fmt_run(r: Run) -> str:
    state = "" if r.rc == 0 and not r.timed_out else (" TIMED OUT" if r.timed_out else f" exit {r.rc}")
    where = "this machine (no [cluster])" if r.nodes == 0 else f"{r.nodes} worker node(s)"
    return (f"| {r.name} | {where} | {r.wall_s:.1f} | {r.run_s:.1f} | {r.expert_s:.1f} | {r.loads} | {r.calls} | "
            f"{r.records} | {r.with_errors}{state} |")  # fmt: skip


RUN_HEADER = [
    "| run | where | process wall s | run wall s | expert stage s | model loads | calls | answers | with errors |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
]


def first_start(run: Run) -> float:
    """Seconds from run_start to the first server_start (a cluster run starts its first DeviceHost first)."""
    t0 = next((e["ts"] for e in run.events if e["kind"] == "run_start"), None)
    t1 = next((e["ts"] for e in run.events if e["kind"] == "server_start"), None)
    return t1 - t0 if t0 is not None and t1 is not None else float("nan")


def host_delays(run: Run) -> list[float]:
    """Per node, its first group_start to its first server_start: mostly starting its DeviceHost actor."""
    first_group: dict[str, float] = {}
    out = []
    for e in run.events:
        node = e.get("node")
        if e["kind"] == "group_start" and node not in first_group:
            first_group[node] = e["ts"]
        elif e["kind"] == "server_start" and node in first_group and first_group[node] is not None:
            out.append(e["ts"] - first_group[node])
            first_group[node] = None  # counted
    return out


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def main() -> None:
    args = parse_args()
    parts = set(args.parts.split(","))
    if not parts <= set("abcde"):
        raise SystemExit(f"--parts: letters among a,b,c,d,e, not {args.parts!r}")
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            folder = args.keep
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="scaleout-")))
        try:
            bench(args, parts, folder)
        except KeyboardInterrupt:
            raise SystemExit(130) from None


LOAD_AT_START = " ".join(f"{x:.2f}" for x in os.getloadavg())


def interrupted(*_) -> None:
    raise KeyboardInterrupt


def bench(args, parts: set[str], folder: Path) -> None:
    signal.signal(signal.SIGTERM, interrupted)  # every finally runs: clusters shut down, solves stopped
    real_q = write_questions(folder / "real.questions.jsonl", questions(args.questions, args.seed))
    std_q = write_questions(folder / "standin.questions.jsonl", questions(args.standin_questions, args.seed))
    need_real = {1} if "a" in parts or "d" in parts else set()
    if "a" in parts:
        need_real.add(3)
    need_std = set()
    if "b" in parts:
        need_std |= {1, 3}
    if "d" in parts:
        need_std |= {0, 1}
    if "c" in parts:
        need_std.add(3)  # its wall time without a kill, beside the recovery run
    if parts == {"e"}:
        need_std |= {1, 3}
    runs: dict[tuple[str, int], Run] = {}
    clusters: dict[int, LocalCluster] = {}
    temp_dirs: list[str] = []
    recovery: tuple[Run, Killer, LocalCluster] | None = None

    def do(kind: str, nodes: int, cluster: LocalCluster | None) -> None:
        address = cluster.address if cluster else None
        if kind == "real":
            cfg, q = write_config(folder / f"real-{nodes}.toml", real_pool_text(address)), real_q
        else:
            cfg, q = write_config(folder / f"standin-{nodes}.toml", standin_text(args, address)), std_q
        runs[(kind, nodes)] = solve(f"{kind}-{nodes}{'node' if nodes == 1 else 'nodes'}" if nodes else f"{kind}-local",
                                    q, cfg, folder, nodes, args.timeout, cluster)  # fmt: skip

    try:
        # no cluster first, then 1 worker node, then 3 (the recovery run last: it removes a node)
        if "d" in parts:
            do("real", 0, None)
        if 0 in need_std:
            do("standin", 0, None)
        for size in (1, 3):
            wanted = [k for k in ("real", "standin") if size in (need_real if k == "real" else need_std)]
            if not wanted and not (size == 3 and "c" in parts):
                continue
            say(f"starting a local Ray cluster: a head and {size} worker node(s)")
            cluster = clusters[size] = LocalCluster(size, folder)
            temp_dirs.append(cluster.tmp)
            try:
                say(f"cluster up in {cluster.start_s:.1f} s at {cluster.address} ({cluster.tmp})")
                for kind in wanted:
                    do(kind, size, cluster)
                if size == 3 and "c" in parts:
                    cfg = write_config(folder / "recovery.toml", standin_text(args, cluster.address))
                    killer = Killer(cluster, args.kill_after)
                    run = solve("recovery-3nodes", std_q, cfg, folder, 3, args.timeout, cluster, watch=killer)
                    run.extra["questions"] = args.standin_questions
                    base = runs.get(("standin", 3))
                    run.extra["baseline_wall"] = base.wall_s if base else float("nan")
                    recovery = (run, killer, cluster)
            finally:
                cluster.memory.sample()
                began = time.monotonic()
                cluster.shutdown(keep_logs=args.keep is not None)
                say(f"cluster of {size} worker node(s) shut down in {time.monotonic() - began:.1f} s")
    finally:
        for cluster in clusters.values():
            cluster.shutdown(keep_logs=args.keep is not None)
        report(args, parts, runs, clusters, recovery, temp_dirs)


def report(args, parts, runs, clusters, recovery, temp_dirs) -> None:
    time.sleep(1.0)  # servers whose node went down die by PDEATHSIG: give them a moment
    cores = os.cpu_count()
    print("command: " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, ROOT), *sys.argv]))
    print(f"\nthis machine: {cores} cores (os.cpu_count()), {len(os.sched_getaffinity(0))} usable; every node of the local "
          "Ray clusters runs on them: the nodes SHARE these cores (each worker node offers num_cpus=1, so each llama.cpp "
          "server gets 1 thread). 'process wall' is symoe solve from start to exit (Python start, joining the cluster, "
          "the run, leaving); 'run wall' is its run_start to run_end events; 'expert stage' its first expert group_start "
          "to its last expert group_end.")  # fmt: skip
    r = lambda k, n: runs.get((k, n))  # noqa: E731

    if "a" in parts:
        print(f"\n## (a) real llama.cpp servers, {args.questions} questions: 1 worker node vs 3\n")
        print("pool: the embedded pool, small_pool_toml-sized (2 skill samples, 64 tokens), no profiles (uniform routing), "
              "experts smollm2, smollm2-focused (the same server), gemma3, smollm2-short: 3 servers; n_threads = 1\n")  # fmt: skip
        print("\n".join(RUN_HEADER))
        for n in (1, 3):
            if r("real", n):
                print(fmt_run(r("real", n)))
        if r("real", 1) and r("real", 3):
            a, b = r("real", 1), r("real", 3)
            print(f"\n3 nodes vs 1: {ratio(a.wall_s, b.wall_s):.2f}x faster (process wall), {ratio(a.run_s, b.run_s):.2f}x (run wall), "
                  f"{ratio(a.expert_s, b.expert_s):.2f}x (expert stage) -- with {cores} cores under 3 single-thread servers")  # fmt: skip
            print(f"summaries: 1 node: {a.summary} | 3 nodes: {b.summary}")

    if "b" in parts:
        print(f"\n## (b) stand-in servers, {args.standin_questions} questions: 1 worker node vs 3\n")
        print(f"{args.experts} experts (each its own swap_server process), k={args.k}, 2 skill samples; a start costs "
              f"{args.start_delay:g} s, a completion {args.decode_s:g} s (asyncio.sleep: no CPU)\n")  # fmt: skip
        print("\n".join(RUN_HEADER))
        for n in (1, 3):
            if r("standin", n):
                print(fmt_run(r("standin", n)))
        if r("standin", 1) and r("standin", 3):
            a, b = r("standin", 1), r("standin", 3)
            sp = ratio(a.wall_s, b.wall_s)
            print(f"\nspeed-up on 3 nodes: {sp:.2f}x (process wall; goal >= 2.5x: {'met' if sp >= 2.5 else 'NOT met'}), "
                  f"{ratio(a.run_s, b.run_s):.2f}x (run wall), {ratio(a.expert_s, b.expert_s):.2f}x (expert stage alone)")  # fmt: skip
            serial = b.run_s - b.expert_s
            print(f"on 3 nodes the run's stages before and after the experts (skills, aggregation) take {serial:.1f} s "
                  f"of its {b.run_s:.1f} s, and the process {b.wall_s - b.run_s:.1f} s more outside the run "
                  f"({b.extra.get('before_s', float('nan')):.1f} s before run_start, {b.extra.get('after_s', float('nan')):.1f} s after run_end; "
                  f"on 1 node {a.extra.get('before_s', float('nan')):.1f} and {a.extra.get('after_s', float('nan')):.1f})")  # fmt: skip
            print("each node's first group_start -> its first server_start (the DeviceHost actor starts then): "
                  f"1 node {', '.join(f'{x:.2f}' for x in host_delays(a))} s; 3 nodes {', '.join(f'{x:.2f}' for x in host_delays(b))} s")  # fmt: skip

    if "c" in parts and recovery is not None:
        run, killer, cluster = recovery
        print(f"\n## (c) recovery: a worker node removed mid-group (stand-ins, 3 worker nodes, {args.standin_questions} questions)\n")
        print("\n".join(recovery_lines(run, killer, cluster)))
        print("\n(a lost node's groups move to a live device on a node that has lost none, the one that has taken the fewest moves; symoe's cluster mode runs "
              "one group at a time per device (Turns), so a moved group waits for the group running there, and that "
              "device's own next group waits for the moved one)")  # fmt: skip

    if "d" in parts:
        print("\n## (d) the Ray path's own cost: 1 worker node vs no [cluster] (this machine)\n")
        print("| pool | where | process wall s | run wall s | process start -> run_start s | run_end -> exit s | "
              "run_start -> first server_start s | model loads | calls | group s/call |")  # fmt: skip
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for kind in ("real", "standin"):
            for n in (0, 1):
                x = r(kind, n)
                if x:
                    print(f"| {kind} | {'local' if n == 0 else '1 node'} | {x.wall_s:.1f} | {x.run_s:.1f} | "
                          f"{x.extra.get('before_s', float('nan')):.1f} | {x.extra.get('after_s', float('nan')):.1f} | "
                          f"{first_start(x):.2f} | {x.loads} | {x.calls} | {ratio(x.group_s, x.calls):.3f} |")  # fmt: skip
        print()
        for kind in ("real", "standin"):
            lo, no = r(kind, 0), r(kind, 1)
            if not (lo and no):
                continue
            dw = 100 * (no.wall_s - lo.wall_s) / lo.wall_s if lo.wall_s else float("nan")
            dr = 100 * (no.run_s - lo.run_s) / lo.run_s if lo.run_s else float("nan")
            per = (no.group_s - lo.group_s) / max(no.calls, 1)
            print(f"{kind}: 1 node vs local {dw:+.1f}% process wall, {dr:+.1f}% run wall (goal: under 5%: "
                  f"{'met' if dr < 5 else 'NOT met'} on run wall, {'met' if dw < 5 else 'NOT met'} on process wall); "
                  f"group time {per * 1000:+.1f} ms per call; loads {lo.loads} local, {no.loads} on the node")  # fmt: skip
        print("(the real pool's figures carry the noise of real decoding on shared cores; the stand-ins' timings are fixed. "
              "before run_start: Python's start and imports, joining the cluster and checking its nodes; after run_end: "
              "stopping the hosts and leaving the cluster; "
              "'first server_start' includes starting the node's DeviceHost actor)")  # fmt: skip

    if "e" in parts or clusters:
        print("\n## (e) memory per node (MiB, peak over each cluster's runs, sampled every second)\n")
        print("| cluster | node | Ray daemons | daemons RSS idle | daemons RSS peak | daemons PSS peak | other Ray workers RSS | "
              "DeviceHost actor RSS | model servers (+launcher, watchdog) RSS |")  # fmt: skip
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for size, cluster in clusters.items():
            for label, m in cluster.memory.by_node.items():
                print(f"| {size} worker(s) | {label} | {m.procs} | {m.idle_rss:.0f} | {m.rss.get('ray', 0):.0f} | "
                      f"{m.pss.get('ray', 0):.0f} | {m.rss.get('workers', 0):.0f} | {m.rss.get('host', 0):.0f} | {m.rss.get('servers', 0):.0f} |")  # fmt: skip
        print("\ndriver (the symoe solve process alone), peak RSS MiB:")
        for (kind, n), run in runs.items():
            print(f"  {run.name}: {run.driver_rss:.0f}")
        if recovery:
            print(f"  {recovery[0].name}: {recovery[0].driver_rss:.0f}")

    print("\n## leftovers\n")
    all_runs = list(runs.values()) + ([recovery[0]] if recovery else [])
    print("\n".join(leftovers(all_runs, temp_dirs)))
    changed = [x.name for x in all_runs if x.extra.get("tree_changed")]
    if changed:
        print(f"\nWARNING: symoe's sources (symoe_agents/, servers/) changed while these runs ran: {', '.join(changed)}; "
              "their figures may come from a modified tree")  # fmt: skip
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (at the start: {LOAD_AT_START})")
    bad = [x for x in all_runs if x.rc != 0 or x.timed_out]
    for x in bad:
        print(f"\n{x.name} failed ({'timed out' if x.timed_out else f'exit {x.rc}'}); its stderr ends with:\n{x.stderr_tail}")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="a,b,c,d,e", help="which of a,b,c,d,e to run (see the docstring)")
    ap.add_argument("--questions", type=int, default=4, help="questions for the real pool (a, d)")
    ap.add_argument("--standin-questions", type=int, default=36, help="questions for the stand-ins (b, c, d)")
    ap.add_argument("--experts", type=int, default=16, help="stand-in experts, each its own server")
    ap.add_argument("--k", type=int, default=3, help="experts per question (stand-ins)")
    ap.add_argument("--start-delay", type=float, default=2.0, help="seconds a stand-in takes to start (a model load)")
    ap.add_argument("--decode-s", type=float, default=1.0, help="seconds a stand-in takes per completion")
    ap.add_argument("--kill-after", type=float, default=0.4, help="(c) seconds after the target group's server_ready to remove its node")
    ap.add_argument("--request-timeout", type=float, default=60.0,
                    help="stand-ins' concurrency.request_timeout_s (also how long a silent node's event stream is waited for)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before a symoe solve is stopped")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None,
                    help="write configs, questions, answers, events and logs here, and keep the clusters' Ray logs "
                    "(in /tmp/sc*; default: a temporary folder, and the Ray logs removed)")
    args = ap.parse_args()
    if args.experts < 2 or args.questions < 1 or args.standin_questions < 1:
        ap.error("--experts needs at least 2, --questions and --standin-questions at least 1")
    return args


if __name__ == "__main__":
    main()
