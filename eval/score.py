"""Scoring an extracted answer against a gold answer.

Math: a normaliser first (leading zeros, ``\\frac``, spacing, ``\\text``, thousands
separators, numeric value), then symbolic equivalence with the math-verify package, as the
reference code (``033 == 33``, ``\\frac{208}{2} == 104``, ``x^2+1 == 1+x^2``). A gold
answer may accept several values ("080 or 081 (both were accepted)").

Why math-verify runs with its timeouts off: they are ``signal.alarm`` timers, which only
work on the main thread; with them on, a host that scores off the main thread (a worker
thread, ``asyncio.to_thread``, a web server) would get a different result than the CLI.
With them off the result is the same on any thread, and we bound the work ourselves, by a
rule that depends on the text alone: an answer too long, or one that asks sympy for an
astronomically large number (a tower of powers, a big factorial), is decided by the
normaliser only.
"""

from __future__ import annotations

import logging
import re
from fractions import Fraction

from symoe_agents.formats import AnswerFormat, gold_alternatives, gold_letter

_FRAC = re.compile(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}")
_TEXT = re.compile(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}")

#: longest answer handed to math-verify; AIME-style answers are a few characters
MAX_SYMBOLIC_CHARS = 200
# exponents, factorials or digit runs big enough to make sympy compute for minutes
_EXPENSIVE = re.compile(r"\^\s*\{?[^}]*\^|\^\s*\{?\s*\d{4,}|\d{3,}\s*!|!\s*!|\\(?:binom|choose)|\d{60,}")


def normalize_math(value: str) -> str:
    v = value.strip().strip("$").strip()
    v = _TEXT.sub(r"\1", v)
    v = v.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "")
    v = v.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\%", "").replace("%", "")
    v = _FRAC.sub(r"(\1)/(\2)", v)
    v = re.sub(r"\s+", "", v).rstrip(".")
    number = _as_number(v)
    return str(number) if number is not None else v


def _as_number(v: str) -> Fraction | None:
    text = v.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", v) else v
    m = re.fullmatch(r"\(?(-?\d+(?:\.\d+)?)\)?(?:/\(?(-?\d+(?:\.\d+)?)\)?)?", text)
    if not m:
        return None
    try:
        num = Fraction(m.group(1))
        return num / Fraction(m.group(2)) if m.group(2) else num
    except (ValueError, ZeroDivisionError):
        return None


class _NoTimeoutNotice(logging.Filter):
    """math-verify logs, once, that its timeouts are off; that is our decision (see the
    module doc), not news for the user's terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_NoTimeoutNotice())


def symbolic_checkable(value: str) -> bool:
    """Whether math-verify may look at ``value``: short, and no runaway arithmetic."""
    return len(value) <= MAX_SYMBOLIC_CHARS and not _EXPENSIVE.search(value)


def _math_verify(predicted: str, gold: str) -> bool:
    if not (symbolic_checkable(predicted) and symbolic_checkable(gold)):
        return False
    try:
        from math_verify import parse, verify

        return bool(
            verify(parse(f"${gold}$", parsing_timeout=None), parse(f"${predicted}$", parsing_timeout=None), timeout_seconds=None)
        )
    except Exception:  # noqa: BLE001 - a parser failure means "not shown equal"
        return False


def _normalize_free(value: str) -> str:
    """Lower case, punctuation to spaces."""
    return re.sub(r"[^0-9a-z]+", " ", value.lower()).strip()


def math_equal(predicted: str, gold: str) -> bool:
    """Equal as the method defines it: the same value for any of the gold's alternatives."""
    for want in gold_alternatives(gold):
        if normalize_math(predicted) == normalize_math(want) or _math_verify(predicted, want):
            return True
    return False


def is_correct(predicted: str | None, gold: str, fmt: AnswerFormat) -> bool:
    """Unparsable (``None``) counts as wrong."""
    if predicted is None:
        return False
    if fmt is AnswerFormat.MULTIPLE_CHOICE:
        return gold_letter(predicted) is not None and gold_letter(predicted) == gold_letter(gold)
    if fmt is AnswerFormat.MATH:
        return math_equal(predicted, gold)
    # free text: the gold answer, as whole words, inside a short stated answer
    # ("The capital city of France is Paris." for "Paris"); a long text does not count
    pred, want = _normalize_free(predicted), _normalize_free(gold)
    if not want:
        return False
    if pred == want:
        return True
    return len(pred.split()) <= 12 and f" {want} " in f" {pred} "
