"""``symoe profile`` and ``symoe pick-aggregator``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli_common import err, load_checked, lock_or_exit, logged_run, run_with_signals
from .errors import InputError, OutputError
from .inputs import read_questions
from .output_paths import check_distinct, check_events_target, check_folder_target

def profile(
    validation: Annotated[Path, typer.Argument(help="validation questions with gold answers (JSONL or upstream JSON)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="profiles directory to write (re-runs resume in it)")],
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML config (default: the built-in pool)")] = None,
    events: Annotated[Optional[Path], typer.Option("--events", help="write lifecycle events as JSONL here")] = None,
) -> None:
    """Build skill profiles: keywords for every validation question, every pool model answers every one."""
    from .profiler import run_profile

    cfg = load_checked(config)
    try:
        questions = read_questions(validation)
        check_distinct({"VALIDATION": None if str(validation) == "-" else validation, "-o": output, "--events": events, "--config": config})
        check_folder_target(output, "the profiles folder", "-o")
        check_events_target(events)
    except (InputError, OutputError) as exc:
        err(f"error: {exc}")
        raise typer.Exit(2) from None

    async def go() -> int:
        run = await logged_run(events, lambda log, progress: run_profile(cfg, questions, output, log, progress))
        if run is None:
            return 1
        print(f"{'model':<24} {'accuracy':>8} {'skills':>6}  strongest skills")
        for m, p in run.profiles.items():
            top = ", ".join(f"{k} {v:+g}" for k, v in sorted(p.skills.items(), key=lambda kv: -kv[1])[:4])
            acc = f"{p.validation_accuracy:.1%}" if p.validation_accuracy is not None else "-"
            print(f"{m:<24} {acc:>8} {len(p.skills):>6}  {top}")
        print(f"profiles written to {output} ({run.new_answers} new answers, {run.reused_answers} reused)")
        return 0

    with contextlib.ExitStack() as held:
        lock_or_exit(held, output, "the profiles folder")  # one run per profiles folder
        code = run_with_signals(go, resume_hint=f"Answers so far are kept in {output}; run the same command to resume.")
    raise typer.Exit(code)


def pick_aggregator(
    profiles: Annotated[Path, typer.Option("--profiles", help="profiles directory made by `symoe profile`")],
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML config (default: the built-in pool)")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="seed of the synthetic task (default: config seed)")] = None,
    events: Annotated[Optional[Path], typer.Option("--events", help="write lifecycle events as JSONL here")] = None,
) -> None:
    """Choose the aggregator: every candidate aggregates 1 correct + 2 incorrect validation answers."""
    from .profiler import run_pick_aggregator

    cfg = load_checked(config)

    async def go() -> int:
        ranking = await logged_run(events, lambda log, progress: run_pick_aggregator(cfg, profiles, log, progress, seed))
        if ranking is None:
            return 1
        print(f"synthetic aggregation task: {ranking.items} items")
        print(f"{'rank':>4}  {'model':<24} {'aggregation accuracy':>20}")
        for i, (m, s) in enumerate(sorted(ranking.scores.items(), key=lambda kv: -kv[1]), 1):
            print(f"{i:>4}  {m:<24} {s:>20.1%}")
        print(f"chosen aggregator: {ranking.chosen} (recorded in {profiles}/_aggregator.json; "
              f"`symoe solve --profiles {profiles}` uses it)")  # fmt: skip
        return 0

    raise typer.Exit(run_with_signals(go, resume_hint="Run the same command to resume."))
