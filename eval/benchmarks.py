"""Benchmarks for ``symoe eval``: the paper's four, from the Hugging Face hub through
``datasets``, or any local file in the upstream format.

Hub sources (fields as their dataset cards describe them), converted to the upstream
record ``{"question": ... "The options are: (A) ...", "gold_answer": letter|number}``:

| name | hub id | config / split | paper's test set |
| --- | --- | --- | --- |
| mmlu-pro | TIGER-Lab/MMLU-Pro | test | 2100 (150 per category) |
| gpqa | Idavidrein/gpqa | gpqa_diamond / train | 198 |
| aime24 | HuggingFaceH4/aime_2024 | train | 30 |
| medmcqa | openlifescienceai/medmcqa | validation | 4183 |

The converters are pure functions (table-tested); only ``load_benchmark`` does IO.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from symoe_agents.inputs import read_questions
from symoe_agents.records import Question

LETTERS = string.ascii_uppercase


def _with_options(stem: str, options: list[str]) -> str:
    return f"{stem.strip()} The options are: " + " ".join(f"({LETTERS[i]}) {str(o).strip()}" for i, o in enumerate(options))


def from_mmlu_pro(row: dict[str, Any]) -> dict[str, Any]:
    return {"question": _with_options(row["question"], list(row["options"])), "gold_answer": row["answer"], "category": row.get("category")}


def from_gpqa(row: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """GPQA stores the correct answer apart: options are shuffled, seeded per question."""
    options = [row["Correct Answer"], row["Incorrect Answer 1"], row["Incorrect Answer 2"], row["Incorrect Answer 3"]]
    order = list(range(4))
    random.Random(f"{seed}\x1f{row['Question']}").shuffle(order)
    shuffled = [options[i] for i in order]
    return {"question": _with_options(row["Question"], shuffled), "gold_answer": LETTERS[order.index(0)]}


def from_aime(row: dict[str, Any]) -> dict[str, Any]:
    return {"question": row["problem"], "gold_answer": str(row["answer"]).strip(), "answer_format": "math"}


def from_medmcqa(row: dict[str, Any]) -> dict[str, Any]:
    options = [row["opa"], row["opb"], row["opc"], row["opd"]]
    return {"question": _with_options(row["question"], options), "gold_answer": LETTERS[int(row["cop"])],
            "category": row.get("subject_name")}  # fmt: skip


@dataclass(frozen=True)
class HubSource:
    hub_id: str
    config: str | None
    split: str
    convert: Any


HUB = {
    "mmlu-pro": HubSource("TIGER-Lab/MMLU-Pro", None, "test", from_mmlu_pro),
    "gpqa": HubSource("Idavidrein/gpqa", "gpqa_diamond", "train", from_gpqa),
    "aime24": HubSource("HuggingFaceH4/aime_2024", None, "train", from_aime),
    "medmcqa": HubSource("openlifescienceai/medmcqa", None, "validation", from_medmcqa),
}


def select(questions: list[Question], limit: int | None, categories: list[str] | None) -> list[Question]:
    if categories:
        wanted = {c.lower() for c in categories}
        questions = [q for q in questions if (q.category or "").lower() in wanted]
    return questions[:limit] if limit else questions


def load_benchmark(spec: str, limit: int | None = None, categories: list[str] | None = None) -> tuple[str, list[Question]]:
    """``spec`` is a local JSON/JSONL path or one of the hub names above."""
    path = Path(spec)
    if path.exists():
        name = path.stem
        qs = read_questions(path)
    elif spec in HUB:
        try:
            import datasets
        except ImportError:
            raise SystemExit(f'benchmark {spec!r} comes from the Hugging Face hub: pip install "symoe-agents[eval]"') from None
        src = HUB[spec]
        rows = datasets.load_dataset(src.hub_id, src.config, split=src.split)
        name = spec
        qs = [Question(id=f"{spec}-{i}", **{k: v for k, v in src.convert(dict(r)).items() if v is not None}) for i, r in enumerate(rows)]
    else:
        raise SystemExit(f"benchmark {spec!r}: not a file, and not one of {', '.join(HUB)}")
    qs = [q.model_copy(update={"id": f"{name}:{q.id}"}) for q in qs]
    return name, select(qs, limit, categories)
