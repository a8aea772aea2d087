"""Answer formats: multiple choice (with the question's own letters), math (boxed), free text.

The format decides the answer instruction given to experts and the aggregator, and how the
final answer is extracted and scored. It is detected from the question (and its gold
answer, when there is one) unless a record names it.

Options. The paper's benchmarks put the options after a header, "The options are: (A) ...
(B) ...". When a question has such a header followed by an option A, its letters are read
from the text after the last such header only (a header inside an option's text, "(C)
Options: calls", does not count); otherwise from the whole question, with figure code
(``[asy]`` blocks) removed. Either way the letters are the run A, B, C, ... of option
markers in order of appearance: a marker counts only when it is the next letter of the
run, and a later "(A)" does not restart it. A marker is "(X)", or "X)" / "X." at the start
of a line (or anywhere after a header: "The options are: A. 4 B. 7"); "(X)" glued to a
word ("poly(A)", "P(R)", "O(D)") or followed by a hyphen (the stereo-descriptors "(E)-",
"(R)-", "(S)-" of chemistry) is not a marker. Fewer than two letters means none.

A question is multiple choice only when it lists options and its gold answer, if any, is a
letter: a numeric gold answer that is not one of the letters is never scored as a letter.
Without a gold answer and without LaTeX, a math question in words ("Find the number of
...") is free text: declare ``answer_format`` for such sets.
"""

from __future__ import annotations

import re
from enum import Enum
from functools import lru_cache


class AnswerFormat(str, Enum):
    MULTIPLE_CHOICE = "multiple_choice"
    MATH = "math"
    FREE = "free"


# "The options are:", "Options:", "Answer choices:", "The choices are:"
_HEADER = re.compile(r"\b(?:the\s+)?(?:answer\s+)?(?:options|choices)(?:\s+are)?\s*:", re.IGNORECASE)
_FIGURE = re.compile(r"\[asy\].*?(?:\[/asy\]|\Z)", re.DOTALL | re.IGNORECASE)
# "(X)" not glued to a word or a bracket, and not a stereo-descriptor "(X)-"
_PAREN_MARKER = re.compile(r"(?<![A-Za-z0-9(\[])\(([A-Z])\)(?![-\u2010-\u2014])")
# "X)" or "X." opening a line: "A) 5", "B. Paris"
_LINE_MARKER = re.compile(r"^[ \t]*([A-Z])[.)][ \t]", re.MULTILINE)
_INLINE_MARKER = re.compile(r"(?<![A-Za-z0-9(])([A-Z])[.)](?=\s)")
_FIRST_INLINE = re.compile(r"\s*A[.)]\s")  # inline options start right after their header
_LATEX = re.compile(r"\$[^$]+\$|\\\(|\\\[|\\frac|\\sqrt|\\boxed|\\cdot|\\times")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")
# a remark after the value: "080 or 081 (both were accepted)", "12 (cm)"; not "(a-b)(a+b)", "x (a+b)"
_REMARK = re.compile(r"\s+\((?![^()]*[-+*/^=\\])[^()]*\)\s*$")
_OR = re.compile(r"\s+or\s+", re.IGNORECASE)


def _run(markers: list[tuple[int, str]]) -> list[str]:
    """The run A, B, C, ... of markers in order of appearance."""
    run: list[str] = []
    for _, letter in sorted(markers):
        if letter == chr(ord("A") + len(run)):
            run.append(letter)
    return run if len(run) >= 2 else []


def _markers(text: str, inline: bool) -> list[str]:
    found = [(m.start(), m.group(1)) for m in _PAREN_MARKER.finditer(text)]
    found += [(m.start(1), m.group(1)) for m in _LINE_MARKER.finditer(text)]
    run = _run(found)
    if not run and inline and _FIRST_INLINE.match(text):  # "The options are: A. 4 B. 7 C. 9"
        run = _run([(m.start(), m.group(1)) for m in _INLINE_MARKER.finditer(text)])
    return run


@lru_cache(maxsize=4096)  # every extraction of a response reads its question's options
def _options(question: str) -> tuple[str, bool]:
    """(the text that lists the options, whether it follows a header). Only the last few
    headers are tried: a question made of thousands of "Options:" must not cost seconds."""
    for header in list(_HEADER.finditer(question))[-3:][::-1]:
        if _markers(question[header.end():], inline=True):
            return question[header.end():], True
    return _FIGURE.sub(" ", question), False


def options_text(question: str) -> str:
    """The part of the question that lists its options: after the last options header
    that an option list follows, else the whole question without figure code."""
    return _options(question)[0]


def option_letters(question: str) -> list[str]:
    """The option letters a question offers: the run A, B, C, ... of its option markers."""
    text, after_header = _options(question)
    return _markers(text, inline=after_header)


def gold_letter(gold: str | None) -> str | None:
    """The letter a gold answer names ("B", "(B)", " b "), or None if it names none."""
    if gold is None:
        return None
    g = gold.strip().strip("()").strip()
    return g.upper() if len(g) == 1 and g.isalpha() and g.isascii() else None


def gold_alternatives(gold: str) -> list[str]:
    """The values a math gold answer accepts: "080 or 081 (both were accepted)" gives
    ["080", "081"]; most golds give themselves."""
    core = _REMARK.sub("", gold).strip() or gold.strip()
    parts = [p.strip() for p in _OR.split(core) if p.strip()]
    return parts or [gold.strip()]


def is_numeric_gold(gold: str | None) -> bool:
    return gold is not None and all(_NUMBER.fullmatch(a.replace(",", "")) for a in gold_alternatives(gold))


def detect_format(question: str, gold_answer: str | None = None) -> tuple[AnswerFormat, list[str]]:
    """The answer format of a question, with its option letters for multiple choice.

    Multiple choice: it lists options and its gold answer, if given, is a letter (one
    outside the options is still a letter, and never matches the answer). Otherwise
    math, when the question holds LaTeX or the gold answer is a number; else free text.
    A record can always state its format instead.
    """
    letters = option_letters(question)
    if letters and (gold_answer is None or gold_letter(gold_answer) is not None):
        return AnswerFormat.MULTIPLE_CHOICE, letters
    if _LATEX.search(question) or is_numeric_gold(gold_answer):
        return AnswerFormat.MATH, []
    return AnswerFormat.FREE, []
