"""Reading question files: JSONL (one object per line) or the upstream JSON array format.

Every problem is reported with the file and line, all at once, so a user fixes a file in
one pass. Fields: ``question`` (required), ``id``, ``gold_answer``, ``answer_format``
(``multiple_choice`` | ``math`` | ``free``), ``category``; any other fields are carried
through in ``metadata``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import InputError, where
from .formats import AnswerFormat
from .preparation import format_problem
from .records import Question

_KNOWN = {"id", "question", "gold_answer", "answer_format", "category"}
_FORMATS = ", ".join(f.value for f in AnswerFormat)


def _line_of_array_items(text: str) -> list[int]:
    """Line numbers where each top-level object of a JSON array starts (for error messages)."""
    lines, depth, line, in_str, esc = [], 0, 1, False, False
    for ch in text:
        if ch == "\n":
            line += 1
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if ch == "{" and depth == 2:
                lines.append(line)
        elif ch in "]}":
            depth -= 1
    return lines


def _to_question(obj: Any, index: int) -> tuple[Question | None, str | None]:
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    q = obj.get("question")
    if q is None:
        return None, "missing required field 'question'"
    if not isinstance(q, str) or not q.strip():
        return None, "'question' must be a non-empty string"
    qid = obj.get("id", index)
    if not isinstance(qid, (str, int)) or isinstance(qid, bool):
        return None, "'id' must be a string or an integer"
    gold = obj.get("gold_answer")
    if gold is not None and not isinstance(gold, (str, int, float)):
        return None, "'gold_answer' must be a string or a number"
    fmt = obj.get("answer_format")
    if fmt is not None and fmt not in {f.value for f in AnswerFormat}:
        return None, f"unknown answer_format {fmt!r}; use one of: {_FORMATS}"
    category = obj.get("category")
    if category is not None and not isinstance(category, str):
        return None, "'category' must be a string"
    problem = format_problem(q, AnswerFormat(fmt) if fmt is not None else None)
    if problem:
        return None, problem
    # only the fields given: a model's set of given fields is kept per instance, and six
    # names where two were given cost half a kilobyte per question of a large batch
    given: dict[str, Any] = {"id": str(qid), "question": q}
    if gold is not None:
        given["gold_answer"] = str(gold)
    if fmt is not None:
        given["answer_format"] = fmt
    if category is not None:
        given["category"] = category
    extra = {k: v for k, v in obj.items() if k not in _KNOWN}
    if extra:
        given["metadata"] = extra
    return Question(**given), None


Problem = tuple[int | None, str]  # (line, what is wrong)


def _records(text: str, source: str) -> tuple[list[Question], list[Problem]]:
    """The valid questions of a file's text and a problem per bad record. Problems with the
    file as a whole (empty, a JSON array that does not parse) raise InputError at once."""
    if not text.strip():
        raise InputError(source, [(None, "the file is empty; it needs one JSON object per line with a 'question'")])
    problems: list[Problem] = []
    items: list[tuple[int, Any]] = []
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(source, [(exc.lineno, f"invalid JSON: {exc.msg}")]) from None
        starts = _line_of_array_items(text)
        for i, obj in enumerate(data):
            items.append((starts[i] if i < len(starts) else 0, obj))
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                problems.append((lineno, f"invalid JSON: {exc.msg} (column {exc.colno})"))
    questions: list[Question] = []
    first_line: dict[str, int] = {}
    for index, (lineno, obj) in enumerate(items, 1):
        q, err = _to_question(obj, index)
        if err:
            problems.append((lineno, err))
            continue
        assert q is not None
        if q.id in first_line:
            problems.append((lineno, f"duplicate id {q.id!r} (first on line {first_line[q.id]}); ids must be unique"))
            continue
        first_line[q.id] = lineno
        questions.append(q)
    return questions, problems


def _checked(questions: list[Question], problems: list[Problem], source: str, skip_invalid: bool) -> tuple[list[Question], list[str]]:
    """Refuse a file with bad records (unless skipping) or with no question at all."""
    if problems and not skip_invalid:
        raise InputError(source, problems)
    if not questions:
        raise InputError(source, [*problems, (None, "no valid questions found")])
    return questions, [where(source, line, msg) for line, msg in problems]


def parse_questions(text: str, source: str) -> list[Question]:
    """Parse a whole file's text; raises InputError listing every bad record."""
    return _checked(*_records(text, source), source, skip_invalid=False)[0]


def read_questions(path: str | Path) -> list[Question]:
    """Every question of a file; InputError (file, line, problem) if any record is bad."""
    return read_questions_skipping(path, skip_invalid=False)[0]


def read_questions_skipping(path: str | Path, skip_invalid: bool = True) -> tuple[list[Question], list[str]]:
    """The valid questions of a file and the skipped records, one ``file:line: problem``
    each. Problems with the file as a whole are never skipped."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), [(None, "file not found")])
    raw = path.read_bytes()
    undecodable: list[Problem] = []
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        if not skip_invalid or raw.lstrip().startswith(b"["):
            raise InputError(str(path), [(line, f"bytes that are not UTF-8 at byte {exc.start}; save the file as UTF-8")]) from None
        # JSONL with --skip-invalid: blank out the lines that do not decode, parse the rest
        kept = []
        for lineno, chunk in enumerate(raw.split(b"\n"), 1):
            try:
                kept.append(chunk.decode("utf-8-sig" if lineno == 1 else "utf-8"))
            except UnicodeDecodeError:
                kept.append("")
                undecodable.append((lineno, "bytes that are not UTF-8; save the file as UTF-8"))
        text = "\n".join(kept)
    questions, problems = _records(text, str(path))
    problems = sorted(undecodable + problems, key=lambda p: p[0] or 0)
    return _checked(questions, problems, str(path), skip_invalid)


def as_questions(items: Iterable[str | Question | dict[str, Any]]) -> list[Question]:
    """Normalise what the Python API accepts: plain strings, dicts or Question objects."""
    out: list[Question] = []
    problems: list[tuple[int | None, str]] = []
    for i, item in enumerate(items, 1):
        if isinstance(item, Question):
            out.append(item)
        elif isinstance(item, str):
            if not item.strip():
                problems.append((i, "empty question"))
            else:
                out.append(Question(id=str(i), question=item))
        else:
            q, err = _to_question(item, i)
            if err:
                problems.append((i, err))
            else:
                assert q is not None
                out.append(q)
    ids = [q.id for q in out]
    if len(set(ids)) != len(ids):
        dup = sorted({x for x in ids if ids.count(x) > 1})
        problems.append((None, f"duplicate question ids {dup}; give each question a unique id"))
    if problems:
        raise InputError("<questions>", problems)
    return out
