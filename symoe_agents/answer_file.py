"""The answers file as a durable log: one JSON line per finished question, resumable.

Each record is appended, flushed and fsynced the moment its question finishes, so a crash
loses at most the line being written. Opening an existing file resumes it: its questions
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .errors import OutputError
from .records import Question, QuestionResult


@dataclass
class ResumeState:
    """What an existing answers file holds (pure: computed from its bytes)."""

    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    keep_bytes: int = 0  # length of the file's valid prefix
    dropped_partial_line: bool = False
    retried: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # ids that are not in this input


def read_state(data: bytes, source: str, questions: Sequence[Question], retry_failed: bool = False) -> ResumeState:
    state = ResumeState()
    by_id = {q.id: q for q in questions}
    lines = data.split(b"\n")
    complete, last = lines[:-1], lines[-1]  # `last` is b"" when the file ends with a newline
    state.keep_bytes = len(data) - len(last)
    problems: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, raw in enumerate(complete, 1):
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
        q = by_id.get(qid)
        if q is None:
            state.foreign.append(qid)
        elif rec.get("question") != q.question:
            problems.append(f"{source}:{lineno}: id {qid!r} holds a different question than the input's")
            continue
        state.done[qid] = rec
    if last.strip():
        state.dropped_partial_line = True  # the write of this line was cut off by a crash
    if problems:
        raise OutputError(
            "cannot resume from the existing answers file:\n  " + "\n  ".join(problems[:20])
            + "\n  use --fresh to start it over, or -o to write elsewhere"
        )  # fmt: skip
    if retry_failed:
        state.retried = [qid for qid, rec in state.done.items() if rec.get("errors")]
        for qid in state.retried:
            del state.done[qid]
    return state


class AnswerFile:
    """Append-only answers JSONL. ``open`` resumes an existing file unless ``fresh``."""

    def __init__(self, path: Path, state: ResumeState, handle: IO[str]):
        self.path = path
        self.state = state
        self._f = handle
        self.written = 0

    @classmethod
    def open(cls, path: Path, questions: Sequence[Question], fresh: bool = False, retry_failed: bool = False) -> "AnswerFile":
        path.parent.mkdir(parents=True, exist_ok=True)
        state = ResumeState()
        if path.exists() and not fresh:
            state = read_state(path.read_bytes(), str(path), questions, retry_failed)
            if state.retried:
                _rewrite(path, list(state.done.values()))
            elif state.dropped_partial_line:
                with open(path, "r+b") as f:
                    f.truncate(state.keep_bytes)
                    os.fsync(f.fileno())
        handle = open(path, "w" if fresh else "a", encoding="utf-8")  # noqa: SIM115
        _fsync_dir(path)
        return cls(path, state, handle)

    def pending(self, questions: Sequence[Question]) -> list[Question]:
        """The questions this file does not hold yet, in input order."""
        return [q for q in questions if q.id not in self.state.done]

    def append(self, result: QuestionResult) -> None:
        self._f.write(json.dumps(result.model_dump(mode="json"), ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.written += 1

    @property
    def total(self) -> int:
        return len(self.state.done) + self.written

    def close(self) -> None:
        self._f.close()


def _rewrite(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace the file's content atomically: a crash leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
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
