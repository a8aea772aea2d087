"""Model profiles: per-skill scores and validation accuracy, one JSON file per model.

A profiles directory written by ``symoe profile`` also holds ``skills.jsonl`` (each
validation question's keywords and raw skill samples), ``answers.jsonl`` (every raw
answer of every model) and, after ``symoe pick-aggregator``, ``_aggregator.json``.

File format (``PROFILES_DIR/<model>.json``)::

    {"model": "smollm2", "skills": {"algebra": 3, "geometry": -1}, "validation_accuracy": 0.42}

``skills`` holds, for every keyword of the validation set, +1 per question with that keyword
the model answered correctly and -1 per question it got wrong (method.md section 2).
``symoe profile`` writes these files (a later issue); any tool may.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ProfileError


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    skills: dict[str, float]
    validation_accuracy: float | None = Field(default=None, ge=0.0, le=1.0)

    @property
    def total(self) -> float:
        return sum(self.skills.values())


def load_profiles(directory: str | Path, pool: list[str]) -> dict[str, Profile]:
    """Profiles of the expert pool, in pool order. Files for other models are ignored;
    a pool model without a file is an error (routing cannot weigh an unknown model)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ProfileError(f"profiles directory {directory} not found; pass an existing folder or omit profiles")
    found: dict[str, Profile] = {}
    for path in sorted(directory.glob("*.json")):
        if path.name.startswith("_"):
            continue  # run metadata (_aggregator.json), not a profile
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            profile = Profile.model_validate(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProfileError(f"{path}: not valid JSON ({exc})") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            raise ProfileError(f"{path}: {key}: {first['msg']}") from None
        if profile.model in found:
            raise ProfileError(f"{path}: a second profile for model '{profile.model}'; keep one file per model")
        found[profile.model] = profile
    missing = [m for m in pool if m not in found]
    if missing:
        raise ProfileError(
            f"{directory}: no profile for expert(s) {', '.join(missing)}; "
            f"add <model>.json for each, or remove them from roles.experts"
        )
    return {m: found[m] for m in pool}


def profile_vocabulary(profiles: dict[str, Profile]) -> list[str]:
    """Every skill any profile knows, in first-seen order."""
    seen: dict[str, None] = {}
    for p in profiles.values():
        for s in p.skills:
            seen.setdefault(s, None)
    return list(seen)


# -- building profiles from validation answers (pure) -----------------------------------


def build_profiles(
    keywords: dict[str, list[str]],
    correct: dict[str, dict[str, bool]],
    models: list[str],
) -> dict[str, Profile]:
    """method.md section 2: for every keyword of question q, +1 if the model answered q
    correctly, -1 otherwise; no normalisation. ``correct[model][qid]``; questions a model
    has no answer for are left out of its profile and accuracy."""
    out: dict[str, Profile] = {}
    for m in models:
        skills: dict[str, float] = {}
        answered = correct.get(m, {})
        for qid, ok in answered.items():
            for kw in keywords.get(qid, []):
                skills[kw] = skills.get(kw, 0) + (1 if ok else -1)
        acc = sum(answered.values()) / len(answered) if answered else None
        out[m] = Profile(model=m, skills=skills, validation_accuracy=acc)
    return out


def synthetic_aggregation_items(
    answers: dict[str, dict[str, tuple[str, bool]]],
    seed: int,
    n_wrong: int = 2,
) -> list[dict]:
    """method.md section 3: for each validation question with at least one correct and
    ``n_wrong`` incorrect answers among the models, pick 1 correct and ``n_wrong`` incorrect
    at random (seeded) and shuffle them. ``answers[qid][model] = (text, correct)``."""
    import random

    rng = random.Random(f"{seed}\x1faggregator-selection")
    items = []
    for qid in sorted(answers):
        by_model = answers[qid]
        right = [(m, t) for m, (t, ok) in sorted(by_model.items()) if ok and t]
        wrong = [(m, t) for m, (t, ok) in sorted(by_model.items()) if not ok and t]
        if not right or len(wrong) < n_wrong:
            continue
        picked = [rng.choice(right), *rng.sample(wrong, n_wrong)]
        rng.shuffle(picked)
        items.append({"id": qid, "responses": [t for _, t in picked], "from": [m for m, _ in picked]})
    return items


#: the aggregator ``symoe pick-aggregator`` chose, beside the profiles it was chosen with
AGGREGATOR_FILE = "_aggregator.json"


def read_aggregator_choice(directory: Path) -> str | None:
    path = Path(directory) / AGGREGATOR_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))["aggregator"]
    except (json.JSONDecodeError, KeyError):
        raise ProfileError(f"{path}: not a valid aggregator choice; re-run `symoe pick-aggregator`") from None
