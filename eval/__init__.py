"""``symoe eval``: benchmarks, the harness that runs methods side by side, the report.

Answer extraction and scoring are the method's own and live in the core
(``symoe_agents.extract``, ``symoe_agents.scoring``); they are named here too, for the
harness's users. The core never imports this package: it imports the API.
"""

from symoe_agents.extract import extract_answer, extract_boxed, extract_choice, extract_free, extract_math
from symoe_agents.scoring import is_correct, normalize_math

__all__ = [
    "extract_answer",
    "extract_boxed",
    "extract_choice",
    "extract_free",
    "extract_math",
    "is_correct",
    "normalize_math",
]
