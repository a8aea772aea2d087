"""One preparation path: a question's format, letters, random stream and prompts.

``solve``, ``profile``, ``pick-aggregator`` and ``eval`` all prepare questions here and
build their prompts here, so a profile is made of exactly the prompts that ``solve``
sends, and the aggregator is picked on exactly the prompt it will get.

The stream key (sha256 of the question's text) seeds everything random about a question:
its expert draws and its requests' sampling seeds. It depends on the content, not on the
id, so repeated ``moe.solve("...")`` calls (each a batch whose one id is "1") and files
whose first lines differ never share a random stream, and the same question keeps the
same experts for the same seed wherever it appears.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .formats import AnswerFormat, detect_format, option_letters
from .prompting import PromptTemplate, RenderedPrompt, load_template
from .reasoning import strip_reasoning
from .records import Question


@dataclass(frozen=True, slots=True)
class Prepared:
    question: Question
    fmt: AnswerFormat
    letters: list[str]
    stream: str


def stream_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def format_problem(question: str, declared: AnswerFormat | None) -> str | None:
    """Why a question cannot be prepared as declared, or None: a question declared
    multiple choice must list its options, or nothing could be scored as a letter."""
    if declared is AnswerFormat.MULTIPLE_CHOICE and not option_letters(question):
        return "answer_format is multiple_choice, but the question lists no options; write them as '(A) ... (B) ...' (e.g. after 'The options are:')"
    return None


def prepare(q: Question) -> Prepared:
    fmt, letters = detect_format(q.question, q.gold_answer)
    if q.answer_format is not None and q.answer_format is not fmt:
        fmt = q.answer_format
        letters = option_letters(q.question) if fmt is AnswerFormat.MULTIPLE_CHOICE else []
        if fmt is AnswerFormat.MULTIPLE_CHOICE and not letters:
            raise ValueError(f"question {q.id!r}: {format_problem(q.question, fmt)}")
    return Prepared(q, fmt, letters, stream_key(q.question))


def prepare_all(questions: Sequence[Question]) -> list[Prepared]:
    """Every question through ``prepare``; those that cannot be prepared (declared
    multiple choice without options) are one input error, numbered from 1."""
    prepared, problems = [], []
    for n, q in enumerate(questions, 1):
        try:
            prepared.append(prepare(q))
        except ValueError as exc:
            problems.append((n, str(exc)))
    if problems:
        raise InputError("<questions>", problems)
    return prepared


def answer_instruction(fmt: AnswerFormat, letters: Sequence[str], prompts_dir: Path | None = None) -> str:
    tpl = load_template(f"answer_{fmt.value}", prompts_dir)
    if fmt is AnswerFormat.MULTIPLE_CHOICE:
        return tpl.render(letters=", ".join(letters)).text
    return tpl.render().text


def skills_prompt(template: PromptTemplate, p: Prepared) -> RenderedPrompt:
    """What the skill inferencer is asked: the question alone."""
    return template.render(question=p.question.question)


def with_context(p: Prepared) -> str:
    """The question as experts and the aggregator see it: after its context, when it has one
    (``metadata["context"]``: earlier turns of a conversation, which ``symoe serve`` puts
    there). The skill inferencer and the format detection read the question alone."""
    context = p.question.metadata.get("context")
    if isinstance(context, str) and context.strip():
        return f"{context.strip()}\n\n{p.question.question}"
    return p.question.question


def expert_prompt(template: PromptTemplate, p: Prepared, prompts_dir: Path | None = None) -> RenderedPrompt:
    """What an expert is asked: the question (after its context) and the answer instruction
    of its format."""
    return template.render(question=with_context(p), answer_instruction=answer_instruction(p.fmt, p.letters, prompts_dir))


def shown_responses(texts: Sequence[str | None]) -> list[str]:
    """The responses an aggregator sees, in the order given: reasoning traces removed,
    and a response with nothing left (a failed call, or one cut off while thinking) left out."""
    out = []
    for t in texts:
        answer = strip_reasoning(t or "").strip()
        if answer:
            out.append(answer)
    return out


def aggregation_prompt(template: PromptTemplate, p: Prepared, responses: Sequence[str], prompts_dir: Path | None = None) -> RenderedPrompt:
    """The aggregator's prompt over ``responses`` (already through ``shown_responses``):
    numbered from 1, then the question and the same answer instruction as the experts."""
    body = "\n\n".join(f"Response {n}:\n{text}" for n, text in enumerate(responses, 1))
    return template.render(
        question=with_context(p), responses=body, answer_instruction=answer_instruction(p.fmt, p.letters, prompts_dir)
    )
