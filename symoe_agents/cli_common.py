"""What every CLI command shares: messages on stderr, progress, signals, and loading a config.

The commands live in their own modules (cli.py: solve and config; cli_profiles.py,
cli_eval.py, cli_servers.py) and import from here, never from ``cli.py`` or each other;
``cli.py`` registers their commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import typer

from .config import Config, load_config
from . import run_lock
from .errors import ClusterError, ConfigError, OutputError, SymoeError
from .events import Event, EventLog
from .output_paths import check_file_target
from .preflight import preflight
from .tracing_setup import start_exporting, tracing_problems

#: ``--max-cost`` stopped the run: everything answered is kept, the same command resumes
BUDGET_EXIT = 3


def err(msg: str) -> None:
    """A message on stderr. A reader that went away (``symoe solve ... 2>&1 | head``, a
    closed terminal) must not abort a paid batch: stderr then goes to /dev/null."""
    try:
        print(msg, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # EPIPE, EIO from a hung-up terminal, a closed stream
        silence(sys.stderr)


def silence(stream: IO[str]) -> None:
    """Point ``stream``'s descriptor at /dev/null, so that later writes (and Python's
    flush at exit, which would otherwise turn the exit status into 120) succeed unseen."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


class TerminalProgress:
    """Per-group progress: a tqdm bar on a terminal, start/end lines otherwise (logs, CI)."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.tty = stream.isatty()
        self.bar = None

    def start(self, group: str, total: int) -> None:
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=group, file=self.stream, unit="req", leave=True, dynamic_ncols=True)

    def advance(self) -> None:
        if self.bar is not None:
            try:
                self.bar.update(1)
            except (OSError, ValueError):  # the terminal went away: no bar, the run goes on
                self.bar, self.tty = None, False
                silence(self.stream)

    def finish(self) -> None:
        bar, self.bar = self.bar, None
        if bar is not None:
            with contextlib.suppress(OSError, ValueError):
                bar.close()

    def on_event(self, e: Event) -> None:
        if e.kind == "server_start":
            where = f"node {e.node}'s 127.0.0.1" if e.node else "127.0.0.1"
            err(f"[symoe] starting server for '{e.model}' on {where}:{e.port} (pid {e.pid})")
        elif e.kind == "node_lost":
            err(f"[symoe] node {e.node} lost ({e.detail.get('reason', '')}); its groups move to a live node")
        elif e.kind == "server_ready":
            err(f"[symoe] '{e.model}' ready after {e.duration_s:.1f} s")
        elif e.kind == "server_stop":
            err(f"[symoe] stopped server for '{e.model}'")
        elif e.kind == "server_failed":
            err(f"[symoe] server for '{e.model}' failed: {e.detail.get('reason', '')}")
        elif e.kind == "group_start" and not self.tty:
            err(f"[symoe] group {e.group}: {e.requests} requests")
        elif e.kind == "group_moved":
            err(f"[symoe] group {e.group} moves to {e.detail.get('moved_to')} with its {e.requests} unanswered requests")
        elif e.kind == "group_end":
            failed = e.detail.get("failed", 0)
            err(f"[symoe] group {e.group} done in {e.duration_s:.1f} s" + (f", {failed} failed" if failed else ""))


@contextlib.contextmanager
def logged(events_path: Path | None) -> Iterator[tuple[EventLog, TerminalProgress]]:
    """The run's lifecycle events (also appended to ``events_path`` if given), shown as
    progress on stderr; the file is closed however the run ends."""
    log = EventLog(events_path)
    progress = TerminalProgress(sys.stderr)
    log.listen(progress.on_event)
    try:
        yield log, progress
    finally:
        log.close()
        if log.write_error:
            err(f"[symoe] warning: the events file {events_path} could not be written: {log.write_error}")


def run_with_signals(coro_factory, resume_hint: str | Callable[[], str] = "") -> int:
    """Run the coroutine; turn SIGINT/SIGTERM/SIGHUP into cancellation and exit codes
    130/143/129 (a closed terminal or an ssh session that drops is a stop like any other)."""
    state = {"signal": None}

    async def main() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_signal(signum: int) -> None:
            if state["signal"] is not None and signum != signal.SIGINT:
                return  # a hang-up arrives twice (shell and kernel), a supervisor may repeat SIGTERM: one stop is enough
            if state["signal"] is not None:  # a second Ctrl-C: force
                from symoe_agents.servers import live_servers

                for s in live_servers():
                    s.kill_now()
                os._exit(128 + signum)
            state["signal"] = signum
            err(f"\n[symoe] {signal.Signals(signum).name} received: stopping servers (Ctrl-C again to force)")
            # one stop is under way: a repeated hang-up or SIGTERM is ignored from now until
            # exit, also after the loop closes (which would put back the default: be killed)
            for quiet in (signal.SIGTERM, signal.SIGHUP):
                if loop.remove_signal_handler(quiet):
                    signal.signal(quiet, signal.SIG_IGN)
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            if sig == signal.SIGHUP and signal.getsignal(sig) is signal.SIG_IGN:
                continue  # started under nohup: a closed terminal must not stop the run
            loop.add_signal_handler(sig, on_signal, sig)
        return await coro_factory()

    try:
        return asyncio.run(main())
    except (asyncio.CancelledError, KeyboardInterrupt):
        signum = state["signal"] or signal.SIGINT
        hint = resume_hint() if callable(resume_hint) else resume_hint
        err(f"[symoe] interrupted; all servers stopped. {hint}".rstrip())
        return 128 + int(signum)


T = TypeVar("T")


def load_config_or_exit(config: Path | None):
    try:
        return load_config(config)
    except ConfigError as exc:
        err(f"error: {exc}")
        raise typer.Exit(2) from None


def lock_or_exit(held: contextlib.ExitStack, output: Path, what: str) -> None:
    """Hold the one-run lock on ``output`` for as long as ``held``; exit 2 when another run has it."""
    try:
        held.enter_context(run_lock.exclusive(output, what))
    except OutputError as exc:
        err(f"error: {exc}")
        raise typer.Exit(2) from None


def load_checked(config: Path | None):
    """The config, preflighted; exits 2 with the problems otherwise."""
    cfg = load_config_or_exit(config)
    preflight_or_exit(cfg)
    return cfg


def preflight_or_exit(cfg: Config) -> None:
    """Exit 2 with what would stop a run; then start the trace exporter, when asked for
    (the SDK flushes it at exit)."""
    problems = [*map(str, preflight(cfg)), *tracing_problems(cfg)]  # the exporter is the command line's own
    if problems:
        err("error: preflight found problems (nothing was started):\n  " + "\n  ".join(problems))
        raise typer.Exit(2)
    start_exporting(cfg)


async def logged_run(events: Path | None, work: Callable[[EventLog, Any], Awaitable[T]]) -> T | None:
    """``work(log, progress)`` with its events shown as progress (and appended to
    ``events``); a symoe error is printed and gives None."""
    try:
        with logged(events) as (log, progress):
            return await work(log, progress)
    except SymoeError as exc:  # the events file that cannot be opened, too
        err(f"error: {exc}")
        if isinstance(exc, ClusterError):  # the cluster cannot run the config: nothing was started
            raise typer.Exit(2) from None
        return None


def check_metrics_target(path: Path) -> None:
    """``--metrics FILE`` can be written, and prometheus-client is there to write it."""
    from .metrics import available

    if not available():
        raise OutputError(f'--metrics {path}: writing metrics needs prometheus-client: pip install "symoe-agents[telemetry]"')
    check_file_target(path, "the metrics file", "--metrics", example="run.prom")


async def write_metrics(metrics: Any, path: Path) -> None:
    """The run's metrics to ``path`` (off the loop); a failure is said, never raised: the
    run's own outcome stays its exit code."""
    try:
        await asyncio.to_thread(metrics.write, path)
    except OSError as exc:
        err(f"[symoe] warning: could not write the metrics file {path}: {exc.strerror or exc}")
    else:
        err(f"[symoe] metrics: {path}")
