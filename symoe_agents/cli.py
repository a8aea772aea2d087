"""The ``symoe`` command line. ``asyncio.run`` happens here and nowhere else.

Signals: the first Ctrl-C or SIGTERM cancels the run; cancellation unwinds through the
controller and the server manager, which stop every server symoe started; the command
exits 130 (SIGINT) or 143 (SIGTERM). A second signal kills the servers at once and exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import IO, Annotated, Optional

import typer

from .config import Config, embedded_config_text, load_config
from .errors import ConfigError, InputError, ProfileError, PromptError, ServerStartError, SymoeError
from .events import Event, EventLog
from .inputs import read_questions
from .preflight import preflight
from .records import QuestionResult

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Symbolic Mixture-of-Experts: route each question to skill-matched expert LLMs and aggregate their answers.",
)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _TerminalProgress:
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
            self.bar.update(1)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_event(self, e: Event) -> None:
        if e.kind == "server_start":
            _err(f"[symoe] starting server for '{e.model}' on 127.0.0.1:{e.port} (pid {e.pid})")
        elif e.kind == "server_ready":
            _err(f"[symoe] '{e.model}' ready after {e.duration_s:.1f} s")
        elif e.kind == "server_stop":
            _err(f"[symoe] stopped server for '{e.model}'")
        elif e.kind == "server_failed":
            _err(f"[symoe] server for '{e.model}' failed: {e.detail.get('reason', '')}")
        elif e.kind == "group_start" and not self.tty:
            _err(f"[symoe] group {e.group}: {e.requests} requests")
        elif e.kind == "group_end":
            failed = e.detail.get("failed", 0)
            _err(f"[symoe] group {e.group} done in {e.duration_s:.1f} s" + (f", {failed} failed" if failed else ""))


class _Interrupted(Exception):
    def __init__(self, code: int):
        self.code = code


def _run_with_signals(coro_factory, resume_hint: str) -> int:
    """Run the coroutine; turn SIGINT/SIGTERM into cancellation and exit codes 130/143."""
    state = {"signal": None}

    async def main() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_signal(signum: int) -> None:
            if state["signal"] is not None:  # second signal: force
                from symoe_agents.servers import live_servers

                for s in live_servers():
                    s.kill_now()
                os._exit(128 + signum)
            state["signal"] = signum
            _err(f"\n[symoe] {signal.Signals(signum).name} received: stopping servers (again to force)")
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        return await coro_factory()

    try:
        return asyncio.run(main())
    except (asyncio.CancelledError, KeyboardInterrupt):
        signum = state["signal"] or signal.SIGINT
        _err(f"[symoe] interrupted; all servers stopped. {resume_hint}".rstrip())
        return 128 + int(signum)


@app.callback()
def _root() -> None:
    """Symbolic Mixture-of-Experts on local OpenAI-compatible servers."""


@app.command()
def solve(
    input: Annotated[Path, typer.Argument(help="questions: JSONL with 'question' per line, or the upstream JSON array")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="answers JSONL [default: INPUT_STEM.answers.jsonl]")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML config [default: the built-in embedded CPU pool]")] = None,
    k: Annotated[Optional[int], typer.Option("--k", min=1, help="experts per question (overrides the config)")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="routing and sampling seed (overrides the config)")] = None,
    profiles: Annotated[Optional[Path], typer.Option("--profiles", help="profiles directory (overrides the config)")] = None,
    events: Annotated[Optional[Path], typer.Option("--events", help="write lifecycle events as JSONL here")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="infer skills and route, print the schedule, answer nothing")] = False,
    no_profiles: Annotated[bool, typer.Option("--no-profiles", help="ignore profiles: recruit experts uniformly at random")] = False,
) -> None:
    """Solve a question set: infer skills, recruit experts, answer group by group, aggregate."""
    try:
        cfg = load_config(config).with_overrides(k=k, seed=seed, profiles=str(profiles) if profiles else None)
        if no_profiles:
            cfg = cfg.without_profiles()
        questions = read_questions(input)
    except (ConfigError, InputError, ProfileError, PromptError) as exc:
        _err(f"error: {exc}")
        raise typer.Exit(2) from None
    problems = preflight(cfg)
    if problems:
        _err("error: preflight found problems (nothing was started):\n  " + "\n  ".join(map(str, problems)))
        raise typer.Exit(2)
    out_path = output or Path(f"{input.stem}.answers.jsonl")
    code = _run_with_signals(
        lambda: _solve(cfg, questions, out_path, events, dry_run),
        resume_hint=f"Finished answers so far are in {out_path}.",
    )
    raise typer.Exit(code)


async def _solve(cfg: Config, questions, out_path: Path, events_path: Path | None, dry_run: bool) -> int:
    from .api import SymbolicMoE

    log = EventLog(events_path)
    progress = _TerminalProgress(sys.stderr)
    log.listen(progress.on_event)
    _err(f"[symoe] {len(questions)} questions; experts: {', '.join(cfg.roles.experts)}; k={cfg.k}, seed={cfg.seed}")
    out = None
    try:
        async with SymbolicMoE(cfg, events=log, progress=progress, check=False) as moe:  # preflight ran above
            assert moe._controller is not None
            _err(f"[symoe] {moe._controller.routing_note}")
            if dry_run:
                schedule = await moe.plan(questions)
                print(schedule.describe())
                return 0
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(out_path, "w", encoding="utf-8")  # noqa: SIM115

            def write(result: QuestionResult) -> None:
                out.write(json.dumps(result.model_dump(mode="json"), ensure_ascii=False) + "\n")
                out.flush()

            await moe.solve_batch(questions, on_result=write)
            summary = moe.summary
            if moe._controller.alignment_warning:
                _err(f"[symoe] warning: {moe._controller.alignment_warning}")
    except ProfileError as exc:
        _err(f"error: {exc}")
        return 2
    except (ServerStartError, SymoeError) as exc:
        _err(f"error: {exc}")
        return 1
    finally:
        if out:
            out.close()
        log.close()
    assert summary is not None
    _err("\n" + summary.render())
    _err(f"answers: {out_path}" + (f"   events: {events_path}" if events_path else ""))
    return 1 if summary.failed_questions else 0


@app.command("config")
def show_config(
    config: Annotated[Optional[Path], typer.Option("--config", help="validate this file instead of printing the built-in pool")] = None,
) -> None:
    """Print the built-in embedded pool's TOML (a starting point), or validate --config FILE."""
    if config is None:
        print(embedded_config_text(), end="")
        return
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(2) from None
    print(f"{config}: ok")
    for name, m in cfg.models.items():
        roles = [r for r, v in (("skills", cfg.roles.skill_inferencer), ("aggregator", cfg.roles.aggregator)) if v == name]
        if name in cfg.roles.experts:
            roles.insert(0, "expert")
        print(f"  {name:<24} {m.backend:<9} {', '.join(roles) or '-'}")


from .cli_eval import evaluate  # noqa: E402
from .cli_profiles import pick_aggregator, profile  # noqa: E402
from .cli_servers import check, servers_app  # noqa: E402

app.command("check")(check)
app.command("profile")(profile)
app.command("pick-aggregator")(pick_aggregator)
app.command("eval")(evaluate)
app.add_typer(servers_app, name="servers")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
