"""Reasoning traces: what a thinking model writes before its answer.

Reasoning models (DeepSeek-R1 distills, Qwen3 and others) think inside ``<think> ...
</think>`` and then answer. Only what follows the last ``</think>`` is the answer: the
trace is removed before an answer is extracted, before skill keywords are parsed and
before a response is shown to the aggregator (method.md section 5). Some chat templates
open the block themselves, so the text may hold a closing tag without an opening one.
"""

from __future__ import annotations

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def strip_reasoning(text: str) -> str:
    """What follows the last ``</think>``. A response that opened a block and never closed
    it (cut off while thinking) has no answer at all: the empty string."""
    at = text.rfind(THINK_CLOSE)
    if at >= 0:
        return text[at + len(THINK_CLOSE):]
    if THINK_OPEN in text:
        return ""
    return text
