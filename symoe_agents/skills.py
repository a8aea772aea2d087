"""Parsing the skill inferencer's output into keywords (method.md section 1).

Pure functions: text in, keywords out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from .reasoning import strip_reasoning

MAX_KEYWORD_CHARS = 20
MIN_VOTES = 2


def parse_keywords(text: str) -> list[str]:
    """One sample's keywords: the text after the last ``Keywords:`` (all of it if absent),
    split on commas, stripped, lower-cased, dots removed. Empty items are dropped. A
    reasoning trace is removed first: a thinking model's "Keywords:" drafts inside
    ``<think>`` are not its answer."""
    text = strip_reasoning(text)
    marker = "keywords:"
    lowered = text.lower()
    at = lowered.rfind(marker)
    tail = text[at + len(marker):] if at >= 0 else text
    out = []
    for item in tail.split(","):
        kw = item.strip().lower().replace(".", "").strip()
        if kw:
            out.append(kw)
    return out


def pool_keywords(samples: Iterable[list[str]], min_votes: int = MIN_VOTES, max_chars: int = MAX_KEYWORD_CHARS) -> list[str]:
    """Pool several samples' keywords: drop keywords longer than ``max_chars``, keep those
    named at least ``min_votes`` times in the pooled list, de-duplicated in order of first
    appearance. The result may be empty."""
    pooled = [kw for sample in samples for kw in sample if len(kw) <= max_chars]
    votes = Counter(pooled)
    seen: set[str] = set()
    out = []
    for kw in pooled:
        if votes[kw] >= min_votes and kw not in seen:
            seen.add(kw)
            out.append(kw)
    return out


def infer_keywords(texts: Iterable[str]) -> list[str]:
    """From the raw texts of one question's samples to its keywords."""
    return pool_keywords(parse_keywords(t) for t in texts)
