"""Scoring an extracted answer against a gold answer.

Math: symbolic equivalence with the math-verify package, as the reference code
(``033 == 33``, ``\\frac{208}{2} == 104``, ``x^2+1 == 1+x^2``). math-verify guards its
parser with signal-based timeouts, which only work on the main thread; elsewhere (or if
it fails) a normaliser decides: leading zeros, ``\\frac``, spacing, ``\\text``, numeric value.
"""

from __future__ import annotations

import re
from fractions import Fraction

from symoe_agents.formats import AnswerFormat

_FRAC = re.compile(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}")
_TEXT = re.compile(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}")


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


def _math_verify(predicted: str, gold: str) -> bool:
    import threading

    if threading.current_thread() is not threading.main_thread():
        return False  # math-verify's timeouts need the main thread; the normaliser decided
    try:
        from math_verify import parse, verify

        return bool(verify(parse(f"${gold}$"), parse(f"${predicted}$")))
    except Exception:  # noqa: BLE001 - a parser failure means "not shown equal"
        return False


def _normalize_free(value: str) -> str:
    """Lower case, punctuation to spaces."""
    return re.sub(r"[^0-9a-z]+", " ", value.lower()).strip()


def is_correct(predicted: str | None, gold: str, fmt: AnswerFormat) -> bool:
    """Unparsable (``None``) counts as wrong."""
    if predicted is None:
        return False
    if fmt is AnswerFormat.MULTIPLE_CHOICE:
        return predicted.strip().upper() == gold.strip().strip("()").upper()
    if fmt is AnswerFormat.MATH:
        return normalize_math(predicted) == normalize_math(gold) or _math_verify(predicted, gold)
    # free text: the gold answer, as whole words, inside a short stated answer
    # ("The capital city of France is Paris." for "Paris"); a long text does not count
    pred, want = _normalize_free(predicted), _normalize_free(gold)
    if not want:
        return False
    if pred == want:
        return True
    return len(pred.split()) <= 12 and f" {want} " in f" {pred} "
