"""Scoring an extracted answer against a gold answer.

Math: a normaliser first (leading zeros, ``\\frac``, spacing, ``\\text``, thousands
separators, numeric value), then symbolic equivalence with the math-verify package, as the
reference code (``033 == 33``, ``\\frac{208}{2} == 104``, ``x^2+1 == 1+x^2``). A gold
answer may accept several values ("080 or 081 (both were accepted)").

Why math-verify runs with its timeouts off: they are ``signal.alarm`` timers, which only
work on the main thread; with them on, a host that scores off the main thread (a worker
thread, ``asyncio.to_thread``, a web server) would get a different result than the CLI.
With them off the result is the same on any thread, and we bound the work ourselves, by a
rule that depends on the text alone (``symbolic_checkable``): an answer too long, or one
that asks sympy for an astronomically large number or expansion, is decided by the
normaliser only. Measured on these cores: 2^{100000}, 10000!, \binom{1000}{500} and
(x+1)^{100} take under 0.3 s and stay symbolic; a tower such as 9^{9^{9}}, (10^9)! or
(x+y+z)^{200} would take minutes or forever, and does not.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from fractions import Fraction

from symoe_agents.formats import AnswerFormat, gold_alternatives, gold_letter

_FRAC = re.compile(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}")
_TEXT = re.compile(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}")

#: longest answer handed to math-verify; AIME-style answers are a few characters
MAX_SYMBOLIC_CHARS = 200
#: the largest power of a number, terms of an expansion, and factorial or binomial argument
#: handed to math-verify (measured here: (x+1)^{100}, 101 terms, 0.3 s; (x+y+z)^{60}, 1891
#: terms, 8 s; 2^{100000} and 10000! under 0.3 s)
MAX_POWER, MAX_TERMS, MAX_FACTORIAL = 100_000, 200, 10_000
_TOKEN = re.compile(r"\s*(-?\d+|[A-Za-z]|\\[A-Za-z]+)")
_NUMERIC_TOWER = re.compile(r"-?[\d\s^{}()]+")
_INTEGER = re.compile(r"\d+")
_LETTER = re.compile(r"[A-Za-z]")


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


def _tower(text: str) -> float:
    """The size of a numeric exponent ("12", "{2^{3}}", "-5"), inf past ``MAX_POWER``; nan
    when it is not a plain number (a symbol, an expression)."""
    inner = text.strip().removeprefix("{").removesuffix("}").strip().removeprefix("-")
    if not _NUMERIC_TOWER.fullmatch(inner) or not any(c.isdigit() for c in inner):
        return math.nan
    value = 1.0
    for digits in reversed(_INTEGER.findall(inner)):  # right-associative: a^(b^c)
        base = int(digits)
        if base > 1 and value * math.log10(base) > math.log10(MAX_POWER):
            return math.inf
        value = float(base) ** value
    return value


def _group(value: str, close: int) -> str:
    """The text of the bracket group that ends at ``value[close]`` (")" or "}")."""
    opening = {")": "(", "}": "{"}[value[close]]
    depth = 0
    for i in range(close, -1, -1):
        depth += {value[close]: 1, opening: -1}.get(value[i], 0)
        if depth == 0:
            return value[i + 1 : close]
    return value[:close]


def _terms(expr: str) -> int:
    """Terms of a sum at the top level: "x+y-z" has 3."""
    depth, terms = 0, 1
    for i, ch in enumerate(expr):
        depth += {"(": 1, "{": 1, ")": -1, "}": -1}.get(ch, 0)
        if depth == 0 and ch in "+-" and expr[:i].strip():
            terms += 1
    return terms


def _exponents(value: str) -> list[tuple[int, int, str]]:
    """(where the "^" is, where its operand ends, the operand) for every exponent: a
    brace-matched group, or a single number, letter or command."""
    out = []
    for at, ch in enumerate(value):
        if ch != "^":
            continue
        rest = value[at + 1 :]
        if rest.lstrip().startswith("{"):
            start = at + 1 + (len(rest) - len(rest.lstrip()))
            depth = 0
            for end in range(start, len(value)):
                depth += {"{": 1, "}": -1}.get(value[end], 0)
                if depth == 0:
                    out.append((at, end + 1, value[start : end + 1]))
                    break
            else:
                out.append((at, len(value), value[start:]))  # unbalanced: the rest
        elif m := _TOKEN.match(rest):
            out.append((at, at + 1 + m.end(), m.group(1)))
    return out


def _too_big_argument(arg: str) -> bool:
    """A factorial's, binomial's or Gamma's argument that is a large number, or a power."""
    if _LETTER.search(arg):
        return False  # symbolic: (n+1)!, \binom{2n}{n}
    return "^" in arg or any(int(d) > MAX_FACTORIAL for d in _INTEGER.findall(arg))


def symbolic_checkable(value: str) -> bool:
    """Whether math-verify may look at ``value``: short, and nothing that makes sympy build
    an astronomically large number or expansion (see the module doc)."""
    if len(value) > MAX_SYMBOLIC_CHARS:
        return False
    value = value.replace("\\left", "").replace("\\right", "")  # sizing, not content: "\\left(10^9\\right)!"
    for at, end, operand in _exponents(value):
        power = _tower(operand)
        if math.isnan(power):  # a symbolic exponent: no numbers hidden in it (3^{12!}, 3^{10^4 \cdot 10^4}, 3^{99999/1})
            literals = [int(d) for d in _INTEGER.findall(operand)]
            if "!" in operand or (literals and "^" in operand) or any(n > 100 for n in literals):
                return False
            continue
        if power > MAX_POWER:
            return False
        if value[end:].lstrip().startswith("^"):  # an unbraced tower "9^9^9": only small ones
            if not (power <= 10 and _tower(value[end:].lstrip()[1:].lstrip()[:1] or "x") <= 6):
                return False
        before = value[:at].rstrip()
        if before[-1:] in (")", "}") and _LETTER.search(base := _group(before, len(before) - 1)):
            if math.comb(int(power) + _terms(base) - 1, _terms(base) - 1) > MAX_TERMS:  # (x+y+z)^{100}
                return False
    for i, ch in enumerate(value):
        if ch == "!" and value[i - 1 : i] != "!":
            before = value[:i].rstrip()
            if before[-1:] in (")", "}"):
                if _too_big_argument(_group(before, len(before) - 1)):
                    return False
            elif (digits := re.search(r"\d+$", before)) and int(digits.group()) > MAX_FACTORIAL:
                return False
    for command in re.finditer(r"\\(?:binom|dbinom|tbinom|choose|Gamma)", value):
        if _too_big_argument(value[command.end() : command.end() + 40]):
            return False
    return True


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


async def judged(predicted: str | None, gold: str, fmt: AnswerFormat) -> bool:
    """``is_correct`` from async code: a math answer is checked on a worker thread, since
    math-verify (its timeouts off, see above) may take long on a hostile answer and must
    not hold the event loop; letters and free text are checked at once."""
    if fmt is AnswerFormat.MATH and predicted is not None:
        return await asyncio.to_thread(is_correct, predicted, gold, fmt)
    return is_correct(predicted, gold, fmt)
