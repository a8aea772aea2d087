"""Extracting a final answer from a model's text (method.md section 6).

Reasoning before ``</think>`` is removed first (``symoe_agents.reasoning``), and so is an
echo of the answer instruction: small models often repeat 'write "The answer is (X)",
where X is the single capital letter of the option you choose (A, B, C, D).', whose
placeholder and letter list are no answer.

Multiple choice, over the question's own letters:
1. a stated answer: "the answer is (X)", "The correct answer is X.", "Answer: X",
   "Final answer: **X**", "answer is option X", a boxed letter ``\\boxed{X}``; the last
   one stated wins, so chatter after the answer does not change it;
2. otherwise a choice said in other words: "I choose (X)", "I'd go with option X", "X is
   correct", "Option X is the right one" (the last one said);
3. otherwise the last "(X)" or "X)" anywhere in the response (the reference's rule);
4. never a bare capital letter on its own: the reference falls back to the last capital
   letter in range, which misfires ("The answer is B. I think" gives "I"). Such a
   response is unparsable (``None``), never guessed.

The tiers keep chatter after a stated answer harmless: "The answer is (C). (A) is correct
only for acids." is C.

A letter written bare after "answer is" counts only when nothing but punctuation, a line
end or a connective ("because", "since", ...) follows it, so "the answer is I think" and
"the answer is A bit tricky" state nothing.

Math: the content of the last brace-matched ``\\boxed{}`` (or ``\\fbox{}``), unless it is
the instruction's placeholder ``\\boxed{X}``; failing a box, a single value stated after
"answer is" / "answer:" ("The answer is 49."), as the reference's math-verify fallback
would find it. Free text: what follows the last "answer
is", else the last non-empty line.
"""

from __future__ import annotations

import re

from symoe_agents.formats import AnswerFormat
from symoe_agents.reasoning import strip_reasoning

__all__ = ["extract_answer", "extract_boxed", "extract_choice", "extract_free", "extract_math", "strip_reasoning"]

# markdown emphasis and LaTeX text wrappers are presentation, not content
_EMPHASIS = re.compile(r"\*\*|__|`")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textrm)\s*\{([^{}]*)\}")

_STATED_PREFIX = (
    r"(?i:"
    r"(?:\banswer(?:\s+(?:choice|option))?|\b(?:correct|best|right)\s+(?:option|choice))"
    r"\s*(?:is|would\s+be|should\s+be|must\s+be|will\s+be|:|=)"  # a verb or a colon: "Answer A is wrong" states nothing
    r"|\bfinal\s+answer\s*#*\s*\n"  # a "Final Answer" heading, the letter on the next line
    r")"
    r"[\s:#>-]*(?i:(?:option|choice|letter)\s+)?"
)
# the letter: boxed, in parentheses, or bare (then only before punctuation, a line end or a connective)
_LETTER = (
    r"(?:\$\s*)?(?:\\(?:boxed|fbox)\s*\{\s*)?"
    r"(?:\(\s*([A-Z])\s*\)|([A-Z])(?=\s*\)|\s*\}|\s*\$|\s*[.,;:!?\]]|[ \t]*(?:\n|$)|\s+(?i:because|since|as|which|with|for|and\s+not)\b|\s+[-\u2013\u2014(]))"
)
_STATED = re.compile(_STATED_PREFIX + _LETTER)
_CHOSEN = re.compile(
    r"(?i:\bI(?:'d|\s+would|\s+will)?\s+(?:choose|pick|select|go\s+with)|\b(?:choose|pick|select)\s*:)"
    r"[\s:]*(?i:(?:option|choice|answer)\s+)?" + _LETTER
)
_IS_CORRECT = re.compile(
    r"(?<![A-Za-z0-9])(?i:(?:option|choice)\s+)?(?:\(([A-Z])\)|([A-Z]))"
    r"\s+(?i:is\s+(?:the\s+)?(?:correct|right|best)\b)"
)
_BOXED_LETTER = re.compile(r"\\(?:boxed|fbox)\s*\{\s*\(?\s*([A-Z])\s*\)?\s*\}")
# "(X)" or "X)" not glued to a word, and not a stereo-descriptor "(E)-"; "X)" closing a
# list of letters ("(A, B, C, D)") is not a choice either
_PAREN = re.compile(r"(?<![A-Za-z0-9])\(([A-Z])\)(?![-\u2010-\u2014])|(?<![A-Za-z0-9(,])(?<!,\s)([A-Z])\)")
# an echoed instruction: its quoted template, if any, then "where X is ..." to the sentence's end
_ECHO = re.compile(r"(?:\"[^\"\n]*\"\s*,?\s*)?\b[Ww]here X is\b[^.\n]*")
PLACEHOLDER = "X"

_STATED_FREE = re.compile(r"answer is\s*:?\s*(.+)", re.IGNORECASE)
_STATED_VALUE = re.compile(r"(?i:\banswer\s*(?:is|:|=))[\s:*]*(.+)")
_MATH_VALUE = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d+)?(?:/\d+)?|\\[a-z]+\{[^$]*\}[^\s$]*|\d[^\s$]*)")


def _plain(text: str) -> str:
    text = _ECHO.sub(" ", _EMPHASIS.sub("", text))
    for _ in range(2):  # \textbf{\text{B}}
        text = _TEXT_WRAPPER.sub(r"\1", text)
    return text


def extract_choice(text: str, letters: list[str]) -> str | None:
    """The chosen option letter, or ``None`` when the text states no valid choice."""
    text = _plain(strip_reasoning(text))
    allowed = set(letters)
    stated = [(m.start(), m.group(1) or m.group(2)) for m in _STATED.finditer(text)]
    stated += [(m.start(), m.group(1)) for m in _BOXED_LETTER.finditer(text)]
    stated = sorted((at, x) for at, x in stated if x in allowed)
    if stated:
        return stated[-1][1]
    chosen = [(m.start(), m.group(1) or m.group(2)) for pattern in (_CHOSEN, _IS_CORRECT) for m in pattern.finditer(text)]
    chosen = sorted((at, x) for at, x in chosen if x in allowed)
    if chosen:
        return chosen[-1][1]
    marked = [m.group(1) or m.group(2) for m in _PAREN.finditer(text)]
    marked = [x for x in marked if x in allowed]
    return marked[-1] if marked else None


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces matched."""
    at = max(text.rfind("\\boxed{"), text.rfind("\\boxed {"), text.rfind("\\fbox{"))
    if at < 0:
        return None
    start = text.index("{", at) + 1
    depth = 1
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i].strip() or None
    return None  # unbalanced: the answer was cut off


def extract_math(text: str) -> str | None:
    """The last boxed answer; failing that, a single value stated after "answer is"."""
    text = _ECHO.sub(" ", strip_reasoning(text))
    boxed = extract_boxed(text)
    if boxed is not None:
        return None if _plain(boxed).strip(" $") == PLACEHOLDER else boxed  # \\boxed{X}, \\boxed{\\textrm{X}}
    # "The answer is 49." / "Answer: $\frac{1}{2}$" - a value, not prose; echoed
    # instructions ('write "The answer is" at the end') must not count
    for raw in reversed(_STATED_VALUE.findall(_EMPHASIS.sub("", text))):
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
    text = _ECHO.sub(" ", strip_reasoning(text)).strip()
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
