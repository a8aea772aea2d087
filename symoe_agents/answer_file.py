"""The answers file as a durable log: one JSON line per finished question, resumable.

Each record is queued the moment its question finishes and written by the IO thread
(``io_thread``), which fsyncs once per batch of the lines queued meanwhile: the event loop
never waits for the disk, and a crash loses at most the lines not yet written, whose
answers the answer cache still holds (a resumed run rebuilds them without paying again).
Resuming reads the file line by line and keeps only the ids. Opening an existing file resumes it: its questions
count as done and are not asked again, so the file ends with every question exactly once.

What can be found in an existing file, and what happens:
- a last line cut short (a crash while writing): dropped, the file is cut back to the last
  complete line, and the question is asked again;
- a broken line elsewhere, a record without an id, or the same id twice: an error naming
  the line (the file is not ours to guess about); ``--fresh`` starts it over;
- an id whose question text differs from the input's: an error, the file belongs to
  another question set;
- with ``retry_failed``: records that list errors are dropped (the file is rewritten
  atomically) and those questions are asked again; the answer cache still holds every
  call of theirs that succeeded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from . import io_thread
from .errors import OutputError
from .records import Question, QuestionResult


@dataclass
class ResumeState:
    """What an existing answers file holds: ids only, never the records."""

    done: set[str] = field(default_factory=set)
    keep_bytes: int = 0  # length of the file's valid prefix
    dropped_partial_line: bool = False
    retried: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # ids that are not in this input


def read_state(lines: Iterable[bytes] | bytes, source: str, questions: Sequence[Question], retry_failed: bool = False) -> ResumeState:
    """``lines``: the file's lines with their newlines (an open binary file), or its bytes."""
    if isinstance(lines, bytes):
        parts = lines.split(b"\n")  # as a binary file splits: on b"\n" only
        lines = [p + b"\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    state = ResumeState()
    text_of = {q.id: q.question for q in questions}
    problems: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, raw in enumerate(lines, 1):
        if not raw.endswith(b"\n"):
            if raw.strip():
                state.dropped_partial_line = True  # the write of this line was cut off by a crash
            break
        state.keep_bytes += len(raw)
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
            qid = rec["id"] if isinstance(rec, dict) else None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError):
            qid = None
        if not isinstance(qid, str):
            problems.append(f"{source}:{lineno}: not a symoe answer record")
            continue
        if qid in first_line:
            problems.append(f"{source}:{lineno}: id {qid!r} again (first on line {first_line[qid]})")
            continue
        first_line[qid] = lineno
        text = text_of.get(qid)
        if text is None:
            state.foreign.append(qid)
        elif rec.get("question") != text:
            problems.append(f"{source}:{lineno}: id {qid!r} holds a different question than the input's")
            continue
        if retry_failed and rec.get("errors"):
            state.retried.append(qid)
        else:
            state.done.add(qid)
    if problems:
        raise OutputError(
            "cannot resume from the existing answers file:\n  " + "\n  ".join(problems[:20])
            + "\n  use --fresh to start it over, or -o to write elsewhere"
        )  # fmt: skip
    return state


class AnswerFile:
    """Append-only answers JSONL. ``open`` resumes an existing file unless ``fresh``."""

    def __init__(self, path: Path, state: ResumeState, handle: IO[str]):
        self.path = path
        self.state = state
        self._f = handle
        self.written = 0
        self._lines: io_thread.WriteQueue[str] = io_thread.WriteQueue(self._flush)
        self._error: Exception | None = None
        self._reported = False

    @classmethod
    def open(cls, path: Path, questions: Sequence[Question], fresh: bool = False, retry_failed: bool = False) -> "AnswerFile":
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not path.is_file():
            raise OutputError(f"the output {path} is not a regular file (a device or a folder); choose another -o")
        state = ResumeState()
        if path.exists() and not fresh:
            with open(path, "rb") as f:
                state = read_state(f, str(path), questions, retry_failed)
            if state.retried:
                _rewrite(path, set(state.retried), state.keep_bytes)
            elif state.dropped_partial_line:
                with open(path, "r+b") as f:
                    f.truncate(state.keep_bytes)
                    os.fsync(f.fileno())
        # a lone surrogate can only stand inside a JSON string, where backslashreplace writes
        # it as the JSON escape \udXXX: the line stays valid JSON instead of failing the write
        handle = open(path, "w" if fresh else "a", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        _fsync_dir(path)
        return cls(path, state, handle)

    def pending(self, questions: Sequence[Question]) -> list[Question]:
        """The questions this file does not hold yet, in input order."""
        return [q for q in questions if q.id not in self.state.done]

    def append(self, result: QuestionResult) -> None:
        """Queue a record; the IO thread writes and fsyncs it. An earlier write that failed
        (a full disk) is raised here, so the run stops instead of losing records."""
        if self._error is not None:
            self._reported = True
            raise self._failure()
        self._lines.add(json.dumps(result.model_dump(mode="json"), ensure_ascii=False) + "\n")

    def _failure(self) -> OutputError:
        why = getattr(self._error, "strerror", None) or self._error
        return OutputError(f"cannot write the answers file {self.path}: {why}; free space and re-run the same command "
                           "to resume (answers kept in the answer cache are not asked again)")  # fmt: skip

    def _flush(self) -> None:
        lines = self._lines.take()
        if not lines or self._error is not None or self._f.closed:
            return
        try:
            self._f.write("".join(lines))
            self._f.flush()
            os.fsync(self._f.fileno())
        except Exception as exc:  # a full disk, usually; anything else must stop the run the same way, not drop lines
            self._error = exc
            return
        self.written += len(lines)

    @property
    def total(self) -> int:
        return len(self.state.done) + self.written

    def _close_now(self) -> None:
        try:
            self._flush()
        finally:
            try:
                self._f.close()
            except OSError as exc:  # what the failed write left in the buffer fails again
                self._error = self._error or exc
        if self._error is not None and not self._reported:
            self._reported = True
            raise self._failure()

    def close(self) -> None:
        """Write what is queued and close (waits for the IO thread); a write that failed and
        was not yet reported by ``append`` raises ``OutputError`` here."""
        io_thread.wait(self._close_now)

    async def aclose(self) -> None:
        await io_thread.run(self._close_now)


def _rewrite(path: Path, drop: set[str], keep_bytes: int) -> None:
    """Drop the records of ``drop`` from the file's valid prefix, atomically: a crash leaves
    the old file or the new one. Line by line: the file is never held in memory."""
    tmp = path.with_name(path.name + ".tmp")
    with open(path, "rb") as src, open(tmp, "wb") as out:
        left = keep_bytes
        for raw in src:
            if left <= 0:
                break
            left -= len(raw)
            if raw.strip() and json.loads(raw).get("id") in drop:
                continue
            out.write(raw)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    """Make a new or renamed file's directory entry durable too."""
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
