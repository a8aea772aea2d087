"""Extracting a final answer from a model's text (method.md section 6).

Multiple choice uses a strict rule over the question's own letters. The reference code
falls back to the last bare capital letter in range, which misfires ("The answer is B. I
think" gives "I"); here a bare letter counts only right after "answer is"/"Answer:" and
only when it stands alone (followed by punctuation or the end of a line). Anything else is
reported as unparsable (``None``), never guessed.
"""

from __future__ import annotations

import re

from symoe_agents.formats import AnswerFormat

_THINK_END = "</think>"

# "The answer is (B)", "answer is B.", "Answer: (C)", "final answer: D"
_MC_STATED = re.compile(
    r"answer\s*(?:is|:)\s*:?\s*(?:\*\*)?\s*(?:\(([A-Z])\)|\b([A-Z])\b(?=\s*(?:\*\*)?\s*(?:[.,;:!)\]]|$)))",
    re.IGNORECASE | re.MULTILINE,
)
_MC_BOXED = re.compile(r"\\boxed\{\s*\(?([A-Z])\)?\s*\}")
_MC_PAREN = re.compile(r"\(([A-Z])\)")
_STATED_FREE = re.compile(r"answer is\s*:?\s*(.+)", re.IGNORECASE)
_MATH_VALUE = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d+)?(?:/\d+)?|\\[a-z]+\{[^$]*\}[^\s$]*|\d[^\s$]*)")


def strip_reasoning(text: str) -> str:
    """Drop a ``<think>...</think>`` trace: only what follows it is the answer."""
    at = text.rfind(_THINK_END)
    return text[at + len(_THINK_END):] if at >= 0 else text


def extract_choice(text: str, letters: list[str]) -> str | None:
    """The chosen option letter, or ``None`` when the text states no valid choice."""
    text = strip_reasoning(text)
    allowed = set(letters)
    stated = [m.group(1) or m.group(2) for m in _MC_STATED.finditer(text)]
    # group 2 is matched case-insensitively by the flag; only a real capital is a letter
    stated = [s for s in stated if s.isupper() and s in allowed]
    if stated:
        return stated[-1]
    boxed = [m for m in _MC_BOXED.findall(text) if m in allowed]
    if boxed:
        return boxed[-1]
    # a lone "(X)" in the last line is a statement; an option list repeated in the
    # reasoning is not, so only the last line's markers count here
    last_line = text.strip().splitlines()[-1] if text.strip() else ""
    paren_last = [m for m in _MC_PAREN.findall(last_line) if m in allowed]
    if paren_last and len(set(paren_last)) == 1:
        return paren_last[-1]
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces matched."""
    best = None
    for macro in ("\\boxed", "\\fbox"):
        at = text.rfind(macro + "{")
        if at > (best[0] if best else -1):
            best = (at, macro)
    if best is None:
        return None
    start = best[0] + len(best[1]) + 1
    depth = 1
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i].strip()
    return None  # unbalanced: the answer was cut off


def extract_math(text: str) -> str | None:
    """The last boxed answer; failing that, what follows the last "answer is"."""
    text = strip_reasoning(text)
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    # fallback: "answer is 49." / "answer is $\\frac{1}{2}$" - a value, not prose; echoed
    # instructions ('write "The answer is" at the end') must not count
    for raw in reversed(_STATED_FREE.findall(text)):
        value = raw.strip()
        if value.startswith("$") and value.count("$") >= 2:
            value = value[1 : value.index("$", 1)]
        else:
            value = value.split()[0] if value.split() else ""
        value = value.strip().rstrip(".,;").strip()
        if value and _MATH_VALUE.fullmatch(value):
            return value
    return None


def extract_free(text: str) -> str | None:
    """What follows the last "answer is"; failing that, the last non-empty line."""
    text = strip_reasoning(text).strip()
    stated = _STATED_FREE.findall(text)
    if stated:
        value = stated[-1].strip().rstrip(".").strip()
        return value or None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


def extract_answer(text: str | None, fmt: AnswerFormat, letters: list[str] | None = None) -> str | None:
    if not text:
        return None
    if fmt is AnswerFormat.MULTIPLE_CHOICE:
        return extract_choice(text, letters or [])
    if fmt is AnswerFormat.MATH:
        return extract_math(text)
    return extract_free(text)
