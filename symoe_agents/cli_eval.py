"""``symoe eval``: the method against its baselines, side by side."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli_common import BUDGET_EXIT, TerminalProgress, check_metrics_target, write_metrics, err, load_checked, lock_or_exit, run_with_signals
from .errors import BudgetSpent, CacheError, ClusterError, ConfigError, OutputError, SymoeError
from .methods import METHOD_NAMES
from .metrics import Metrics
from .output_paths import check_folder_target


def evaluate(
    benchmarks: Annotated[list[str], typer.Argument(help="local JSON/JSONL files (upstream format) or mmlu-pro, gpqa, aime24, medmcqa")],
    output: Annotated[Path, typer.Option("-o", "--output", help="report folder")] = Path("eval-report"),
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML config (default: the built-in pool)")] = None,
    profiles: Annotated[Optional[Path], typer.Option("--profiles", help="profiles directory (overrides the config)")] = None,
    methods: Annotated[str, typer.Option("--methods", help=f"comma-separated, from: {', '.join(METHOD_NAMES)}")] = ",".join(METHOD_NAMES),
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="questions per benchmark")] = None,
    category: Annotated[Optional[list[str]], typer.Option("--category", help="keep only this category (repeatable)")] = None,
    k: Annotated[Optional[int], typer.Option("--k", min=1)] = None,
    seed: Annotated[Optional[int], typer.Option("--seed")] = None,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="SQLite answer cache: resume an interrupted evaluation without paying again (methods then share identical calls, so their costs no longer compare)")] = None,
    metrics: Annotated[Optional[Path], typer.Option("--metrics", help="write the evaluation's Prometheus metrics (text format, every method) here when it ends")] = None,
    max_cost: Annotated[Optional[float], typer.Option("--max-cost", help="stop cleanly once all methods' calls cost this many USD (exit 3; with --cache the same command resumes); needs prices in the config")] = None,
) -> None:
    """Run symoe and the paper's baselines on the same questions; write JSON, Markdown and plots."""
    from symoe_agents.eval.benchmarks import load_benchmark
    from symoe_agents.eval.harness import run_eval
    from symoe_agents.eval.report import markdown, write_report

    from .cache import AnswerCache
    from .methods import build_methods
    from .profiles import load_profiles

    try:
        cfg = load_checked(config).with_overrides(k=k, seed=seed, profiles=str(profiles) if profiles else None).with_budget(max_cost)
    except ConfigError as exc:
        err(f"error: {exc}")
        raise typer.Exit(2) from None
    questions = []
    for spec in benchmarks:
        name, qs = load_benchmark(spec, limit, category)
        err(f"[symoe] {name}: {len(qs)} questions")
        questions += qs
    if not questions:
        err("error: no questions selected (check --category and --limit)")
        raise typer.Exit(2)
    accuracy = {}
    if cfg.profiles:
        accuracy = {m: p.validation_accuracy for m, p in load_profiles(cfg.profiles, cfg.roles.experts).items()}
    try:
        chosen = build_methods([m.strip() for m in methods.split(",") if m.strip()], cfg.roles.experts, cfg.k, accuracy)
    except ValueError as exc:
        err(f"error: {exc}")
        raise typer.Exit(2) from None

    try:
        check_folder_target(output, "the report folder", "-o")
        if metrics is not None:
            check_metrics_target(metrics)
    except OutputError as exc:
        err(f"error: {exc}")
        raise typer.Exit(2) from None
    held = contextlib.ExitStack()  # released when the command ends, however it ends
    lock_or_exit(held, output, "the report folder")  # one evaluation per folder: two would write the same files
    try:
        answers = AnswerCache(cache) if cache else None
    except CacheError as exc:
        held.close()
        err(f"error: {exc}")
        raise typer.Exit(2) from None

    counters = Metrics() if metrics is not None else None

    async def go() -> int:
        progress = TerminalProgress(sys.stderr)
        began = time.monotonic()
        try:
            try:
                rows = await run_eval(cfg, questions, chosen, output, progress, on_event=progress.on_event, check=False, cache=answers,
                                      metrics=counters)  # fmt: skip
            finally:
                if answers:
                    await answers.aclose()
                if counters is not None and metrics is not None:
                    await write_metrics(counters, metrics)
        except BudgetSpent as exc:  # --max-cost: a clean stop, its own code; the finished methods' report is written
            err(f"[symoe] {exc}")
            if exc.finished:
                files = write_report(exc.finished, output)
                print(markdown(exc.finished))
                err("[symoe] report of the methods that finished: " + ", ".join(str(p) for p in files.values()))
            err(f"[symoe] stopped. {hint}")
            return BUDGET_EXIT
        except SymoeError as exc:  # a cache stuck or a disk full mid-run, a server that cannot start
            err(f"error: {exc}")
            return 2 if isinstance(exc, (CacheError, OutputError, ClusterError)) else 1
        finally:
            note = answers.spill_note() if answers else None
            if note:
                err(f"[symoe] warning: {note}")
        files = write_report(rows, output)
        print(markdown(rows))
        print(f"total wall time {time.monotonic() - began:.1f} s; report: " + ", ".join(str(p) for p in files.values()))
        return 0

    hint = f"Records of finished methods are in {output}." + (f" Answers received are in {cache}: re-run with the same --cache to reuse them." if cache else "")
    with held:
        code = run_with_signals(go, resume_hint=hint)
    raise typer.Exit(code)
