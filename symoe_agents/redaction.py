"""Keeping API keys out of what symoe writes.

Some APIs quote the key they rejected in their error message, and error messages go to
records, events and logs. Replacing the whole key is not enough: a message cut to a length
can end in the middle of the key, and a provider may echo part of it. So every run of 8
characters or more that also occurs in a known key is replaced, wherever it stands.
"""

from __future__ import annotations

import os
import threading

MIN_FRAGMENT = 8  # shorter runs occur in ordinary text by chance ("Bearer s", "https://")
MASK = "***"

_known: set[str] = set()
_lock = threading.Lock()


def remember(key: str | None) -> None:
    """Add a key read from the environment to those every ``scrub`` removes."""
    if key and len(key) >= 4:
        with _lock:
            _known.add(key)


def known_keys() -> frozenset[str]:
    with _lock:
        return frozenset(_known)


def scrub(text: str, keys: set[str] | frozenset[str] | tuple[str, ...] = ()) -> str:
    """``text`` with every known key (and ``keys``), and every fragment of one that is at
    least ``MIN_FRAGMENT`` characters long, replaced by ``***``."""
    keys = {k for k in (*keys, *known_keys()) if k and len(k) >= 4}
    if not keys or not text:
        return text
    for k in sorted(keys, key=len, reverse=True):  # whole keys first; short keys are only whole
        text = text.replace(k, MASK)
    grams = {k[i : i + MIN_FRAGMENT] for k in keys if len(k) >= MIN_FRAGMENT for i in range(len(k) - MIN_FRAGMENT + 1)}
    if not grams:
        return text
    # a fragment of any length >= MIN_FRAGMENT is covered by its overlapping 8-grams
    covered = bytearray(len(text))
    for i in range(len(text) - MIN_FRAGMENT + 1):
        if text[i : i + MIN_FRAGMENT] in grams:
            covered[i : i + MIN_FRAGMENT] = b"\x01" * MIN_FRAGMENT
    if not any(covered):
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        if covered[i]:
            while i < len(text) and covered[i]:
                i += 1
            out.append(MASK)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


_hidden_env: set[str] = set()


def hide_from_children(names: set[str] | frozenset[str]) -> None:
    """Keep these environment variables (a config's key variables) out of every process
    symoe starts: model servers, their watchdogs, and the probes preflight runs."""
    with _lock:
        _hidden_env.update(names)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """symoe's environment without the hidden variables, plus ``extra``."""
    with _lock:
        hidden = set(_hidden_env)
    return {**{k: v for k, v in os.environ.items() if k not in hidden}, **(extra or {})}
