"""Reading question files: JSONL (one object per line) or the upstream JSON array format.

Every problem is reported with the file and line, all at once, so a user fixes a file in
one pass. Fields: ``question`` (required), ``id``, ``gold_answer``, ``answer_format``
(``multiple_choice`` | ``math`` | ``free``), ``category``; any other fields are carried
through in ``metadata``.
"""

from __future__ import annotations

import codecs
import json
import re
import stat
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from .errors import InputError, where
from .formats import AnswerFormat, gold_letter
from .preparation import format_problem, prepare
from .records import Question

_KNOWN = {"id", "question", "gold_answer", "answer_format", "category"}
_FORMATS = ", ".join(f.value for f in AnswerFormat)
#: an id is a name in answer files and messages; megabytes of it are a mistake, not a name
MAX_ID_CHARS = 1000
_ID_INT_LIMIT = 10**MAX_ID_CHARS  # an int id this large has more than MAX_ID_CHARS digits
# json.loads decodes the escape "\ud800" to a lone surrogate, which cannot be encoded as
# UTF-8, so the answers file could not be written; UTF-8 text itself never holds one
_SURROGATE = re.compile("[\ud800-\udfff]")
# the only text that decodes to one (or to a valid pair): a file with none skips the check
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_WS = re.compile(r"[ \t\n\r]*")  # JSON's whitespace (str.isspace would take more)
_NOT_A_FILE = "give a questions file (JSONL, or a JSON array)"
_TOO_DEEP = "JSON nested too deeply"


def _too_many_digits() -> str:
    # Python refuses to read an integer of more digits than this (a guard against CPU use)
    return f"a number with more than {sys.get_int_max_str_digits()} digits, which Python will not read; write it as a string"


def _array_items(text: str, source: str) -> list[tuple[int, Any, bool]]:
    """(line, item, whether its text holds a surrogate escape) per item of a JSON array file.

    Decoded item by item so that each item's line is exact whatever it holds. Anything
    that does not decode is the whole file's problem: where that item ends, and so where
    the next one starts, is unknown."""
    decoder = json.JSONDecoder()
    items: list[tuple[int, Any, bool]] = []
    line, seen = 1, 0

    def line_at(pos: int) -> int:  # counted on from the last position asked: linear overall
        nonlocal line, seen
        line += text.count("\n", seen, pos)
        seen = pos
        return line

    def refuse(pos: int, msg: str) -> InputError:
        return InputError(source, [(line_at(pos), msg)])

    pos = _WS.match(text).end()
    if not text.startswith("[", pos):  # the caller's str.lstrip also skips what JSON does not
        raise refuse(pos, "invalid JSON: Expecting value")
    pos = _WS.match(text, pos + 1).end()
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            try:
                obj, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                raise refuse(exc.pos, f"invalid JSON: {exc.msg}") from None
            except RecursionError:
                raise refuse(pos, _TOO_DEEP) from None
            except ValueError:  # an integer of too many digits
                raise refuse(pos, _too_many_digits()) from None
            items.append((line_at(pos), obj, _SURROGATE_ESCAPE.search(text, pos, end) is not None))
            pos = _WS.match(text, end).end()
            if text.startswith(",", pos):
                pos = _WS.match(text, pos + 1).end()
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                raise refuse(pos, "invalid JSON: expected ',' or ']' after an array item")
    pos = _WS.match(text, pos).end()
    if pos < len(text):
        raise refuse(pos, "invalid JSON: more text after the array's closing ']'")
    return items


