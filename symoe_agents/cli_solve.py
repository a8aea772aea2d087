"""``symoe solve``: a question set through the method, resumable, into an answers file."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from .answer_file import AnswerFile
from .cache import AnswerCache
from .cli_common import BUDGET_EXIT, check_metrics_target, write_metrics, TerminalProgress, err, lock_or_exit, logged, preflight_or_exit, run_with_signals
from .config import Config, load_config
from .errors import BudgetSpent, CacheError, ClusterError, ConfigError, InputError, OutputError, ProfileError, PromptError, SymoeError
from .events import EventLog
from .metrics import Metrics
from .summary import RunSummary
from .inputs import read_questions_skipping, reads_as_stream
from .output_paths import check_distinct, check_events_target, check_file_target
from .run_store import StoreError


def solve(
    input: Annotated[Path, typer.Argument(help="questions: JSONL with 'question' per line, or the upstream JSON array; '-' reads standard input")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="answers JSONL (default: INPUT_STEM.answers.jsonl)")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML config (default: the built-in embedded CPU pool)")] = None,
    k: Annotated[Optional[int], typer.Option("--k", min=1, help="experts per question (overrides the config)")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="routing and sampling seed (overrides the config)")] = None,
    profiles: Annotated[Optional[Path], typer.Option("--profiles", help="profiles directory (overrides the config)")] = None,
    events: Annotated[Optional[Path], typer.Option("--events", help="append lifecycle events as JSONL here")] = None,
    metrics: Annotated[Optional[Path], typer.Option("--metrics", help="write the run's Prometheus metrics (text format) here when it ends")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="infer skills and route, print the schedule, answer nothing")] = False,
    no_profiles: Annotated[bool, typer.Option("--no-profiles", help="ignore profiles: recruit experts uniformly at random")] = False,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="SQLite answer cache (default: OUTPUT with suffix .cache.sqlite)")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="neither reuse nor store model answers (questions in OUTPUT are still skipped)")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="start over: overwrite OUTPUT and request every answer again (new answers replace cached ones)")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="ask again the questions whose record in OUTPUT lists errors")] = False,
    max_cost: Annotated[Optional[float], typer.Option("--max-cost", help="stop cleanly once the run's calls cost this many USD (exit 3; the same command resumes); needs prices in the config")] = None,
    explain: Annotated[bool, typer.Option("--explain", help="each record says why its experts were chosen (config: explain = true)")] = False,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="run the valid records and list the invalid ones in the summary, instead of refusing the file")] = False,
) -> None:
    """Solve a question set: infer skills, recruit experts, answer group by group, aggregate.

    Re-running the same command resumes: questions already in OUTPUT are not asked again and
    answers already in the cache are not requested again."""
    if output is None and reads_as_stream(input):  # "-" or a pipe: no stem to name the answers after
        err(f"error: give -o: {input} is read as a stream, so the answers file cannot be named after it")
        raise typer.Exit(2)
    out_path = output or Path(f"{input.stem}.answers.jsonl")
    try:
        cfg = load_config(config).with_overrides(k=k, seed=seed, profiles=str(profiles) if profiles else None, explain=explain or None).with_budget(max_cost)
        if no_profiles:
            cfg = cfg.without_profiles()
        questions, skipped, warnings = read_questions_skipping(input, skip_invalid)
        for warning in warnings:
            err(f"[symoe] warning: {warning}")
        cache_path = None if no_cache else (cache or out_path.with_suffix(".cache.sqlite"))
        _check_targets(input, out_path, events, cache_path, config, dry_run, metrics)
    except (ConfigError, InputError, ProfileError, PromptError, OutputError) as exc:
        err(f"error: {exc}")
        raise typer.Exit(2) from None
    with contextlib.ExitStack() as held:
        if not dry_run:  # one run per answers file, from before its state is read
            lock_or_exit(held, out_path, "the answers file")
        preflight_or_exit(cfg)
        run = _SolveRun(cfg, questions, skipped, out_path, cache_path, fresh, retry_failed, metrics)
        code = run_with_signals(lambda: run.main(events, dry_run), resume_hint=run.resume_hint)
    raise typer.Exit(code)


def _check_targets(input: Path, out_path: Path, events: Path | None, cache_path: Path | None, config: Path | None, dry_run: bool,
                   metrics: Path | None = None) -> None:  # fmt: skip
    """Every file the run will write can be written, and no two of them (or the input) are
    the same file; ``OutputError`` otherwise, before anything starts."""
    check_distinct({"INPUT": None if str(input) == "-" else input, "-o": out_path, "--events": events, "--cache": cache_path,
                    "--config": config, "--metrics": metrics})  # fmt: skip
    if metrics is not None:
        check_metrics_target(metrics)
    if not dry_run:
        check_file_target(out_path, "the answers file", "-o")
        if cache_path is not None:
            check_file_target(cache_path, "the answer cache", "--cache", example="answers.cache.sqlite")
    check_events_target(events)


class _SolveRun:
    """One ``symoe solve``: the answers file, the cache and the batch, and what to say on a stop."""

    def __init__(self, cfg: Config, questions, skipped: list[str], out_path: Path, cache_path: Path | None, fresh: bool, retry_failed: bool,
                 metrics_path: Path | None = None):  # fmt: skip
        self.cfg = cfg
        self.questions = questions
        self.skipped = skipped
        self.out_path = out_path
        self.cache_path = cache_path
        self.fresh = fresh
        self.retry_failed = retry_failed
        self.answers: AnswerFile | None = None
        self.cache: AnswerCache | None = None
        self.metrics_path = metrics_path
        self.metrics = Metrics() if metrics_path is not None else None

    def resume_hint(self) -> str:
        done = f"{self.answers.total} questions are in {self.out_path}" if self.answers else f"answers so far are in {self.out_path}"
        kept = f", and {self.cache.stored} new answers in the cache {self.cache_path}" if self.cache else ""
        return f"{done}{kept}. Re-run the same command (without --fresh) to resume."

    async def main(self, events_path: Path | None, dry_run: bool) -> int:
        try:
            return await self._main(events_path, dry_run)
        finally:  # what the run did, however it ended
            if self.metrics is not None and self.metrics_path is not None and not dry_run:
                await write_metrics(self.metrics, self.metrics_path)

    async def _main(self, events_path: Path | None, dry_run: bool) -> int:
        try:
            try:
                with logged(events_path) as (log, progress):
                    summary = await self._solve(log, progress, dry_run)
            except BaseException:
                await self._close(quiet=True)  # what is queued is written; the first error stays the one reported
                raise
            await self._close()
        except ClusterError as exc:  # found while joining, before anything started
            err(f"error: {exc}")
            return 2
        except BudgetSpent as exc:  # --max-cost: a clean stop, its own code
            err(f"[symoe] {exc}")
            self._stopped()
            return BUDGET_EXIT
        except (ProfileError, OutputError, CacheError, StoreError) as exc:  # a full disk, a locked cache: the user's to fix
            err(f"error: {exc}")
            self._stopped()
            return 2
        except SymoeError as exc:  # a server that cannot start, among others
            err(f"error: {exc}")
            self._stopped()
            return 1
        if summary is None:  # a dry run, or nothing left to do
            return 0
        assert self.answers is not None
        summary.resumed_questions = len(self.answers.state.done)
        summary.skipped_inputs = self.skipped
        err("\n" + summary.render())
        where = f"answers: {self.out_path} ({self.answers.total} questions)"
        if self.cache is not None:
            where += f"   cache: {self.cache_path}"
        err(where + (f"   events: {events_path}" if events_path else ""))
        return 1 if summary.failed_questions else 0

    def _stopped(self) -> None:
        """After an error mid-run: what was kept, and how to go on."""
        if self.answers is not None:
            err(f"[symoe] stopped. {self.resume_hint()}")

    async def _close(self, quiet: bool = False) -> None:
        """Close the answers file, then the cache, each writing what it has queued; the
        first error is raised once both are closed (``quiet``: printed instead, when the run
        already ends on an error or a signal that must stay its outcome)."""
        failure: SymoeError | None = None
        for closing in (self.answers, self.cache):
            if closing is None:
                continue
            try:
                await asyncio.shield(closing.aclose())
            except SymoeError as exc:
                if quiet:
                    err(f"error: {exc}")
                failure = failure or exc
        note = self.cache.spill_note() if self.cache is not None else None
        if note:
            err(f"[symoe] warning: {note}")
        if failure is not None and not quiet:
            raise failure

    async def _solve(self, log: EventLog, progress: TerminalProgress, dry_run: bool) -> RunSummary | None:
        """The batch itself; None when nothing was solved (dry run, or all answered)."""
        from .api import SymbolicMoE

        cfg = self.cfg
        todo = self.questions
        if not dry_run:
            self.answers = await asyncio.to_thread(AnswerFile.open, self.out_path, self.questions, self.fresh, self.retry_failed)
            todo = self._report_resume()
            if not todo:
                err(f"[symoe] all {len(self.questions)} questions are already answered in {self.out_path}; nothing to do (--fresh starts over)")
                return None
            if self.cache_path is not None:
                self.cache = await asyncio.to_thread(AnswerCache, self.cache_path, not self.fresh)
        err(f"[symoe] {len(todo)} questions; experts: {', '.join(cfg.roles.experts)}; k={cfg.k}, seed={cfg.seed}")
        async with SymbolicMoE(cfg, events=log, progress=progress, check=False, cache=self.cache, scratch_dir=self.out_path.parent,
                               metrics=self.metrics) as moe:  # preflight ran above  # fmt: skip
            err(f"[symoe] {moe.routing_note}")
            if dry_run:
                print((await moe.plan(todo)).describe())
                return None
            assert self.answers is not None
            summary = await moe.solve_each(todo, self.answers.append)
            if moe.alignment_warning:
                err(f"[symoe] warning: {moe.alignment_warning}")
            return summary

    def _report_resume(self) -> list:
        assert self.answers is not None
        st = self.answers.state
        if st.dropped_partial_line:
            err(f"[symoe] {self.out_path}: dropped an incomplete last line (a crash while writing); that question is asked again")
        if st.retried:
            err(f"[symoe] --retry-failed: asking again {len(st.retried)} questions whose records listed errors")
        if st.foreign:
            err(f"[symoe] note: {self.out_path} also holds {len(st.foreign)} answers to questions not in this input (kept)")
        todo = self.answers.pending(self.questions)
        if st.done and todo:
            err(f"[symoe] resuming {self.out_path}: {len(self.questions) - len(todo)} of {len(self.questions)} questions already answered")
        return todo
