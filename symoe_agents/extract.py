"""Extracting a final answer from a model's text (method.md section 6).

Reasoning before ``</think>`` is removed first (``symoe_agents.reasoning``), and so is an
echo of the answer instruction: small models often repeat 'write "The answer is (X)",
where X is the single capital letter of the option you choose (A, B, C, D).', whose
placeholder and letter list are no answer.

Multiple choice, over the question's own letters:
1. a stated answer: "the answer is (X)", "The correct answer is X.", "Answer: X",
   "Final answer: **X**", "answer is option X", a boxed letter ``\\boxed{X}``, or a
   verdict in parentheses, "Therefore, (X)." / "(X) is correct" (not after "if",
   "suppose", "not", ...); the last one stated wins, so chatter after the answer does
   not change it, and an aggregator's "Response 1 says the answer is (A), but ...
   therefore (B) is correct" is B. A statement naming several letters ("Answer: (B) and
   (C)") states none;
2. otherwise the last "(X)" or "X)" anywhere in the response (the reference's rule), once
   a verbatim echo of the question's options is removed;
3. never a bare capital letter on its own: the reference falls back to the last capital
   letter in range, which misfires ("The answer is B. I think" gives "I"). Such a
   response is unparsable (``None``), never guessed.

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

from symoe_agents.formats import AnswerFormat, options_text
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
_BOXED_LETTER = re.compile(r"\\(?:boxed|fbox)\s*\{\s*\(?\s*([A-Z])\s*\)?\s*\}")
# verdicts: a letter in parentheses after a conclusion word, or said to be correct
_CONCLUSION = re.compile(
    r"(?i:\b(?:therefore|thus|hence|so)\b)[\s,:]*(?i:(?:the\s+answer\s+is|it\s+is|it's)\s*)?"
    r"\(([A-Z])\)(?=\s*(?:[.!]|$|\n|(?i:is\s+(?:the\s+)?(?:correct|right|best))\b))"
)
_VERDICT = re.compile(r"(?<![A-Za-z0-9])\(([A-Z])\)\s+(?i:is\s+(?:the\s+)?(?:correct|right|best)\b)")
# a verdict under a hypothesis, in the same clause: "If (A) is correct", "whether answer (A) is correct"
_HYPOTHETICAL = re.compile(
    r"(?i:\b(?:if|suppose|supposing|assume|assuming|whether|unless|not|not\s+(?:true|the\s+case)\s+that)\b[^.;!?\n]{0,25})$"
)
# a verdict that overrules an earlier statement must say so: "However, ... (D) is correct"
_CONTRAST = re.compile(r"(?i:\b(?:however|but|actually|instead|rather|therefore|thus|hence|so|inspection|conclude|clearly)\b)")
# a statement that names another of the letters right after its own ("(B) and (C)", "A, B or
# C"), where that letter is not the subject of a new clause ("(B), (C) being a distractor")
_MORE_LETTERS = re.compile(
    r"\s*(?:,|/|&|(?i:and|or))\s*(?i:option\s+)?(?:\(([A-Z])\)|([A-Z])(?![A-Za-z0-9)]))"
    r"(?!\s*(?i:is|are|was|were|being|would|seems?|think|believe|guess|am|'m|hope|fails?)\b)"
)
# "(X)" or "X)" not glued to a word, and not a stereo-descriptor "(E)-"
_PAREN = re.compile(r"(?<![A-Za-z0-9])\(([A-Z])\)(?![-\u2010\u2011])|(?<![A-Za-z0-9(])([A-Z])\)")
# "X)" closing a list or range of letters, "(A, B, C, D)", "(A, B or C)", "(A-D)", "(A/B/C/D)": no choice
_LETTER_LIST = re.compile(r"\((?:\s*[A-Z]\s*(?:,|/|&|-|\u2013|(?i:and|or|to)\b))+\s*$")
# "(A)" opening or "(D)" closing a range "(A)-(D)", "(A) to (J)": no choice
_RANGE_AFTER = re.compile(r"\s*(?:-|\u2013|\u2014|(?i:to)\b)\s*\([A-Z]\)")
_RANGE_BEFORE = re.compile(r"\([A-Z]\)\s*(?:-|\u2013|\u2014|(?i:to))\s*$")
# an echoed instruction: its quoted template, if any, then "where X is ..." to the sentence's end
_ECHO = re.compile(r"(?:\"[^\"\n]*\"\s*,?\s*)?\b[Ww]here X is\b[^.\n]*")
PLACEHOLDER = "X"

_STATED_FREE = re.compile(r"answer is\s*:?\s*(.+)", re.IGNORECASE)
_STATED_VALUE = re.compile(r"(?i:\banswer\s*(?:is|:|=))[ \t:*]*(.+)")  # on the same line: not a list below a heading
# "Answer:" ending its line, and a value alone on the next non-empty line
_STATED_ALONE = re.compile(r"(?i:\banswer\s*(?:is|:|=))[ \t:*]*\n\s*(\$[^$\n]+\$|[^\s$]+)[ \t.]*(?:\n|$)")
_MATH_VALUE = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d+)?(?:/\d+)?|\\[a-z]+\{[^$]*\}[^\s$]*|\d[^\s$]*)")


def _plain(text: str) -> str:
    text = _ECHO.sub(" ", _EMPHASIS.sub("", text))
    for _ in range(2):  # \textbf{\text{B}}
        text = _TEXT_WRAPPER.sub(r"\1", text)
    return text


def _without_echo(text: str, question: str | None) -> str:
    """The response without a verbatim copy of the question or of its options, which small
    models often repeat before answering: an echoed option list names every letter."""
    if not question:
        return text
    for echo in (question.strip(), options_text(question).strip()):
        if len(echo) >= 12:
            text = text.replace(echo, " ")
    return text


def extract_choice(text: str, letters: list[str], question: str | None = None) -> str | None:
    """The chosen option letter, or ``None`` when the text states no valid choice.
    ``question``: its verbatim echo in the response is ignored."""
    text = _plain(_without_echo(strip_reasoning(text), question))
    allowed = set(letters)
    stated: list[tuple[int, str, bool]] = []  # (where, letter, names more letters)
    for m in _STATED.finditer(text):
        more = _MORE_LETTERS.match(text, m.end())
        stated.append((m.start(), m.group(1) or m.group(2), more is not None and (more.group(1) or more.group(2)) in allowed))
    stated += [(m.start(), m.group(1), False) for m in _BOXED_LETTER.finditer(text)]
    stated += [(m.start(), m.group(1), False) for m in _CONCLUSION.finditer(text)]
    stated = [st for st in stated if st[1] in allowed]
    verdicts = [
        (m.start(), m.group(1), False)
        for m in _VERDICT.finditer(text)
        if m.group(1) in allowed and not _HYPOTHETICAL.search(text, max(0, m.start() - 60), m.start())
    ]
    # "(X) is correct" decides when nothing is stated; after a statement only when it overrules
    # it in so many words, so chatter after an answer ("(A) is correct only for acids") is chatter
    stated = sorted(stated + [v for v in verdicts if _CONTRAST.search(text, max(0, v[0] - 40), v[0])]) or verdicts
    if stated:
        _, letter, ambiguous = stated[-1]
        return None if ambiguous else letter
    marked = [
        m.group(1) or m.group(2)
        for m in _PAREN.finditer(text)
        if (
            not _LETTER_LIST.search(text, max(0, m.start() - 40), m.start())
            if m.group(2)
            else not (_RANGE_AFTER.match(text, m.end()) or _RANGE_BEFORE.search(text, max(0, m.start() - 20), m.start()))
        )
    ]
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
    plain = _EMPHASIS.sub("", text)
    found = [(m.start(), m.group(1)) for pattern in (_STATED_VALUE, _STATED_ALONE) for m in pattern.finditer(plain)]
    for _, raw in sorted(found, reverse=True):
        value = raw.strip()
        if value.startswith("$") and value.count("$") >= 2:
            value = value[1 : value.index("$", 1)]
        else:
            value = value.split()[0] if value.split() else ""
        value = value.strip().rstrip(".,;").strip()
        if value.count(")") > value.count("("):  # "1) compute": a list item, not a value
            continue
        if value.strip("*`'\" $") == PLACEHOLDER:  # "The answer is X": the instruction's placeholder, copied
            continue
        if value and _MATH_VALUE.fullmatch(value):
            return value
    return None


def extract_free(text: str) -> str | None:
    """What follows the last "answer is"; failing that, the last non-empty line."""
    text = _ECHO.sub(" ", strip_reasoning(text)).strip()
    stated = _STATED_FREE.findall(text)
    if stated:
        # the instruction's placeholder copied ("The answer is: X") states nothing
        values = [v.strip().rstrip(".").strip() for v in stated]
        values = [v for v in values if v.strip("*`'\" ") != PLACEHOLDER]
        return values[-1] or None if values else None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


def extract_answer(text: str | None, fmt: AnswerFormat, letters: list[str] | None = None, question: str | None = None) -> str | None:
    """``question``: the question asked, so that its verbatim echo is not read as an answer."""
    if not text:
        return None
    if fmt is AnswerFormat.MULTIPLE_CHOICE:
        return extract_choice(text, letters or [], question)
    if fmt is AnswerFormat.MATH:
        return extract_math(text)
    return extract_free(text)
