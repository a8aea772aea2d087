"""Answer formats: multiple choice (with the question's own letters), math (boxed), free text.

The format decides the answer instruction given to experts and the aggregator, and how the
final answer is extracted and scored. It is detected from the question unless a record
names it.
"""

from __future__ import annotations

import re
from enum import Enum


class AnswerFormat(str, Enum):
    MULTIPLE_CHOICE = "multiple_choice"
    MATH = "math"
    FREE = "free"


_OPTION = re.compile(r"\(([A-Z])\)")
_LATEX = re.compile(r"\$[^$]+\$|\\\(|\\\[|\\frac|\\sqrt|\\boxed|\\cdot|\\times")
_NUMBER = re.compile(r"^\s*-?\d+(?:\.\d+)?(?:/\d+)?\s*$")


def option_letters(question: str) -> list[str]:
    """The option letters a question offers: the longest run A, B, C, ... of "(X)" markers.

    Markers are read in order of appearance; the run must start at A and go up one letter
    at a time, so a stray "(C)" in the stem does not count. Fewer than two means "none".
    """
    best: list[str] = []
    run: list[str] = []
    for letter in _OPTION.findall(question):
        if letter == "A":
            run = ["A"]
        elif run and ord(letter) == ord(run[-1]) + 1:
            run.append(letter)
        else:
            continue
        if len(run) > len(best):
            best = list(run)
    return best if len(best) >= 2 else []


def detect_format(question: str, gold_answer: str | None = None) -> tuple[AnswerFormat, list[str]]:
    """Guess the answer format of a question, with its option letters for multiple choice.

    Rule: options "(A) ... (B) ..." mean multiple choice. Otherwise LaTeX math in the
    question, or a numeric gold answer, means math. Everything else is free text. A record
    can always state its format instead.
    """
    letters = option_letters(question)
    if letters:
        return AnswerFormat.MULTIPLE_CHOICE, letters
    if _LATEX.search(question) or (gold_answer is not None and _NUMBER.match(gold_answer)):
        return AnswerFormat.MATH, []
    return AnswerFormat.FREE, []
