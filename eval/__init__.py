"""Answer extraction and scoring (``symoe_agents.eval``); the benchmark harness comes later."""

from .extract import extract_answer, extract_boxed, extract_choice, extract_free, extract_math
from .score import is_correct, normalize_math

__all__ = [
    "extract_answer",
    "extract_boxed",
    "extract_choice",
    "extract_free",
    "extract_math",
    "is_correct",
    "normalize_math",
]
