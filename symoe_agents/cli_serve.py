"""``symoe serve``: the ensemble as one OpenAI-compatible model over HTTP.

The pool is preflighted before the port opens (so ``/health`` answers only once it has
passed). The first SIGTERM, SIGINT or SIGHUP shuts down gracefully: queued requests fail
at once with 503, the window in progress has ``serve.shutdown_grace_s`` to finish (then its
unanswered requests fail with 503), the HTTP server closes, and every model server stops;
the command then exits 0. A second Ctrl-C kills the servers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import redaction
from .cli_common import err, load_config_or_exit, preflight_or_exit
from .errors import OutputError, SymoeError
from .events import Event, EventLog
from .output_paths import check_distinct, check_events_target, check_file_target


def serve(
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML config (default: the built-in embedded CPU pool)")] = None,
    host: Annotated[str, typer.Option("--host", help="address to listen on; other than loopback only with --api-key-env")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="port to listen on (0: any free port, printed at start)")] = 8000,
    api_key_env: Annotated[Optional[str], typer.Option("--api-key-env", help="environment variable holding the key clients must send as 'Authorization: Bearer KEY'")] = None,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="SQLite answer cache: answers are kept, and a request already answered returns without a model call")] = None,
    events: Annotated[Optional[Path], typer.Option("--events", help="append lifecycle events as JSONL here")] = None,
    window_s: Annotated[Optional[float], typer.Option("--window-s", min=0, help="a window gathers requests this long (serve.window_s)")] = None,
    max_wait_s: Annotated[Optional[float], typer.Option("--max-wait-s", min=0, help="a group waiting this long for its model is served next (serve.max_wait_s)")] = None,
    max_queue: Annotated[Optional[int], typer.Option("--max-queue", min=1, help="requests waiting at most; beyond: 429 (serve.max_queue)")] = None,
    idle_release_s: Annotated[Optional[float], typer.Option("--idle-release-s", min=0.001, help="stop a model server unused this long (serve.idle_release_s)")] = None,
) -> None:
    """Serve the ensemble as an OpenAI-compatible API: models 'symoe' (the configured method),
    'moa', 'self-moa', 'majority', 'top-k', 'single', and every pool model by its own name."""
    cfg = load_config_or_exit(config)
    if cfg.cluster is not None:
        err("error: symoe serve runs its servers on this machine; its config has a [cluster] table. "
            "Use a config without [cluster] for serve (solve, profile and eval run on the cluster)")  # fmt: skip
        raise typer.Exit(2)
    if cfg.cost.max_usd is not None:  # a budget ends a run; a server has no end to stop at
        err("error: cost.max_usd is a budget for one run (solve, eval); symoe serve reports each answer's cost instead. "
            "Remove max_usd from [cost] for serve")  # fmt: skip
        raise typer.Exit(2)
    changes = {"window_s": window_s, "max_wait_s": max_wait_s, "max_queue": max_queue, "idle_release_s": idle_release_s}
    if any(v is not None for v in changes.values()):
        serve_opts = cfg.serve.model_copy(update={k: v for k, v in changes.items() if v is not None})
        cfg = cfg.model_copy(update={"serve": serve_opts})
    key = None
    if api_key_env is not None:
        key = os.environ.get(api_key_env, "")
        if len(key) < 8:
            err(f"error: --api-key-env {api_key_env}: set {api_key_env} to the key clients must send (8 characters or more)")
            raise typer.Exit(2)
        if not (key.isascii() and key.isprintable() and " " not in key):
            err(f"error: --api-key-env {api_key_env}: the key must be printable ASCII without spaces (it travels in an HTTP header)")
            raise typer.Exit(2)
        redaction.remember(key)
        redaction.hide_from_children({api_key_env})
    elif not _loopback(host):
        err(f"error: --host {host} would open the ensemble to other machines without a key; "
            "give --api-key-env VAR (clients then send 'Authorization: Bearer $VAR'), or listen on 127.0.0.1")  # fmt: skip
        raise typer.Exit(2)
    try:
        check_distinct({"--cache": cache, "--events": events, "--config": config})
        if cache is not None:
            check_file_target(cache, "the answer cache", "--cache", example="serve.cache.sqlite")
        check_events_target(events)
    except OutputError as exc:
        err(f"error: {exc}")
        raise typer.Exit(2) from None
    preflight_or_exit(cfg)
    try:
        sock = _bind(host, port)
    except OSError as exc:
        err(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port or --host")
        raise typer.Exit(2) from None
    try:
        code = asyncio.run(_main(cfg, sock, host, key is not None, key, cache, events))
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        code = 130
    raise typer.Exit(code)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say so;
    # without it every keep-alive request waited 40 ms for a delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)  # model servers started later must not hold our port
    return sock


def _say(e: Event) -> None:
    if e.kind == "server_ready":
        err(f"[symoe] '{e.model}' ready after {e.duration_s:.1f} s")
    elif e.kind == "server_stop":
        reason = e.detail.get("reason")
        err(f"[symoe] stopped server for '{e.model}'" + (f" ({reason})" if reason else ""))
    elif e.kind == "server_failed":
        err(f"[symoe] server for '{e.model}' failed: {e.detail.get('reason', '')}")


async def _main(cfg, sock: socket.socket, host: str, keyed: bool, key: str | None, cache_path: Path | None, events_path: Path | None) -> int:
    import uvicorn

    from .cache import AnswerCache
    from .metrics import Metrics, available as metrics_available
    from .serve_app import ServeApp
    from .telemetry import Tracing, tracing_on
    from .serve_windows import WindowScheduler
    from symoe_agents.servers import ServerManager

    try:
        import httpx2 as httpx  # the openai client's transport since openai 3
    except ModuleNotFoundError:
        import httpx  # type: ignore[no-redef]

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # symoe's own handlers: the scheduler stops first
            yield

    loop = asyncio.get_running_loop()
    log = EventLog(events_path, keep=256)  # nothing reads old events in memory: a long-lived server keeps few
    log.listen(_say)
    cache = None
    manager = ServerManager(cfg, log)
    scheduler = None
    tracing = None
    http = httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
    stopping: list[asyncio.Task] = []
    try:
        try:
            cache = AnswerCache(cache_path) if cache_path is not None else None
            tracing = Tracing() if tracing_on() else None  # the exporter preflight started, or none
            metrics = Metrics() if metrics_available() else None
            for listener in (tracing, metrics):
                if listener is not None:
                    log.listen(listener.on_event)
            scheduler = WindowScheduler(cfg, manager, log, cache, tracing=tracing, metrics=metrics)
            app = ServeApp(scheduler, key, http)
        except SymoeError as exc:
            err(f"error: {exc}")
            return 2
        await scheduler.start()
        server = _Server(uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False, timeout_graceful_shutdown=10))

        async def shut(signum: int) -> None:
            err(f"[symoe] {signal.Signals(signum).name} received: finishing the window in progress "
                f"(up to {cfg.serve.shutdown_grace_s:g} s), then stopping every server")  # fmt: skip
            try:
                await scheduler.close()
            finally:
                server.should_exit = True

        def on_signal(signum: int) -> None:
            if stopping:
                if signum == signal.SIGINT:  # a second Ctrl-C: force
                    from symoe_agents.servers import live_servers

                    for s in live_servers():
                        s.kill_now()
                    os._exit(130)
                return
            stopping.append(asyncio.ensure_future(shut(signum)))

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            if sig == signal.SIGHUP and signal.getsignal(sig) is signal.SIG_IGN:
                continue  # under nohup
            loop.add_signal_handler(sig, on_signal, sig)
        where = sock.getsockname()
        shown = f"[{where[0]}]" if ":" in where[0] else where[0]
        err(f"[symoe] serving the ensemble on http://{shown}:{where[1]}/v1 "
            + ("(clients send 'Authorization: Bearer KEY')" if keyed else "(no key: listening on loopback only)"))  # fmt: skip
        await server.serve(sockets=[sock])
        if stopping:
            await asyncio.gather(*stopping, return_exceptions=True)
        return 0
    finally:
        try:
            if scheduler is not None:
                await scheduler.close()
            await http.aclose()
        finally:
            try:
                await manager.aclose()
            finally:
                if tracing is not None:  # after the servers' stop events ended their spans
                    tracing.close()
                if cache is not None:
                    with contextlib.suppress(SymoeError):
                        await cache.aclose()
                log.close()
                err("[symoe] stopped; every model server is down")