def _lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate in a JSON value's strings (keys too), written \\uXXXX.
    Iterative: a value nested hundreds deep must not exhaust the stack here; and a
    container met again (an API caller's dict that holds itself) is not walked again."""
    stack: list[Any] = [value]
    walked: set[int] = set()
    while stack:
        v = stack.pop()
        if isinstance(v, (dict, list)):
            if id(v) in walked:
                continue
            walked.add(id(v))
            stack.extend([*v.keys(), *v.values()] if isinstance(v, dict) else v)
        elif isinstance(v, str) and (m := _SURROGATE.search(v)):
            return f"\\u{ord(m.group()):04x}"
    return None


def _surrogate_problem(obj: Any) -> str | None:
    """Which field of a record holds a lone surrogate, or None."""
    if not isinstance(obj, dict):
        return None  # not a record: _to_question says so
    for key, value in obj.items():
        if found := _lone_surrogate(key):
            return f"a field name holds a lone surrogate {found}, which is not valid Unicode"
        if found := _lone_surrogate(value):
            return f"{key!r} holds a lone surrogate {found}, which is not valid Unicode"
    return None


def _to_question(obj: Any, index: int, check_surrogates: bool = True) -> tuple[Question | None, str | None]:
    """The record as a Question, or why not. ``check_surrogates=False``: the caller knows
    the record's text holds no surrogate escape, so no string in it can hold one."""
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    if check_surrogates and (problem := _surrogate_problem(obj)):
        return None, problem
    q = obj.get("question")
    if q is None:
        return None, "missing required field 'question'"
    if not isinstance(q, str) or not q.strip():
        return None, "'question' must be a non-empty string"
    qid = obj.get("id", index)
    if not isinstance(qid, (str, int)) or isinstance(qid, bool):
        return None, "'id' must be a string or an integer"
    if isinstance(qid, int) and abs(qid) >= _ID_INT_LIMIT:
        return None, f"'id' has more than {MAX_ID_CHARS} digits; ids are at most {MAX_ID_CHARS} characters"
    if len(str(qid)) > MAX_ID_CHARS:
        return None, f"'id' is {len(str(qid))} characters long; ids are at most {MAX_ID_CHARS} characters"
    gold = obj.get("gold_answer")
    if gold is not None and not isinstance(gold, (str, int, float)):
        return None, "'gold_answer' must be a string or a number"
    fmt = obj.get("answer_format")
    if fmt is not None and (not isinstance(fmt, str) or fmt not in {f.value for f in AnswerFormat}):
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


class QuestionFile(NamedTuple):
    """What a question file holds."""

    questions: list[Question]
    skipped: list[str]  # ``file:line: problem`` per record left out (with skip_invalid)
    warnings: list[str]  # ``file:line: note`` per record kept that cannot score as meant


def _jsonl_items(text: str) -> tuple[list[tuple[int, Any, bool]], list[Problem]]:
    """(line, record, whether the line holds a surrogate escape) per non-blank line, and a
    problem per line that does not decode. Lines end at "\\n" only: str.splitlines would
    also split at U+2028, U+2029 and U+0085, which a JSON string may hold raw, and at
    \\x0b, \\x0c, \\x1c-\\x1e, misnumbering every line after."""
    items: list[tuple[int, Any, bool]] = []
    problems: list[Problem] = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            items.append((lineno, json.loads(line), _SURROGATE_ESCAPE.search(line) is not None))
        except json.JSONDecodeError as exc:
            problems.append((lineno, f"invalid JSON: {exc.msg} (column {exc.colno})"))
        except RecursionError:
            problems.append((lineno, _TOO_DEEP))
        except ValueError:  # an integer of too many digits
            problems.append((lineno, _too_many_digits()))
    return items, problems


def _gold_warning(q: Question) -> str | None:
    """A multiple-choice gold answer that names none of the options can never be scored
    correct. A warning, not a refusal: the rest of the set is worth running."""
    if q.gold_answer is None:
        return None
    if gold_letter(q.gold_answer) is None and q.answer_format is not AnswerFormat.MULTIPLE_CHOICE:
        return None  # never multiple choice (see detect_format): spare a large set the option search
    p = prepare(q)  # the format and letters that solve and eval will use
    if p.fmt is not AnswerFormat.MULTIPLE_CHOICE or gold_letter(q.gold_answer) in p.letters:
        return None
    gold = q.gold_answer if len(q.gold_answer) <= 40 else q.gold_answer[:40] + "..."
    return f"gold answer {gold!r} is not one of the question's options ({', '.join(p.letters)}); it can never be scored correct"


def _records(text: str, source: str) -> tuple[list[Question], list[Problem], list[Problem]]:
    """The valid questions of a file's text, a problem per bad record and a warning per
    doubtful valid one. Problems with the file as a whole (empty, a JSON array that does
    not parse) raise InputError at once."""
    if not text.strip():
        raise InputError(source, [(None, "the file is empty; it needs one JSON object per line with a 'question'")])
    if text.lstrip().startswith("["):
        items, problems = _array_items(text, source), []
    else:
        items, problems = _jsonl_items(text)
    questions: list[Question] = []
    warnings: list[Problem] = []
    first_line: dict[str, int] = {}
    for index, (lineno, obj, escaped) in enumerate(items, 1):
        q, err = _to_question(obj, index, check_surrogates=escaped)
        if err:
            problems.append((lineno, err))
            continue
        assert q is not None
        if q.id in first_line:
            problems.append((lineno, f"duplicate id {q.id!r} (first on line {first_line[q.id]}); ids must be unique"))
            continue
        first_line[q.id] = lineno
        questions.append(q)
        if note := _gold_warning(q):
            warnings.append((lineno, note))
    return questions, problems, warnings


def _checked(questions: list[Question], problems: list[Problem], warnings: list[Problem], source: str, skip_invalid: bool) -> QuestionFile:
    """Refuse a file with bad records (unless skipping) or with no question at all."""
    if problems and not skip_invalid:
        raise InputError(source, problems)
    if not questions:
        raise InputError(source, [*problems, (None, "no valid questions found")])
    return QuestionFile(questions, [where(source, line, msg) for line, msg in problems], [where(source, line, msg) for line, msg in warnings])


def parse_questions(text: str, source: str) -> list[Question]:
    """Parse a whole file's text; raises InputError listing every bad record."""
    return _checked(*_records(text, source), source, skip_invalid=False).questions


def read_questions(path: str | Path) -> list[Question]:
    """Every question of a file; InputError (file, line, problem) if any record is bad."""
    return read_questions_skipping(path, skip_invalid=False).questions


def reads_as_stream(path: str | Path) -> bool:
    """Whether INPUT is read as a stream ("-", a pipe such as bash's <(...), a terminal):
    its name cannot name other files, and it can be read only once."""
    if str(path) == "-":
        return True
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def _read_input(path: Path) -> tuple[bytes, str]:
    """The bytes of INPUT and the name to report it by: "-" is standard input; a regular
    file, a pipe or a terminal is read once; anything else is refused for what it is."""
    if str(path) == "-":
        if sys.stdin is None:
            raise InputError("<stdin>", [(None, "there is no standard input to read")])
        return sys.stdin.buffer.read(), "<stdin>"
    source = str(path)
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(source, [(None, "file not found")]) from None
    except OSError as exc:
        raise InputError(source, [(None, f"cannot read it: {exc.strerror}")]) from None
    if stat.S_ISDIR(mode):
        raise InputError(source, [(None, f"is a directory; {_NOT_A_FILE}")])
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
        kind = "a socket" if stat.S_ISSOCK(mode) else "a block device" if stat.S_ISBLK(mode) else "not a regular file"
        raise InputError(source, [(None, f"is {kind}; {_NOT_A_FILE}")])
    try:
        with path.open("rb") as f:
            return f.read(), source
    except OSError as exc:
        raise InputError(source, [(None, f"cannot read it: {exc.strerror}")]) from None


def read_questions_skipping(path: str | Path, skip_invalid: bool = True) -> QuestionFile:
    """The valid questions of a file, the skipped records and the warnings, one
    ``file:line: problem`` each. Problems with the file as a whole are never skipped."""
    raw, source = _read_input(Path(path))
    undecodable: list[Problem] = []
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        if not skip_invalid or raw.removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"["):
            raise InputError(source, [(line, f"bytes that are not UTF-8 at byte {exc.start}; save the file as UTF-8")]) from None
        # JSONL with --skip-invalid: blank out the lines that do not decode, parse the rest
        kept = []
        for lineno, chunk in enumerate(raw.split(b"\n"), 1):
            try:
                kept.append(chunk.decode("utf-8-sig" if lineno == 1 else "utf-8"))
            except UnicodeDecodeError:
                kept.append("")
                undecodable.append((lineno, "bytes that are not UTF-8; save the file as UTF-8"))
        text = "\n".join(kept)
    questions, problems, warnings = _records(text, source)
    problems = sorted(undecodable + problems, key=lambda p: p[0] or 0)
    return _checked(questions, problems, warnings, source, skip_invalid)


def as_questions(items: Iterable[str | Question | dict[str, Any]]) -> list[Question]:
    """Normalise what the Python API accepts: plain strings, dicts or Question objects."""
    out: list[Question] = []
    problems: list[tuple[int | None, str]] = []
    for i, item in enumerate(items, 1):
        # a Python str may hold a lone surrogate outright (dicts: _to_question checks them)
        fields = dict(item) if isinstance(item, Question) else {"question": item} if isinstance(item, str) else None
        if fields and (found := _surrogate_problem(fields)):
            problems.append((i, found))
        elif isinstance(item, Question):
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
